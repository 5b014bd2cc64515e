"""Image trees (a directory or a zip of one class folder per class) and list files."""
from __future__ import annotations

import logging
import os
import zipfile

import numpy as np

from ..errors import DataError
from .base import ImageDataset
from .decode import DEFAULT_MAX_PIXELS, is_image_name
from .sources import (DirReader, FileImageLoader, ZipReader, combine_checksums, file_checksum,
                      require_path, stat_files, tree_checksum)

log = logging.getLogger("ssah.data")

SPLIT_NAMES = ("train", "test")

FOLDER_LAYOUT = """\
  <root>/<class_a>/0001.jpg        one sub-folder per class (any depth below it);
  <root>/<class_a>/0002.png        extensions: jpg jpeg png bmp gif tif tiff webp ppm pgm
  <root>/<class_b>/...
or, with an official split:
  <root>/train/<class>/*.jpg
  <root>/test/<class>/*.jpg
<root> may hold the tree inside one top-level folder, and may be a .zip of the tree
(read in place, not extracted)."""

LIST_LAYOUT = """\
  <list file>   one image per line: a path relative to <root>, then its 0/1 labels
                (one column per class, the same number on every line):
      images/0001.jpg 0 1 0 0 1
      images/0002.jpg 1 0 0 0 0
  <root>/images/0001.jpg ...   (<root> defaults to the list file's folder; may be a .zip)"""


def _is_junk(rel: str) -> bool:
    parts = rel.split("/")
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def list_dir_files(root: str) -> list[str]:
    """All image files under ``root`` as sorted ``/``-separated relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        out.extend(rel_dir + f for f in filenames if is_image_name(f))
    return sorted(out)


def list_zip_files(names) -> list[str]:
    return sorted(n for n in names if not n.endswith("/") and is_image_name(n) and not _is_junk(n))


def find_base(files: list[str]) -> str:
    """The prefix (``""`` or ``"a/b/"``) under which the class or split folders lie.

    Descends through single top-level folders that hold no image files directly, stopping at
    a ``train``/``test`` folder level.
    """
    base = ""
    rels = files
    for _ in range(8):
        top_dirs = {r.split("/", 1)[0] for r in rels if "/" in r}
        if any("/" not in r for r in rels) or len(top_dirs) != 1:
            break
        (only,) = top_dirs
        if only in SPLIT_NAMES:
            break
        inner = [r[len(only) + 1:] for r in rels]
        if any("/" not in r for r in inner):  # images directly inside: it is the one class
            break
        base += only + "/"
        rels = inner
    return base


def scan_tree(files: list[str], require_split: bool = False):
    """Group image relpaths into ``(ids, labels, class_names, splits, base)``.

    ``files`` are relative paths (``/``-separated). Returns ids relative to ``base``, ordered
    by split (train first), class name, then path. ``splits`` is None without a split layout.
    """
    base = find_base(files)
    rels = [f[len(base):] for f in files if f.startswith(base)]
    top = {r.split("/", 1)[0] for r in rels if "/" in r}
    has_split = bool(top) and top <= set(SPLIT_NAMES)
    if require_split and not has_split:
        return None
    items = []  # (split_rank, class, id, split)
    for r in rels:
        parts = r.split("/")
        if has_split:
            if len(parts) < 3:
                continue  # a file directly inside train/ or test/: no class
            items.append((SPLIT_NAMES.index(parts[0]), parts[1], r, parts[0]))
        else:
            if len(parts) < 2:
                continue  # a file directly in the root: no class
            items.append((0, parts[0], r, None))
    items.sort()
    class_names = sorted({it[1] for it in items})
    index = {c: k for k, c in enumerate(class_names)}
    ids = [it[2] for it in items]
    labels = np.array([index[it[1]] for it in items], dtype=np.int64)
    splits = [it[3] for it in items] if has_split else None
    return ids, labels, class_names, splits, base


def tree_dataset(path: str, what: str, layout: str, source_prefix: str, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, mode: str = "RGB",
                 require_split: bool = False) -> ImageDataset:
    """An ImageDataset over a directory tree or a zip of one (``path`` must exist)."""
    if os.path.isdir(path):
        files = list_dir_files(path)
        kind = "dir"
    elif zipfile.is_zipfile(path):
        reader = ZipReader(path)
        files = list_zip_files(reader.namelist())
        kind = "zip"
    else:
        raise DataError(f"{what}: {path} is neither a directory nor a zip archive\n"
                        f"expected layout:\n{layout}")
    scanned = scan_tree(files, require_split=require_split) if files else None
    if scanned is None or not scanned[0]:
        why = ("no train/ and test/ class folders found" if files and require_split
               else "no images in class sub-folders found")
        raise DataError(f"{what}: {why} in {path}\nexpected layout:\n{layout}")
    ids, labels, class_names, splits, base = scanned
    relpaths = [base + i for i in ids]
    if kind == "dir":
        reader = DirReader(path)
        stats, _ = stat_files(path, relpaths)
        checksum = tree_checksum(stats)
    else:
        checksum = file_checksum(path)
    loader = FileImageLoader(reader, relpaths, mode=mode, max_pixels=max_pixels)
    return ImageDataset(labels, ids, loader, source=f"{source_prefix}:{path}",
                        class_names=class_names, splits=splits, checksum=checksum)


def load_image_folder(root, *, skip_bad: bool = False,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      mode: str = "RGB") -> ImageDataset:
    """A generic tree with one sub-folder per class (a directory or a .zip of one).

    Class indices follow the sorted folder names. A ``train``/``test`` level above the class
    folders becomes ``ds.splits``. Only files that exist are listed, so ``skip_bad`` has
    nothing to drop here; undecodable files are skipped by the cache builder's ``skip_bad``.
    ``mode`` is ``"RGB"`` or ``"L"`` (for grayscale datasets).
    """
    del skip_bad
    path = require_path("image folder", root, FOLDER_LAYOUT)
    if mode not in ("RGB", "L"):
        raise DataError(f"image mode must be 'RGB' or 'L', not {mode!r}")
    return tree_dataset(path, "image folder", FOLDER_LAYOUT, "folder", max_pixels=max_pixels,
                        mode=mode)


def _parse_list(text: str, list_path: str):
    paths, rows, linenos = [], [], []
    ncols = None
    for lineno, line in enumerate(text.splitlines(), 1):
        toks = line.split()
        if not toks:
            continue
        if ncols is None:
            ncols = len(toks) - 1
            if ncols == 0:
                raise DataError(f"{list_path}, line {lineno}: no label columns after the "
                                f"image path\nexpected layout:\n{LIST_LAYOUT}")
        elif len(toks) - 1 != ncols:
            raise DataError(f"{list_path}, line {lineno}: {len(toks) - 1} label columns, but "
                            f"the first line has {ncols}")
        paths.append(toks[0])
        rows.append(toks[1:])
        linenos.append(lineno)
    if not paths:
        raise DataError(f"{list_path}: the list file is empty\nexpected layout:\n{LIST_LAYOUT}")
    try:
        labels = np.array(rows, dtype=np.str_).astype(np.int64)
        bad = not np.isin(labels, (0, 1)).all()
    except ValueError:
        bad = True
    if bad:  # find the first offending line for the message
        for toks, lineno in zip(rows, linenos):
            for t in toks:
                if t not in ("0", "1"):
                    raise DataError(f"{list_path}, line {lineno}: label value {t!r} is not 0 "
                                    f"or 1")
    return paths, labels.astype(np.uint8), linenos


def load_list_file(list_path, root=None, *, skip_bad: bool = False,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageDataset:
    """A NUS-WIDE style list: ``relative/path.jpg 0 1 0 ... 1`` per line, multi-hot labels.

    ``root`` (a directory or a .zip; default: the list file's folder) holds the images.
    A listed image that does not exist raises DataError naming it and its line, or with
    ``skip_bad=True`` is dropped with a warning (its ids are kept in ``ds.skipped``).
    """
    list_path = require_path("list file", list_path, LIST_LAYOUT)
    if os.path.isdir(list_path):
        raise DataError(f"list file {list_path} is a directory, not a file\n"
                        f"expected layout:\n{LIST_LAYOUT}")
    root = os.path.dirname(list_path) if root is None else root
    root = require_path("image root of list file", root, LIST_LAYOUT)
    try:
        with open(list_path, "rb") as f:
            # paths that are not valid UTF-8 keep their bytes (as the file system names them)
            text = f.read().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise DataError(f"cannot read list file {list_path}: {e.strerror or e}") from None
    paths, labels, linenos = _parse_list(text, list_path)

    if os.path.isdir(root):
        reader = DirReader(root)
        stats, missing = stat_files(root, paths)
    elif zipfile.is_zipfile(root):
        reader = ZipReader(root)
        names = set(reader.namelist())
        missing = [p for p in paths if p not in names]
        stats = None
    else:
        raise DataError(f"image root {root} is neither a directory nor a zip archive")
    keep = np.ones(len(paths), dtype=bool)
    if missing:
        missing_set = set(missing)
        where = [(p, n) for p, n in zip(paths, linenos) if p in missing_set]
        if not skip_bad:
            p, n = where[0]
            more = f" (and {len(where) - 1} more)" if len(where) > 1 else ""
            raise DataError(f"{list_path}, line {n}: image not found: "
                            f"{reader.describe(p)}{more}")
        log.warning("%s: %d listed images not found, skipped (first: %s)", list_path,
                    len(where), reader.describe(where[0][0]))
        keep = np.array([p not in missing_set for p in paths])
    kept = [p for p, k in zip(paths, keep) if k]
    checksum = combine_checksums(file_checksum(list_path), tree_checksum(stats)
                                 if stats is not None else file_checksum(root))
    loader = FileImageLoader(reader, kept, max_pixels=max_pixels)
    ds = ImageDataset(labels[keep], kept, loader, source=f"list:{list_path}:{root}",
                      checksum=checksum)
    ds.skipped = sorted(set(missing))
    return ds
