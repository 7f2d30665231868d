"""Drawing from a trained model: the one sampling plan (plan.py), `Pipeline` (pipeline.py), samplers side by side
(compare.py), pictures of the forward and reverse process (visualize.py) and the exported denoiser (export.py)."""
