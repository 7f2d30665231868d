"""The machine a run is on: device choice (device.py), autocast precision and torch.compile (precision.py), and
data parallelism under torchrun (distributed.py)."""
