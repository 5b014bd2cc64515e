"""CIFAR-10 in its official python-pickle form (directory or .tar.gz) or as a JPEG tree/zip."""
from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tarfile
import zipfile

import numpy as np

from ..errors import DataError
from .base import ImageDataset
from .decode import DEFAULT_MAX_PIXELS
from .folders import tree_dataset
from .sources import ArrayLoader, file_checksum, require_path, stat_files, tree_checksum

log = logging.getLogger("ssah.data")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

CIFAR_LAYOUT = """\
one of:
  cifar-10-batches-py/              the official python version
      data_batch_1 ... data_batch_5, test_batch, batches.meta
  cifar-10-python.tar.gz            the same, as downloaded (read in place)
  <root>/train/<class>/0001.jpg     a JPEG tree (also <root>/<one folder>/train/...)
  <root>/test/<class>/0001.jpg
  cifar10-jpg.zip                   a zip of the JPEG tree, e.g. members
      cifar10-jpg/train/<class>/0001.jpg (read in place)"""

_BATCH_RE = re.compile(r"^(data_batch_(\d+)|test_batch|batches\.meta)$")

# Everything an official CIFAR pickle needs; anything else in a pickle is refused, so a
# tampered file cannot run code while being loaded.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes written by Python 3 at pickle protocol 2
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(f, name: str) -> dict:
    try:
        obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any failure to parse is a bad file
        raise DataError(f"cannot read CIFAR pickle {name}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR pickle {name} does not hold a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_order(name: str):
    m = _BATCH_RE.match(name)
    return (0, int(m.group(2))) if m.group(2) else (1, 0)


def _assemble(batches: dict[str, dict], meta: dict | None, where: str, source: str,
              checksum: str) -> ImageDataset:
    names = sorted((n for n in batches), key=_batch_order)
    if not names:
        raise DataError(f"CIFAR-10: no data_batch_N or test_batch found in {where}\n"
                        f"expected layout:\n{CIFAR_LAYOUT}")
    images, labels, ids, splits = [], [], [], []
    for n in names:
        b = batches[n]
        label_key = "labels" if "labels" in b else "fine_labels"
        if "data" not in b or label_key not in b:
            raise DataError(f"CIFAR pickle {where}/{n} has no 'data' or 'labels' entry")
        data = np.asarray(b["data"])
        lab = np.asarray(b[label_key], dtype=np.int64).ravel()
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"CIFAR pickle {where}/{n}: expected uint8 data of shape (n, 3072), "
                            f"got {data.dtype} {data.shape}")
        if len(lab) != len(data):
            raise DataError(f"CIFAR pickle {where}/{n}: {len(data)} images but {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
        ids += [f"{n}/{j:05d}" for j in range(len(data))]
        splits += ["test" if n == "test_batch" else "train"] * len(data)
    labels = np.concatenate(labels)
    if meta is not None and "label_names" in meta:
        class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in meta["label_names"]]
    else:
        log.warning("CIFAR-10: no batches.meta in %s, using the standard class names", where)
        class_names = list(CIFAR10_CLASSES)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(f"CIFAR-10 {where}: labels outside 0..{len(class_names) - 1}")
    return ImageDataset(labels, ids, ArrayLoader(np.ascontiguousarray(np.concatenate(images))),
                        source=source, class_names=class_names, splits=splits,
                        checksum=checksum)


def _batch_dir(path: str) -> str | None:
    for d in (path, os.path.join(path, "cifar-10-batches-py")):
        if os.path.isdir(d) and any(_BATCH_RE.match(f) and f != "batches.meta"
                                    for f in os.listdir(d)):
            return d
    return None


def _from_pickle_dir(d: str) -> ImageDataset:
    files = sorted(f for f in os.listdir(d) if _BATCH_RE.match(f) and os.path.isfile(
        os.path.join(d, f)))
    batches, meta = {}, None
    for f in files:
        with open(os.path.join(d, f), "rb") as fh:
            obj = _unpickle(fh, os.path.join(d, f))
        if f == "batches.meta":
            meta = obj
        else:
            batches[f] = obj
    stats, _ = stat_files(d, files)
    return _assemble(batches, meta, d, f"cifar10-pickle:{d}", tree_checksum(stats))


def _from_tar(path: str) -> ImageDataset:
    batches, meta = {}, None
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = os.path.basename(m.name)
                if not m.isfile() or not _BATCH_RE.match(base):
                    continue
                f = tf.extractfile(m)
                obj = _unpickle(io.BytesIO(f.read()), f"{path}:{m.name}")
                if base == "batches.meta":
                    meta = obj
                else:
                    batches[base] = obj
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read CIFAR-10 archive {path}: {e}") from None
    return _assemble(batches, meta, path, f"cifar10-tar:{path}", file_checksum(path))


def load_cifar10(path, *, skip_bad: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageDataset:
    """CIFAR-10 from ``path``, whose format is detected (see ``CIFAR_LAYOUT``).

    Pickle form: ids ``data_batch_N/00042`` / ``test_batch/00042``, images ``(32, 32, 3)``
    uint8 arrays, classes in ``label_names`` order. JPEG tree/zip form: ids are paths below
    the folder holding ``train``/``test`` (``train/cat/0001.jpg``), classes sorted by name
    (which for CIFAR-10 is the official order). ``skip_bad`` is accepted for a uniform
    signature; undecodable JPEGs are skipped by the cache builder's ``skip_bad``.
    """
    del skip_bad
    path = require_path("CIFAR-10", path, CIFAR_LAYOUT)
    if os.path.isdir(path):
        d = _batch_dir(path)
        if d is not None:
            return _from_pickle_dir(d)
        return tree_dataset(path, "CIFAR-10", CIFAR_LAYOUT, "cifar10-jpg", max_pixels=max_pixels)
    if zipfile.is_zipfile(path):
        return tree_dataset(path, "CIFAR-10", CIFAR_LAYOUT, "cifar10-jpg", max_pixels=max_pixels)
    if tarfile.is_tarfile(path):
        return _from_tar(path)
    raise DataError(f"CIFAR-10: cannot tell the format of {path} (not a directory, zip or tar "
                    f"archive)\nexpected layout:\n{CIFAR_LAYOUT}")
