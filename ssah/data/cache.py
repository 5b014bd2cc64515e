"""Decoded-image cache: every image of a dataset resized once into one uint8 ``.npy`` file.

Decoding tens of thousands of JPEGs every epoch is slow on a few cores; the cache decodes
them once into an ``(N, H, W, C)`` uint8 array stored as ``.npy`` and memory-maps it on later
calls. The file name carries a key hashed from the dataset's source, its checksum (taken at
load time from the source files' sizes, mtimes and contents), its ids, the size and the
channel count, so a changed source file gives a new cache. Files are written to a temporary
name in the cache folder and moved into place with ``os.replace``. A JSON sidecar beside the
``.npy`` records the key fields and the images skipped as unreadable.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import ImageDataset
from .decode import array_to_image, to_mode

log = logging.getLogger("ssah.data")

CACHE_VERSION = 1
_BLOCK = 256


@dataclass
class CacheResult:
    """What :func:`build_cache` returns.

    ``array`` is aligned with the dataset (row ``i`` is image ``i``); rows of skipped images
    are zero. ``keep`` is False at those rows.
    """
    array: np.ndarray
    path: str
    skipped_indices: np.ndarray
    skipped_ids: list[str]
    built: bool  # True when this call decoded the images, False when it reused the file
    info: dict = field(default_factory=dict)

    @property
    def keep(self) -> np.ndarray:
        mask = np.ones(len(self.array), dtype=bool)
        mask[self.skipped_indices] = False
        return mask


def _slug(source: str) -> str:
    kind, _, rest = source.partition(":")
    tail = os.path.basename(rest.rstrip("/\\").split(":")[0]) if rest else ""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}-{tail}" if tail else kind)
    return s[:60].strip("_-.") or "dataset"


def cache_fields(ds: ImageDataset, size: int | None, channels: int) -> dict:
    """The fields whose hash names the cache file."""
    # surrogateescape: file names that are not valid UTF-8 hash as their original bytes
    ids_sha = hashlib.sha256("\n".join(ds.ids.tolist()).encode("utf-8", "surrogateescape")).hexdigest()
    checksum = ds.checksum
    if checksum is None:  # a dataset built by hand: identify it by its ids and labels
        checksum = "labels:" + hashlib.sha256(np.ascontiguousarray(ds.labels).tobytes()).hexdigest()
    return {"version": CACHE_VERSION, "source": ds.source, "size": size, "channels": channels,
            "checksum": checksum, "n": len(ds), "ids_sha256": ids_sha}


def cache_paths(ds: ImageDataset, size: int | None, cache_dir, channels: int = 3):
    """``(npy path, json path, fields)`` of the cache file for these arguments."""
    fields = cache_fields(ds, size, channels)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    stem = os.path.join(os.fspath(cache_dir),
                        f"{_slug(ds.source)}-{size or 'native'}px-c{channels}-{key}")
    return stem + ".npy", stem + ".json", fields


def prepare_image(img, name: str, size: int | None, channels: int) -> np.ndarray:
    """One decoded image as a ``(H, W, channels)`` uint8 array, resized to size x size."""
    if isinstance(img, np.ndarray):
        a = img
        ok_channels = (a.ndim == 2 and channels == 1) or (a.ndim == 3 and a.shape[2] == channels)
        if a.dtype == np.uint8 and ok_channels and (size is None or a.shape[:2] == (size, size)):
            return a.reshape(a.shape[0], a.shape[1], channels)
        if a.dtype == np.uint8 and a.ndim == 2 and channels == 3 and (
                size is None or a.shape == (size, size)):
            return np.repeat(a[:, :, None], 3, axis=2)
        img = array_to_image(a, name)
    elif not isinstance(img, Image.Image):
        raise DataError(f"image {name}: the loader returned {type(img).__name__}, "
                        f"not a PIL image or uint8 array")
    img = to_mode(img, "RGB" if channels == 3 else "L")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    a = np.asarray(img, dtype=np.uint8)
    return a.reshape(a.shape[0], a.shape[1], channels)


def _pixels(img) -> int:
    if isinstance(img, Image.Image):
        return img.size[0] * img.size[1]
    return int(np.asarray(img).shape[0] * np.asarray(img).shape[1])


def _load_existing(npy: str, meta_path: str, fields: dict, n: int, channels: int):
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("fields") != fields:
            return None
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n or arr.shape[3] != channels:
        return None
    if fields["size"] is not None and arr.shape[1:3] != (fields["size"],) * 2:
        return None
    return arr, meta


def _skip_message(skipped: list[dict]) -> str:
    first = skipped[0]
    more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    return f"{first['error']}{more}"


def build_cache(ds: ImageDataset, size: int | None, cache_dir, channels: int = 3,
                skip_bad: bool = False, progress: bool = True,
                workers: int | None = None) -> CacheResult:
    """Decode every image of ``ds`` into ``cache_dir`` (or reuse the file there).

    ``size=None`` keeps the native size, which every image must share. With ``skip_bad``
    images that fail to decode are counted, logged and left as zero rows (see
    :class:`CacheResult`); without it the first one raises :class:`DataError` naming it.
    ``workers`` threads decode (default: one for images of up to 128x128 pixels, else the
    number of CPUs, at most 4).
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels}")
    if size is not None and (int(size) != size or size < 1):
        raise DataError(f"size must be a positive integer or None, not {size!r}")
    n = len(ds)
    if n == 0:
        raise DataError(f"dataset {ds.source} is empty: nothing to cache")
    npy, meta_path, fields = cache_paths(ds, size, cache_dir, channels)

    found = _load_existing(npy, meta_path, fields, n, channels)
    if found is not None:
        arr, meta = found
        skipped = meta.get("skipped", [])
        if skipped and not skip_bad:
            raise DataError(f"{len(skipped)} images of {ds.source} could not be decoded "
                            f"(cached in {npy} with skip_bad): {_skip_message(skipped)}; "
                            f"fix them or pass skip_bad")
        return CacheResult(arr, npy, np.array([s["index"] for s in skipped], dtype=np.int64),
                           [s["id"] for s in skipped], built=False, info=meta)

    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create cache folder {cache_dir}: {e.strerror or e}") from None

    def name(i):
        return str(ds.ids[i])

    def decode(i):
        return prepare_image(ds.image(i), name(i), size, channels)

    skipped: list[dict] = []
    t0 = time.perf_counter()
    # The first decodable image, in this thread: it fixes the native size when size is None
    # and tells whether threads will help (they only do for large images, whose decoding
    # and resizing release the GIL; tiny ones are bound by Python overhead).
    first = None
    for i in range(n):
        try:
            raw = ds.image(i)
            first = prepare_image(raw, name(i), size, channels)
            break
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append({"index": i, "id": name(i), "error": str(e)})
    if first is None:
        raise DataError(f"none of the {n} images of {ds.source} could be decoded: "
                        f"{_skip_message(skipped)}")
    shape = first.shape[:2]
    if workers is None:
        workers = 1 if _pixels(raw) <= 128 * 128 else min(4, os.cpu_count() or 1)

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=cache_dir)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(n, shape[0], shape[1], channels))
        start = len(skipped) + 1
        out[start - 1] = first

        def run_block(lo, hi):
            errors = []
            for i in range(lo, hi):
                try:
                    a = decode(i)
                    if a.shape[:2] != shape:
                        raise DataError(f"image {name(i)} is {a.shape[1]}x{a.shape[0]}, unlike "
                                        f"the others ({shape[1]}x{shape[0]}): pass a size")
                    out[i] = a
                except DataError as e:
                    if not skip_bad:
                        raise
                    errors.append({"index": i, "id": name(i), "error": str(e)})
            return errors, hi - lo

        from tqdm import tqdm

        blocks = [(lo, min(lo + _BLOCK, n)) for lo in range(start, n, _BLOCK)]
        nworkers = workers
        with tqdm(total=n, initial=start, desc=f"decoding {_slug(ds.source)}", unit="img",
                  disable=not progress, leave=False) as bar:
            if nworkers <= 1:
                for lo, hi in blocks:
                    errs, done = run_block(lo, hi)
                    skipped += errs
                    bar.update(done)
            else:
                with ThreadPoolExecutor(nworkers) as pool:
                    futures = [pool.submit(run_block, lo, hi) for lo, hi in blocks]
                    pending = set(futures)
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for fut in finished:
                            if fut.exception() is not None:
                                for p in pending:
                                    p.cancel()
                                raise fut.exception()
                            errs, done = fut.result()
                            skipped += errs
                            bar.update(done)
        out.flush()
        del out
        os.replace(tmp, npy)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

    skipped.sort(key=lambda s: s["index"])
    elapsed = time.perf_counter() - t0
    meta = {"fields": fields, "shape": [n, shape[0], shape[1], channels],
            "skipped": skipped, "decode_seconds": round(elapsed, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=cache_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, meta_path)
    if skipped:
        log.warning("skipped %d of %d images of %s that could not be decoded (first: %s); "
                    "list in %s", len(skipped), n, ds.source, skipped[0]["id"], meta_path)
    log.info("decoded %d images of %s in %.1f s into %s", n, ds.source, elapsed, npy)
    return CacheResult(np.load(npy, mmap_mode="r"), npy,
                       np.array([s["index"] for s in skipped], dtype=np.int64),
                       [s["id"] for s in skipped], built=True, info=meta)


def cached_array(ds: ImageDataset, size: int | None, cache_dir, channels: int = 3,
                 skip_bad: bool = False, progress: bool = True) -> np.ndarray:
    """All images of ``ds`` as a read-only ``(N, size, size, channels)`` uint8 memmap.

    Decodes once into ``cache_dir`` and reuses the file on later calls; see
    :func:`build_cache` (which also reports the skipped images) for the details.
    """
    return build_cache(ds, size, cache_dir, channels=channels, skip_bad=skip_bad,
                       progress=progress).array
