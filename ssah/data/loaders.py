"""All dataset loaders, and :func:`open_dataset` to pick one by name."""
from __future__ import annotations

from ..errors import DataError
from .arrays import FASHION_MNIST_ROOT, load_digits, load_fashion_mnist
from .base import ImageDataset
from .cifar import load_cifar10
from .finegrained import load_cub, load_stanford_dogs
from .folders import load_image_folder, load_list_file

#: name -> (loader, whether it takes a path)
DATASETS = {
    "digits": (load_digits, False),
    "fashion-mnist": (load_fashion_mnist, False),
    "cifar10": (load_cifar10, True),
    "folder": (load_image_folder, True),
    "list": (load_list_file, True),
    "cub": (load_cub, True),
    "dogs": (load_stanford_dogs, True),
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10", "cub200": "cub",
            "cub-200-2011": "cub", "stanford-dogs": "dogs", "stanford_dogs": "dogs"}


def open_dataset(name: str, path=None, **kw) -> ImageDataset:
    """Load the dataset called ``name`` (one of :data:`DATASETS`) from ``path``.

    ``"list"`` takes the list file as ``path`` and the image folder as ``root=...``;
    ``"fashion-mnist"`` defaults to ``/usr/share/datasets/fashion-mnist``; ``"digits"`` takes
    no path. Other keyword arguments (``skip_bad``, ``max_pixels``) go to the loader.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    loader, _ = DATASETS[key]
    if key == "digits":
        if path is not None:
            raise DataError("dataset 'digits' is built in and takes no path")
        kw.pop("skip_bad", None)
        kw.pop("max_pixels", None)
        if kw:
            raise DataError(f"dataset 'digits' takes no options, got {', '.join(kw)}")
        return loader()
    if key == "fashion-mnist":
        kw.pop("skip_bad", None)
        kw.pop("max_pixels", None)
        return loader(FASHION_MNIST_ROOT if path is None else path)
    return loader(path, **kw)  # a missing path raises DataError with the expected layout


__all__ = ["DATASETS", "open_dataset", "load_digits", "load_fashion_mnist", "load_cifar10",
           "load_image_folder", "load_list_file", "load_cub", "load_stanford_dogs"]
