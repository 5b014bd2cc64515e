"""Small array datasets: scikit-learn's digits (embedded) and Fashion-MNIST (IDX files)."""
from __future__ import annotations

import gzip
import os

import numpy as np

from ..errors import DataError
from .base import ImageDataset
from .sources import ArrayLoader, bytes_checksum, combine_checksums, file_checksum, require_path

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

FASHION_MNIST_LAYOUT = """\
  <root>/train-images-idx3-ubyte.gz    60,000 images, 28x28 (gzipped or not;
  <root>/train-labels-idx1-ubyte.gz    'train-images.idx3-ubyte' spelling also accepted)
  <root>/t10k-images-idx3-ubyte.gz     10,000 images
  <root>/t10k-labels-idx1-ubyte.gz
(Debian: apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"""

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str, expect_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into an array, checking magic number and size."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"IDX file {path} has {ndim} dimensions, expected {expect_ndim} "
                        f"(magic number {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated (header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != need:
        raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes, the header "
                        f"{shape} asks for {need} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(root: str, stem: str) -> str:
    a, b = stem.split("-idx")
    for name in (f"{stem}.gz", stem, f"{a}.idx{b}.gz", f"{a}.idx{b}"):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    raise DataError(f"Fashion-MNIST file not found: {os.path.join(root, stem)}.gz (nor the "
                    f"un-gzipped name)\nexpected layout:\n{FASHION_MNIST_LAYOUT}")


def load_fashion_mnist(root=FASHION_MNIST_ROOT) -> ImageDataset:
    """Fashion-MNIST's 70,000 images pooled, ``(28, 28)`` uint8 arrays; splits train/test.

    ids are ``train/00042`` and ``test/00042`` (index within the official file).
    """
    root = require_path("Fashion-MNIST", root, FASHION_MNIST_LAYOUT)
    if not os.path.isdir(root):
        raise DataError(f"Fashion-MNIST: {root} is not a directory\n"
                        f"expected layout:\n{FASHION_MNIST_LAYOUT}")
    images, labels, ids, splits, sums = [], [], [], [], []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ip = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        lp = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        x = read_idx(ip, expect_ndim=3)
        y = read_idx(lp, expect_ndim=1)
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise DataError(f"Fashion-MNIST: {ip} and {lp} must hold unsigned bytes")
        if len(x) != len(y):
            raise DataError(f"Fashion-MNIST: {ip} has {len(x)} images but {lp} has {len(y)} "
                            f"labels")
        if len(y) and y.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"Fashion-MNIST: {lp} has label {y.max()}, expected 0..9")
        images.append(x)
        labels.append(y.astype(np.int64))
        ids += [f"{split}/{j:05d}" for j in range(len(x))]
        splits += [split] * len(x)
        sums += [file_checksum(ip), file_checksum(lp)]
    return ImageDataset(np.concatenate(labels), ids, ArrayLoader(np.concatenate(images)),
                        source=f"fashion-mnist:{root}", class_names=FASHION_MNIST_CLASSES,
                        splits=splits, checksum=combine_checksums(*sums))


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits as ``(8, 8)`` uint8 arrays (0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = np.rint(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(d.target, dtype=np.int64)
    return ImageDataset(labels, [f"{i:04d}" for i in range(len(labels))], ArrayLoader(images),
                        source="sklearn:digits", class_names=[str(c) for c in d.target_names],
                        checksum=bytes_checksum(images, labels))
