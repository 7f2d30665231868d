"""The training layer: one optimisation loop (loop.py) that `train` (trainer.py) and `distill` (distill.py) hand
their objective to, the EMA copy, what a run reports and logs (log.py) and the evals it runs (evals.py)."""
