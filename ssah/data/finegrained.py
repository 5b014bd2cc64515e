"""Fine-grained datasets in their official layouts: CUB-200-2011 and Stanford Dogs."""
from __future__ import annotations

import logging
import os
import re

import numpy as np

from ..errors import DataError
from .base import ImageDataset
from .decode import DEFAULT_MAX_PIXELS
from .sources import (DirReader, FileImageLoader, combine_checksums, file_checksum,
                      require_path, stat_files, tree_checksum)

log = logging.getLogger("ssah.data")

CUB_LAYOUT = """\
  <root>/images.txt               <image id> <path below images/>
  <root>/image_class_labels.txt   <image id> <class id, 1-based>
  <root>/train_test_split.txt     <image id> <1 = train, 0 = test>
  <root>/classes.txt              <class id> <class name>   (optional)
  <root>/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...
(<root> is CUB_200_2011/ or the folder holding it)"""

DOGS_LAYOUT = """\
  <root>/train_list.mat   MATLAB files with 'file_list' (cell of paths below Images/)
  <root>/test_list.mat    and 'labels' (1-based); also accepted in <root>/lists/
  <root>/Images/n02085620-Chihuahua/n02085620_10074.jpg ..."""


def _read_table(path: str, ncols: int) -> list[tuple[int, list[str], int]]:
    """``(first column as int, the other columns, line number)`` per non-blank line."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:   # any file name
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"CUB-200-2011 file not found: {path}\n"
                        f"expected layout:\n{CUB_LAYOUT}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        toks = line.split(maxsplit=ncols - 1)
        if not toks:
            continue
        if len(toks) != ncols:
            raise DataError(f"{path}, line {n}: expected {ncols} columns, got {len(toks)}")
        try:
            key = int(toks[0])
        except ValueError:
            raise DataError(f"{path}, line {n}: {toks[0]!r} is not an integer id") from None
        rows.append((key, toks[1:], n))
    return rows


def _int_column(path: str, rows) -> dict[int, int]:
    out = {}
    for key, (v,), n in rows:
        try:
            out[key] = int(v)
        except ValueError:
            raise DataError(f"{path}, line {n}: {v!r} is not an integer") from None
    return out


def _cub_root(root: str) -> str:
    if not os.path.isfile(os.path.join(root, "images.txt")):
        inner = os.path.join(root, "CUB_200_2011")
        if os.path.isfile(os.path.join(inner, "images.txt")):
            return inner
        raise DataError(f"CUB-200-2011: no images.txt in {root}\nexpected layout:\n{CUB_LAYOUT}")
    return root


def load_cub(root, *, skip_bad: bool = False,
             max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageDataset:
    """CUB-200-2011: 0-based labels, official splits, ids = paths below ``images/``.

    A listed image that does not exist raises DataError, or with ``skip_bad=True`` is dropped
    with a warning (ids in ``ds.skipped``).
    """
    root = _cub_root(require_path("CUB-200-2011", root, CUB_LAYOUT))
    p_images = os.path.join(root, "images.txt")
    p_labels = os.path.join(root, "image_class_labels.txt")
    p_split = os.path.join(root, "train_test_split.txt")
    p_classes = os.path.join(root, "classes.txt")
    images = {k: v[0] for k, v, _ in _read_table(p_images, 2)}
    labels = _int_column(p_labels, _read_table(p_labels, 2))
    split = _int_column(p_split, _read_table(p_split, 2))
    if not images:
        raise DataError(f"CUB-200-2011: {p_images} lists no images")
    order = sorted(images)
    for table, p in ((labels, p_labels), (split, p_split)):
        missing = [k for k in order if k not in table]
        if missing:
            raise DataError(f"{p}: no entry for image id {missing[0]} ({images[missing[0]]})"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    y = np.array([labels[k] - 1 for k in order], dtype=np.int64)
    if y.min() < 0:
        raise DataError(f"{p_labels}: class ids must start at 1")
    bad_split = [k for k in order if split[k] not in (0, 1)]
    if bad_split:
        raise DataError(f"{p_split}: image id {bad_split[0]} has is_train {split[bad_split[0]]}, "
                        f"expected 0 or 1")
    splits = ["train" if split[k] == 1 else "test" for k in order]
    ids = [images[k] for k in order]

    class_names = None
    if os.path.isfile(p_classes):
        cls = {k: v[0] for k, v, _ in _read_table(p_classes, 2)}
        if y.max() + 1 > len(cls) or any(c not in cls for c in range(1, y.max() + 2)):
            raise DataError(f"{p_classes}: does not name every class id used in {p_labels}")
        class_names = [cls[c] for c in sorted(cls)]
    else:
        names = {}
        for i, lab in zip(ids, y):
            names.setdefault(int(lab), i.split("/")[0] if "/" in i else str(lab))
        class_names = [names.get(c, str(c)) for c in range(int(y.max()) + 1)]

    img_root = os.path.join(root, "images")
    if not os.path.isdir(img_root):
        raise DataError(f"CUB-200-2011: image folder not found: {img_root}\n"
                        f"expected layout:\n{CUB_LAYOUT}")
    return _finish(ids, y, splits, class_names, img_root, f"cub:{root}",
                   [file_checksum(p) for p in (p_images, p_labels, p_split)], p_images,
                   skip_bad, max_pixels)


def _finish(ids, y, splits, class_names, img_root, source, sums, listed_in, skip_bad,
            max_pixels) -> ImageDataset:
    stats, missing = stat_files(img_root, ids)
    keep = np.ones(len(ids), dtype=bool)
    if missing:
        first = os.path.join(img_root, missing[0])
        if not skip_bad:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"image listed in {listed_in} not found: {first}{more}")
        log.warning("%d images listed in %s not found, skipped (first: %s)", len(missing),
                    listed_in, first)
        missing_set = set(missing)
        keep = np.array([i not in missing_set for i in ids])
    kept = [i for i, k in zip(ids, keep) if k]
    loader = FileImageLoader(DirReader(img_root), kept, max_pixels=max_pixels)
    ds = ImageDataset(np.asarray(y)[keep], kept, loader, source=source, class_names=class_names,
                      splits=[s for s, k in zip(splits, keep) if k],
                      checksum=combine_checksums(*sums, tree_checksum(stats)))
    ds.skipped = list(missing)
    return ds


def _mat_strings(cell) -> list[str]:
    out = []
    for e in np.asarray(cell, dtype=object).ravel():
        while isinstance(e, np.ndarray):
            if e.size != 1:
                break
            e = e.ravel()[0]
        out.append(str(e).strip())
    return out


def _read_dogs_list(path: str) -> tuple[list[str], np.ndarray]:
    import scipy.io

    try:
        m = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for bad files
        raise DataError(f"cannot read MATLAB file {path}: {type(e).__name__}: {e}") from None
    for key in ("file_list", "labels"):
        if key not in m:
            raise DataError(f"{path} has no '{key}' variable\nexpected layout:\n{DOGS_LAYOUT}")
    files = _mat_strings(m["file_list"])
    try:
        labels = np.asarray(m["labels"], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' is not numeric") from None
    if len(files) != len(labels):
        raise DataError(f"{path}: {len(files)} files but {len(labels)} labels")
    if len(labels) and (labels.min() < 1 or np.any(labels != np.round(labels))):
        raise DataError(f"{path}: labels must be integers starting at 1")
    return files, labels.astype(np.int64) - 1


def load_stanford_dogs(root, *, skip_bad: bool = False,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageDataset:
    """Stanford Dogs: train then test entries, 0-based labels, ids = paths below ``Images/``.

    Class names come from the folder part of the paths (``n02085620-Chihuahua`` ->
    ``Chihuahua``).
    """
    root = require_path("Stanford Dogs", root, DOGS_LAYOUT)
    list_dir = root
    if not os.path.isfile(os.path.join(root, "train_list.mat")) and os.path.isfile(
            os.path.join(root, "lists", "train_list.mat")):
        list_dir = os.path.join(root, "lists")
    ids, labels, splits, sums = [], [], [], []
    for split in ("train", "test"):
        p = os.path.join(list_dir, f"{split}_list.mat")
        if not os.path.isfile(p):
            raise DataError(f"Stanford Dogs file not found: {p}\nexpected layout:\n{DOGS_LAYOUT}")
        f, y = _read_dogs_list(p)
        ids += f
        labels.append(y)
        splits += [split] * len(f)
        sums.append(file_checksum(p))
    y = np.concatenate(labels)
    if not len(y):
        raise DataError(f"Stanford Dogs: the lists in {list_dir} are empty")
    names = {}
    for i, lab in zip(ids, y):
        folder = i.replace("\\", "/").split("/")[0] if "/" in i.replace("\\", "/") else str(lab)
        names.setdefault(int(lab), re.sub(r"^n\d{8}-", "", folder))
    class_names = [names.get(c, str(c)) for c in range(int(y.max()) + 1)]
    img_root = os.path.join(root, "Images")
    if not os.path.isdir(img_root):
        raise DataError(f"Stanford Dogs: image folder not found: {img_root}\n"
                        f"expected layout:\n{DOGS_LAYOUT}")
    return _finish(ids, y, splits, class_names, img_root, f"dogs:{root}", sums,
                   os.path.join(list_dir, "{train,test}_list.mat"), skip_bad, max_pixels)
