"""Datasets: loaders that all return :class:`ImageDataset`, and the decoded-image cache."""
from .arrays import load_digits, load_fashion_mnist, read_idx
from .base import ImageDataset
from .cache import CacheResult, build_cache, cached_array, prepare_image
from .cifar import CIFAR10_CLASSES, load_cifar10
from .decode import DEFAULT_MAX_PIXELS, decode_image, to_mode
from .finegrained import load_cub, load_stanford_dogs
from .folders import load_image_folder, load_list_file
from .loaders import DATASETS, open_dataset
from .protocols import Split, fine_grained_split, standard_split, unseen_class_split

__all__ = [
    "ImageDataset", "open_dataset", "DATASETS",
    "load_digits", "load_fashion_mnist", "load_cifar10", "load_image_folder", "load_list_file",
    "load_cub", "load_stanford_dogs", "read_idx", "CIFAR10_CLASSES",
    "decode_image", "to_mode", "DEFAULT_MAX_PIXELS",
    "cached_array", "build_cache", "CacheResult", "prepare_image",
    "Split", "standard_split", "fine_grained_split", "unseen_class_split",
]
