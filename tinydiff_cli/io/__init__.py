"""Files: atomic writes (atomic.py), the checkpoint format (checkpoint.py), PNG grids and GIFs (images.py),
labelled figures (figures.py), and the lock that keeps one trainer per run folder (runlock.py)."""
