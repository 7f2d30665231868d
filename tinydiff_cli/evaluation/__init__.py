"""Sample quality: the domain classifier (classifier.py), the Frechet distance (metrics.py) and the `Scorer`
with its real-data floor (scorer.py)."""
