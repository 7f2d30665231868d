"""`load_dataset`: one call for a built-in dataset (mnist.py) or a folder of images (folders.py)."""
from __future__ import annotations

from pathlib import Path

from .datasets import CLASS_NAMES, DataInfo, Dataset, Split, check_dataset, check_same_data, is_builtin, reshape
from .folders import load_folder
from .mnist import load_split


def load_dataset(dataset: str, data_dir: str | Path | None = None, *, image_size: int | None = None,
                 channels: int | None = None, progress=None) -> Dataset:
    """`dataset` is mnist, fashion-mnist or a path to a folder of images (see folders.py). image_size and channels,
    when given, override what the data has (images are resized once, here). progress(done, total), when given, is
    called while a folder is decoded."""
    if is_builtin(dataset):
        train, test = (load_split(dataset, data_dir, train=t) for t in (True, False))
        train, test = (Split(reshape(s.images, image_size, channels), s.labels) for s in (train, test))
        info = DataInfo(dataset, train.images.shape[-1], train.images.shape[1], 10, tuple(CLASS_NAMES[dataset]))
        return Dataset(train, test, info)
    check_dataset(dataset)
    return load_folder(dataset, image_size=image_size, channels=channels, progress=progress)


def load_dataset_of(data_cfg, data_dir: str | Path | None = None, progress=None, trained_on: DataInfo | None = None) -> Dataset:
    """The dataset a config's data section (config.DataConfig) names, at its image size and channels; data_dir
    overrides the config's. With `trained_on` (a checkpoint's DataInfo), a TinydiffError unless the data still has
    the shape and classes the model was trained on (a folder can change after training)."""
    data = load_dataset(data_cfg.dataset, data_dir or data_cfg.data_dir, image_size=data_cfg.image_size,
                        channels=data_cfg.channels, progress=progress)
    if trained_on is not None:
        check_same_data(data.info, trained_on)
    return data
