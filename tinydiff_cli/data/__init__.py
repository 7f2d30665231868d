"""The data layer: datasets as in-memory tensors (datasets.py), MNIST and Fashion-MNIST from their IDX files
(mnist.py), folders of images (folders.py), and `load_dataset`, the one call in front of them (load.py)."""
