"""The image search service: a FastAPI app over a trained H-Net and a saved Hamming index.

``create_app(checkpoint, index_path, token=None, limits=Limits())`` returns the app; ``ssah
serve`` runs it with uvicorn.  Endpoints (every error is ``{"error": "..."}`` with a 4xx/5xx
status; the OpenAPI description is at ``/openapi.json``):

- ``POST /search``: k nearest items (or every item within ``radius``) for a query given as a
  multipart image upload (field ``image``), a raw ``image/*`` body, or JSON ``{"code":
  "0101..."}`` / ``{"id": N}``; options ``k``, ``radius``, ``label`` (a label filter) in the
  JSON body, as form fields or as query parameters.
- ``GET /items/{id}``, ``GET /items/{id}/image?size=128`` (PNG thumbnail), ``GET /random``.
- ``POST /items`` (multipart ``image`` fields, optional ``label``) and ``DELETE /items/{id}``
  need ``Authorization: Bearer <token>``; without a configured token the service is read-only.
  Every change is saved atomically (``HammingIndex.save``) before the response is sent.
- ``GET /stats``, ``GET /healthz``, ``GET /`` (the web page), ``GET /api`` (an offline list of
  the endpoints).

Where thumbnails come from: an item's ``path`` metadata (absolute, or relative to the index
folder; images added through ``POST /items`` are stored as ``images/<uuid>.png`` there), else
its ``name`` looked up among the ids of the run's dataset (``data.dataset`` / ``data.path`` of
the checkpoint's config, opened lazily on the first thumbnail request, so array datasets such
as digits or Fashion-MNIST need no image files).

Concurrency: searches run in worker threads under the read side of a readers-writer lock;
``add``/``remove`` take the write side only for the in-memory change, then save while searches
go on.  Writers are serialised by a mutex and, across processes (``--workers``), by an advisory
file lock; each process reloads the index file when another one has changed it.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DataError, SSAHError

log = logging.getLogger("ssah.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
INT64_MAX = 2**63 - 1
THUMB_DEFAULT, THUMB_MIN, THUMB_MAX = 128, 16, 512
STORED_IMAGE_MAX = THUMB_MAX        # uploads are kept downsized to this many pixels per side


@dataclass
class Limits:
    """Request limits of the service (each one is an ``ssah serve`` flag)."""
    max_upload_mb: float = 10.0        # request body size
    max_pixels: int = 50_000_000       # decoded pixels per image (decompression-bomb guard)
    max_k: int = 1000                  # largest k; also caps the results of a radius search
    timeout: float = 30.0              # seconds per request (0: none)
    max_files: int = 32                # images per POST /items

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> "Limits":
        for name in ("max_upload_mb", "max_pixels", "max_k", "max_files"):
            if not getattr(self, name) > 0:
                raise SSAHError(f"serve limit {name} must be > 0, got {getattr(self, name)}")
        if self.timeout < 0:
            raise SSAHError(f"serve limit timeout must be >= 0, got {self.timeout}")
        return self


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over the upload limit of {_mb(limit)}")


def _clean(message: str) -> str:
    """Drop the in-memory buffer's repr that PIL puts in its messages."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", message)


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.3g} MB"


# ---------------------------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------------------------
class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@contextlib.contextmanager
def file_lock(path: Path):
    """An advisory exclusive lock on ``path`` (POSIX ``flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:          # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _cell(value):
    """A metadata value as JSON: numbers, strings, multi-hot rows as lists of class indices."""
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.dtype.kind in "biu":
            return np.flatnonzero(value).tolist()
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def bits_string(bits01: np.ndarray) -> str:
    return "".join("1" if b else "0" for b in np.asarray(bits01).ravel().tolist())


def parse_code(value, bits: int) -> np.ndarray:
    """'0101...' (spaces and underscores allowed) -> (1, bits) 0/1 array, or ApiError 400."""
    if not isinstance(value, str):
        raise ApiError(400, f"'code' must be a string of 0s and 1s, got {type(value).__name__}")
    s = "".join(ch for ch in value if ch not in " _")
    if not s or set(s) - {"0", "1"}:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ApiError(400, f"'code' must be a string of 0s and 1s, got {shown!r}")
    if len(s) != bits:
        raise ApiError(400, f"'code' has {len(s)} bits, the index holds {bits}-bit codes")
    return (np.frombuffer(s.encode("ascii"), dtype=np.uint8) - ord("0"))[None, :]


def _int_param(name: str, value, lo: int, hi: int | None) -> int:
    """An integer option from JSON (int) or a form/query string, checked against [lo, hi]."""
    rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ApiError(400, f"{name!r} must be an integer {rng}, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ApiError(400, f"{name!r} must be an integer {rng}, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ApiError(400, f"{name!r} must be an integer {rng}, got {type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise ApiError(400, f"{name!r} must be an integer {rng}, got {value}")
    return value


def _item_id(value) -> int:
    """A database id from JSON or a path; out-of-range ids are unknown (404)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(400, f"'id' must be a non-negative integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ApiError(400, f"'id' must be a non-negative integer, got {value!r}") from None
    if value < 0 or value > INT64_MAX:
        raise ApiError(404, f"unknown id {value}")
    return value


def _safe_name(name: str | None, fallback: str = "upload") -> str:
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = "".join(ch for ch in base if ch.isprintable())[:200]
    return base or fallback


def _to_pil(img):
    from PIL import Image
    from ..data.decode import array_to_image
    if isinstance(img, Image.Image):
        return img
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return array_to_image(a)


def thumbnail_png(img, size: int) -> bytes:
    """A PNG at most ``size`` pixels per side; small images are enlarged by a whole factor
    with nearest-neighbour sampling (an 8x8 digit stays crisp)."""
    from PIL import Image
    from ..data.decode import to_mode
    img = _to_pil(img)
    img = to_mode(img, "L" if img.mode in ("L", "1", "I", "F") or img.mode.startswith("I;16")
                  else "RGB")
    w, h = img.size
    if max(w, h) > size:
        img = img.copy()
        img.thumbnail((size, size), Image.LANCZOS)
    elif max(w, h) * 2 <= size:
        f = size // max(w, h)
        img = img.resize((w * f, h * f), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the service: index, model, locks, persistence
# ---------------------------------------------------------------------------------------------
class SearchService:
    """Everything the endpoints share; thread-safe."""

    def __init__(self, encoder, index_path, token: str | None = None,
                 limits: Limits | None = None, data_path: str | None = None,
                 engine: str | None = None, reload_interval: float = 1.0):
        from ..index import HammingIndex
        from ..index.storage import index_file
        self.limits = (limits or Limits()).check()
        self.encoder = encoder
        self.index_path = Path(index_path)
        self.index_file = index_file(self.index_path)
        if not self.index_file.is_file():
            raise SSAHError(f"no index at {self.index_path} (build one with `ssah index build`)")
        self.engine_override = engine
        self.index = HammingIndex.load(self.index_path, **({"engine": engine} if engine else {}))
        if self.index.bits != encoder.bits:
            self.index.close()
            raise SSAHError(f"the index {self.index_file} holds {self.index.bits}-bit codes but "
                            f"the model {encoder.info['checkpoint']} makes {encoder.bits}-bit "
                            f"codes; serve an index built from this model's codes")
        self.token = token.encode("utf-8") if token else None
        self.data_path = data_path
        self.lock = RWLock()
        self.write_mutex = threading.Lock()
        self.reload_lock = threading.Lock()
        self.lock_path = self.index_file.with_name(self.index_file.name + ".lock")
        self.images_dir = self.index_file.parent / (
            "images" if self.index_file.name == "index.ssah" else self.index_file.stem + ".images")
        self.reload_interval = reload_interval
        self._sig = self._signature()
        self._checked = time.monotonic()
        self.generation = 0
        self._stats_cache = None
        self._thumbs: OrderedDict = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self._dataset = None            # (ImageDataset, name -> row) once opened
        self._dataset_error = None
        self._dataset_lock = threading.Lock()
        self.encode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ssah-encode")
        self.started = time.time()
        self._warm(self.index)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self):
        self.encode_pool.shutdown(wait=False, cancel_futures=True)
        with self.lock.write():
            self.index.close()

    @staticmethod
    def _warm(index):
        """Build lazily-built engine state (mih tables, the codes cache) before readers share
        the index, so concurrent searches only read."""
        if len(index):
            index.search(np.zeros((1, index.bits), np.uint8), 1)
            index.codes_of(index.ids[:1])

    def _signature(self):
        try:
            st = os.stat(self.index_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def maybe_reload(self) -> None:
        """Reload the index when another process (a ``--workers`` sibling, ``ssah index add``)
        replaced the file; checked at most every ``reload_interval`` seconds, never while a
        write of this process is under way."""
        now = time.monotonic()
        if now - self._checked < self.reload_interval or self.write_mutex.locked():
            return
        if not self.reload_lock.acquire(blocking=False):
            return
        try:
            self._checked = now
            self._reload_if_changed()
        finally:
            self.reload_lock.release()

    def _reload_if_changed(self) -> None:
        """Load the file when its signature changed and swap it in (caller holds reload_lock)."""
        sig = self._signature()
        if sig is None or sig == self._sig:
            return
        from ..index import HammingIndex
        try:
            fresh = HammingIndex.load(self.index_path, bits=self.encoder.bits,
                                      **({"engine": self.engine_override}
                                         if self.engine_override else {}))
        except SSAHError as e:
            log.warning("index changed on disk but could not be reloaded: %s", e)
            return
        self._warm(fresh)
        with self.lock.write():
            old, self.index = self.index, fresh
            self._sig = sig
            self.generation += 1
        old.close()
        self._clear_thumbs()
        log.info("reloaded %s (%d items)", self.index_file, len(fresh))

    # -- auth -------------------------------------------------------------------------------
    def authorize(self, header: str | None) -> None:
        if self.token is None:
            raise ApiError(403, "this server is read-only: adding and removing items needs a "
                                "token (start it with `ssah serve --token-file FILE`)")
        if not header:
            raise ApiError(401, "missing 'Authorization: Bearer <token>' header",
                           {"WWW-Authenticate": "Bearer"})
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "the Authorization header must be 'Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), self.token):
            raise ApiError(403, "invalid token")

    # -- images ---------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str):
        """Bytes -> PIL image in the model's mode; 400 for a bad image, 413 over max_pixels."""
        from PIL import Image
        if not data:
            raise ApiError(400, f"the uploaded image {name!r} is empty")
        limit = self.limits.max_pixels
        try:
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
        except Image.DecompressionBombError:
            raise ApiError(413, f"image {name!r} rejected as a decompression bomb "
                                f"(over {limit:,} pixels)") from None
        except Exception:
            w = h = 0                  # let decode_image report what is wrong
        if w * h > limit:
            raise ApiError(413, f"image {name!r} is {w}x{h} = {w * h:,} pixels, over the "
                                f"limit of {limit:,} pixels")
        try:
            return self.encoder.decode(data, name, max_pixels=limit)
        except DataError as e:
            raise ApiError(400, _clean(str(e))) from None

    def encode_uploads(self, uploads: list[tuple[str, bytes]]):
        """[(name, bytes)] -> (codes (n, bits) int8, decoded images); runs in the encode pool."""
        images = [self.decode(data, name) for name, data in uploads]
        try:
            codes = self.encoder.encode(images, [n for n, _ in uploads])
        except DataError as e:
            raise ApiError(400, str(e)) from None
        return codes, images

    async def run_encode(self, uploads):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.encode_pool, self.encode_uploads, uploads)

    # -- search ---------------------------------------------------------------------------------
    def search(self, query_bits: np.ndarray | None, query_id: int | None, k: int,
               radius: int | None, label) -> dict:
        self.maybe_reload()
        with self.lock.read():
            index = self.index
            if query_id is not None:
                if query_id not in index:
                    raise ApiError(404, f"unknown id {query_id}")
                query_bits = index.codes_of([query_id])
            filt = None
            if label is not None:
                filt = self._label_filter(index, label)
            truncated = False
            try:
                if radius is not None:
                    (dist, ids), = index.range_search(query_bits, radius, filter=filt)
                    truncated = len(ids) > k
                    dist, ids = dist[:k], ids[:k]
                else:
                    d, i = index.search(query_bits, k, filter=filt)
                    dist, ids = d[0], i[0]
            except SSAHError as e:
                raise ApiError(400, str(e)) from None
            keep = ids >= 0
            dist, ids = dist[keep], ids[keep]
            meta = index.metadata_of(ids) if len(ids) else {}
            qmeta = index.metadata_of([query_id]) if query_id is not None else {}
            count = len(index)
        results = []
        for r, (d, i) in enumerate(zip(dist.tolist(), ids.tolist())):
            row = {"rank": r + 1, "id": int(i), "distance": int(d)}
            for name, col in meta.items():
                row[name] = _cell(col[r])
            row["image_url"] = f"/items/{int(i)}/image"
            results.append(row)
        query = {"code": bits_string(query_bits)}
        if query_id is not None:
            query.update({"type": "id", "id": query_id, "image_url": f"/items/{query_id}/image"})
            for name, col in qmeta.items():
                query[name] = _cell(col[0])
        return {"query": query, "k": k, "radius": radius, "label_filter": label,
                "count": count, "truncated": truncated, "results": results}

    @staticmethod
    def _label_filter(index, label) -> dict:
        if "label" not in index.metadata_columns:
            raise ApiError(400, "this index has no labels to filter on")
        return {"label": label}

    # -- items ----------------------------------------------------------------------------------
    def item(self, item_id: int) -> dict:
        self.maybe_reload()
        with self.lock.read():
            index = self.index
            if item_id not in index:
                raise ApiError(404, f"unknown id {item_id}")
            meta = index.metadata_of([item_id])
            code = index.codes_of([item_id])[0]
        out = {"id": item_id, "code": bits_string(code)}
        out.update({k: _cell(v[0]) for k, v in meta.items()})
        out["image_url"] = f"/items/{item_id}/image"
        return out

    def count(self) -> int:
        self.maybe_reload()
        return len(self.index)

    def random_id(self) -> int:
        self.maybe_reload()
        with self.lock.read():
            n = len(self.index)
            if n == 0:
                raise ApiError(404, "the index is empty")
            pos = int(np.random.default_rng().integers(n))
            ids = self.index.ids
        return int(ids[pos])

    def stats(self) -> dict:
        self.maybe_reload()
        with self.lock.read():
            cached = self._stats_cache
            if cached is not None and cached[0] == (self.generation, id(self.index)):
                s = cached[1]
            else:
                s = self.index.stats()
                self._stats_cache = ((self.generation, id(self.index)), s)
            labels = "label" in self.index.metadata_columns
        return {"count": s["count"], "bits": s["bits"], "engine": s["engine"],
                "exact": s["exact"], "id_range": s["id_range"],
                "metadata_columns": list(s["metadata_columns"]), "labels": labels,
                "memory_bytes": s["memory_bytes"]["total"],
                "model": self.encoder.info, "writable": self.token is not None,
                "class_names": self.class_names(),
                "limits": {**asdict(self.limits), "max_upload_bytes": self.limits.max_upload_bytes},
                "uptime_s": round(time.time() - self.started, 1)}

    # -- thumbnails -------------------------------------------------------------------------------
    def _clear_thumbs(self):
        with self._thumbs_lock:
            self._thumbs.clear()

    def _open_dataset(self):
        """The run's dataset and its id -> row map, opened once (None when unavailable)."""
        with self._dataset_lock:
            if self._dataset is None and self._dataset_error is None:
                from ..data import open_dataset
                cfg = self.encoder.cfg.data
                path = self.data_path or cfg.path
                kw = {"root": cfg.root} if cfg.dataset == "list" else {}
                try:
                    ds = open_dataset(cfg.dataset, path, **kw)
                    self._dataset = (ds, {name: row for row, name in enumerate(ds.ids.tolist())})
                except Exception as e:       # a missing dataset only costs the thumbnails
                    self._dataset_error = f"{type(e).__name__}: {e}"
                    log.warning("dataset %s unavailable for thumbnails: %s", cfg.dataset, e)
            return self._dataset

    def class_names(self):
        ds = self._open_dataset()
        return ds[0].class_names if ds is not None else None

    def _resolve_path(self, p: str) -> Path:
        path = Path(p)
        if not path.is_absolute():
            beside = self.index_file.parent / path
            if beside.exists() or not path.exists():
                path = beside
        return path

    def source_image(self, item_id: int, meta: dict):
        """The item's image: its ``path`` file, else its ``name`` row of the run's dataset."""
        path = meta.get("path")
        if path:
            f = self._resolve_path(path)
            if not f.is_file():
                raise ApiError(404, f"item {item_id}: image file {path} not found")
            return self.decode(f.read_bytes(), f"item {item_id} ({path})")
        name = meta.get("name")
        if name:
            opened = self._open_dataset()
            dataset = self.encoder.cfg.data.dataset
            if opened is None:
                raise ApiError(404, f"item {item_id}: its dataset {dataset!r} is not available "
                                    f"({self._dataset_error})")
            ds, rows = opened
            row = rows.get(name)
            if row is None:
                raise ApiError(404, f"item {item_id}: {name!r} is not an id of the dataset "
                                    f"{dataset!r}")
            with self._dataset_lock:
                try:
                    return ds.image(row)
                except SSAHError as e:
                    raise ApiError(404, f"item {item_id}: {e}") from None
        raise ApiError(404, f"item {item_id} has no image (no 'path' or dataset 'name' in the "
                            f"index)")

    def thumbnail(self, item_id: int, size: int) -> bytes:
        self.maybe_reload()
        with self.lock.read():
            if item_id not in self.index:
                raise ApiError(404, f"unknown id {item_id}")
            meta = {k: _cell(v[0]) for k, v in self.index.metadata_of([item_id]).items()}
            gen = self.generation
        key = (gen, item_id, size)
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        png = thumbnail_png(self.source_image(item_id, meta), size)
        with self._thumbs_lock:
            self._thumbs[key] = png
            while len(self._thumbs) > 2048:
                self._thumbs.popitem(last=False)
        return png

    # -- writes ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self):
        """Serialise writers in this process (a mutex) and across processes (a file lock),
        and make sure they change the newest index on disk."""
        with self.write_mutex, file_lock(self.lock_path):
            with self.reload_lock:
                self._reload_if_changed()
            yield

    def _persist(self, rollback) -> None:
        """Save the index (searches continue meanwhile); undo the change if saving fails."""
        try:
            with self.lock.read():
                self.index.save(self.index_path)
        except Exception as e:
            log.error("saving %s failed, change undone: %s", self.index_file, e)
            with self.lock.write():
                rollback()
                self._warm(self.index)
            raise ApiError(500, f"could not save the index, nothing changed: "
                                f"{type(e).__name__}: {e}") from None
        self._sig = self._signature()
        self.generation += 1
        self._clear_thumbs()

    def add(self, codes: np.ndarray, images, names: list[str], labels) -> tuple[list[dict], int]:
        from PIL import Image
        self.images_dir.mkdir(parents=True, exist_ok=True)
        files = []
        try:
            for img in images:
                img = img.copy()
                img.thumbnail((STORED_IMAGE_MAX, STORED_IMAGE_MAX), Image.LANCZOS)
                target = self.images_dir / f"{uuid.uuid4().hex}.png"
                tmp = target.with_name("." + target.name + ".tmp")
                img.save(tmp, format="PNG")
                os.replace(tmp, target)
                files.append(target)
            rel = [str(f.relative_to(self.index_file.parent)) for f in files]
            with self._writing():
                meta = {"name": names, "path": rel}
                with self.lock.write():
                    index = self.index
                    if labels is not None:
                        meta["label"] = self._label_column(index, labels, len(names))
                    elif "label" in index.metadata_columns:
                        meta["label"] = self._label_column(index, [None] * len(names), len(names))
                    try:
                        ids = index.add(codes, metadata=meta)
                    except SSAHError as e:
                        raise ApiError(400, str(e)) from None
                    self._warm(index)
                    count = len(index)

                def undo():
                    index.remove(ids, missing="ignore")
                self._persist(undo)
        except BaseException:
            for f in files:
                f.unlink(missing_ok=True)
            raise
        return [{"id": int(i), "name": n, "image_url": f"/items/{int(i)}/image"}
                for i, n in zip(ids.tolist(), names)], count

    @staticmethod
    def _label_column(index, labels, n):
        """Labels for new items, shaped like the index's column: ints (-1 unknown), or
        multi-hot rows from lists of class indices."""
        shape = []
        if "label" in index.metadata_columns and len(index):
            shape = list(index.metadata_of(index.ids[:1])["label"].shape[1:])
        if shape:
            width = shape[0]
            out = np.zeros((n, width), dtype=np.uint8)
            for r, lab in enumerate(labels):
                for c in ([] if lab is None else (lab if isinstance(lab, list) else [lab])):
                    if not 0 <= c < width:
                        raise ApiError(400, f"label class {c} is outside [0, {width})")
                    out[r, c] = 1
            return out
        out = []
        for lab in labels:
            if isinstance(lab, list):
                if len(lab) != 1:
                    raise ApiError(400, "this index holds one label per item")
                lab = lab[0]
            out.append(-1 if lab is None else lab)
        return np.asarray(out, dtype=np.int64)

    def remove(self, item_id: int) -> int:
        with self._writing():
            with self.lock.write():
                index = self.index
                if item_id not in index:
                    raise ApiError(404, f"unknown id {item_id}")
                codes = index.codes_of([item_id], packed=True)
                meta = index.metadata_of([item_id])
                index.remove([item_id])
                self._warm(index)
                count = len(index)

            def undo():
                index.add_packed(codes, ids=[item_id], metadata=meta)
            self._persist(undo)
        path = meta.get("path")
        if path is not None and str(path[0]):
            f = self._resolve_path(str(path[0]))
            if f.parent.resolve() == self.images_dir.resolve():
                f.unlink(missing_ok=True)
        return count


# ---------------------------------------------------------------------------------------------
# ASGI middleware: body limit and request timeout
# ---------------------------------------------------------------------------------------------
async def _send_json(send, status: int, payload: dict, headers=()):
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Refuses bodies over the upload limit (before reading them when Content-Length says
    so, else while streaming) and answers 504 when a request takes over ``timeout`` s."""

    def __init__(self, app, max_body: int, timeout: float):
        self.app, self.max_body, self.timeout = app, max_body, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await _send_json(send, 400, {"error": "invalid Content-Length header"})
                if length > self.max_body:
                    return await _send_json(send, 413, {"error": BodyTooLarge(self.max_body).message},
                                            [(b"connection", b"close")])
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if not self.timeout:
            return await self.app(scope, limited_receive, tracking_send)
        with anyio.move_on_after(self.timeout) as cancel:
            await self.app(scope, limited_receive, tracking_send)
        if cancel.cancelled_caught and not started:
            await _send_json(send, 504, {"error": f"request timed out after {self.timeout:g} s"})


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------
_SEARCH_BODY = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"},
            "k": {"type": "integer"}, "radius": {"type": "integer"},
            "label": {"type": "integer"}}, "required": ["image"]}},
        "application/json": {"schema": {"type": "object", "properties": {
            "code": {"type": "string", "description": "0/1 string of the index's bit length"},
            "id": {"type": "integer", "description": "search with this item's stored code"},
            "k": {"type": "integer", "default": 10}, "radius": {"type": "integer"},
            "label": {"type": "integer", "description": "only items with this label"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

_ADD_BODY = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "label": {"type": "array", "items": {"type": "string"},
                      "description": "one per image, or one for all; '1,4' for multi-label"}},
            "required": ["image"]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

SEARCH_KEYS = {"code", "id", "k", "radius", "label"}


def _json(payload, status: int = 200) -> Response:
    """A JSON response of plain Python values (skips FastAPI's generic encoder: faster)."""
    return Response(json.dumps(payload, separators=(",", ":")).encode(), status_code=status,
                    media_type="application/json")


def _media_type(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _parse_label(value, multi: bool = False):
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return [_int_param("label", v, 0, None) for v in value]
    if isinstance(value, str) and "," in value:
        return [_int_param("label", v, 0, None) for v in value.split(",") if v.strip()]
    return _int_param("label", value, -1 if not multi else 0, None)


def create_app(checkpoint, index_path, token: str | None = None, limits: Limits | None = None,
               *, device: str = "auto", data_path: str | None = None,
               engine: str | None = None):
    """The FastAPI app serving ``index_path`` with the H-Net of ``checkpoint``.

    ``checkpoint``: a checkpoint file, run directory or an already loaded
    :class:`ssah.train.encode.ImageEncoder`; ``token``: enables ``POST /items`` and
    ``DELETE /items/{id}`` for ``Authorization: Bearer <token>``; ``limits``: see
    :class:`Limits`; ``data_path``: where the run's dataset lives, for thumbnails, when not
    at the config's ``data.path``; ``engine``: search with another engine than the saved one.
    """
    from .. import __version__
    from ..train.encode import ImageEncoder

    limits = (limits or Limits()).check()
    encoder = checkpoint if isinstance(checkpoint, ImageEncoder) else ImageEncoder(checkpoint, device)
    service = SearchService(encoder, index_path, token=token, limits=limits, data_path=data_path,
                            engine=engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="ssah image search", version=__version__, lifespan=lifespan,
                  description="Search a Hamming index of binary codes learned by SSAH: by "
                              "image, by code or by database item.  Errors are "
                              "`{\"error\": \"...\"}`.")
    app.state.service = service
    app.add_middleware(LimitsMiddleware, max_body=limits.max_upload_bytes, timeout=limits.timeout)

    def err(status, message, headers=None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return err(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        message = exc.detail
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return err(exc.status_code, str(message), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return err(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(SSAHError)
    async def _ssah_error(request, exc):
        return err(400, str(exc))

    limiter = []

    async def threaded(fn, *args):
        """Run ``fn`` in a worker thread; at most one per CPU at a time (first come, first
        served), so a burst of requests queues instead of thrashing the cores."""
        if not limiter:
            limiter.append(anyio.CapacityLimiter(max(2, os.cpu_count() or 2)))
        return await anyio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True,
                                              limiter=limiter[0])

    async def read_body(request) -> bytes:
        return await request.body()

    async def read_form(request, max_files: int):
        form = await request.form(max_files=max_files, max_fields=64,
                                  max_part_size=64 * 1024)
        return form

    # -- pages ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api", include_in_schema=False)
    async def api_page():
        return FileResponse(STATIC_DIR / "api.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # -- read endpoints ------------------------------------------------------------------------
    @app.get("/healthz", summary="liveness: the index is loaded")
    async def healthz():
        return _json({"status": "ok", "count": await threaded(service.count)})

    @app.get("/stats", summary="index and model facts, limits")
    async def stats():
        return _json(await threaded(service.stats))

    @app.get("/random", summary="the id of a random database item")
    async def random_item():
        return _json({"id": await threaded(service.random_id)})

    @app.get("/items/{item_id}", summary="an item's metadata and code")
    async def get_item(item_id: str):
        return _json(await threaded(service.item, _item_id(item_id)))

    @app.get("/items/{item_id}/image", summary="an item's thumbnail (PNG)",
             responses={200: {"content": {"image/png": {}}}})
    async def get_item_image(item_id: str, size: str = str(THUMB_DEFAULT)):
        size_px = _int_param("size", size, THUMB_MIN, THUMB_MAX)
        png = await threaded(service.thumbnail, _item_id(item_id), size_px)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.post("/search", summary="k nearest items of an image, a code or an item",
              openapi_extra=_SEARCH_BODY)
    async def search(request: Request):
        t0 = time.perf_counter()
        opts = dict(request.query_params)
        unknown = set(opts) - {"k", "radius", "label"}
        if unknown:
            raise ApiError(400, f"unknown query parameter(s) {sorted(unknown)}; "
                                f"use k, radius, label")
        mtype = _media_type(request)
        upload = None
        query_bits = query_id = None
        if mtype == "multipart/form-data":
            form = await read_form(request, max_files=1)
            files = [(key, v) for key, v in form.multi_items() if not isinstance(v, str)]
            fields = {key: v for key, v in form.multi_items() if isinstance(v, str)}
            if not files:
                raise ApiError(400, "the multipart body has no image file (field 'image')")
            bad = set(fields) - {"k", "radius", "label"}
            if bad:
                raise ApiError(400, f"unknown form field(s) {sorted(bad)}; use image, k, "
                                    f"radius, label")
            opts.update(fields)
            f = files[0][1]
            upload = (_safe_name(f.filename), await f.read())
        elif mtype.startswith("image/") or mtype == "application/octet-stream":
            upload = ("upload", await read_body(request))
        else:
            body = await read_body(request)
            if not body.strip():
                raise ApiError(400, "empty request body: send an image (multipart field "
                                    "'image') or JSON {\"code\": \"0101...\"} or {\"id\": N}")
            if mtype not in ("application/json", ""):
                raise ApiError(415, f"unsupported Content-Type {mtype!r}: use "
                                    f"multipart/form-data, image/* or application/json")
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(400, f"invalid JSON body: {e}") from None
            if not isinstance(payload, dict):
                raise ApiError(400, "the JSON body must be an object like {\"id\": 3} or "
                                    "{\"code\": \"0101...\"}")
            bad = set(payload) - SEARCH_KEYS
            if bad:
                raise ApiError(400, f"unknown key(s) {sorted(bad)} in the JSON body; use "
                                    f"{', '.join(sorted(SEARCH_KEYS))}")
            if ("code" in payload) == ("id" in payload):
                raise ApiError(400, "give exactly one query: {\"code\": \"0101...\"} or "
                                    "{\"id\": N} (or upload an image)")
            for key in ("k", "radius", "label"):
                if key in payload and payload[key] is not None:
                    opts[key] = payload[key]
            if "id" in payload:
                query_id = _item_id(payload["id"])
            else:
                query_bits = parse_code(payload["code"], service.index.bits)
        bits = service.index.bits
        k_given = opts.get("k") not in (None, "")
        k = _int_param("k", opts["k"], 1, limits.max_k) if k_given else None
        radius = None
        if opts.get("radius") not in (None, ""):
            radius = _int_param("radius", opts["radius"], 0, bits)
        label = _parse_label(opts.get("label"))
        if k is None:
            k = limits.max_k if radius is not None else 10
        encode_ms = None
        if upload is not None:
            t_enc = time.perf_counter()
            codes, _ = await service.run_encode([upload])
            encode_ms = (time.perf_counter() - t_enc) * 1000
            query_bits = (codes > 0).astype(np.uint8)
        out = await threaded(service.search, query_bits, query_id, k, radius, label)
        if upload is not None:
            out["query"].update({"type": "image" if query_id is None else "id",
                                 "name": upload[0]})
        elif query_id is None:
            out["query"]["type"] = "code"
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        if encode_ms is not None:
            out["encode_ms"] = round(encode_ms, 3)
        return _json(out)

    # -- write endpoints -----------------------------------------------------------------------
    @app.post("/items", status_code=201, summary="add images (needs the token)",
              openapi_extra=_ADD_BODY)
    async def add_items(request: Request):
        service.authorize(request.headers.get("authorization"))
        mtype = _media_type(request)
        labels_raw = request.query_params.getlist("label")
        if mtype == "multipart/form-data":
            form = await read_form(request, max_files=limits.max_files)
            uploads = []
            for key, v in form.multi_items():
                if isinstance(v, str):
                    if key == "label":
                        labels_raw.append(v)
                    else:
                        raise ApiError(400, f"unknown form field {key!r}; use image, label")
                else:
                    uploads.append((_safe_name(v.filename, f"upload-{len(uploads)}"),
                                    await v.read()))
        elif mtype.startswith("image/") or mtype == "application/octet-stream":
            body = await read_body(request)
            uploads = [("upload", body)]
        else:
            body = await read_body(request)
            if not body.strip():
                raise ApiError(400, "empty request body: send images as multipart field 'image'")
            raise ApiError(415, f"unsupported Content-Type {mtype!r}: send images as "
                                f"multipart/form-data (field 'image') or an image/* body")
        if not uploads:
            raise ApiError(400, "no image in the request (multipart field 'image')")
        if len(uploads) > limits.max_files:
            raise ApiError(413, f"{len(uploads)} images, over the limit of {limits.max_files} "
                                f"per request")
        labels = None
        if labels_raw:
            parsed = [_parse_label(v) for v in labels_raw]
            if len(parsed) == 1:
                parsed = parsed * len(uploads)
            if len(parsed) != len(uploads):
                raise ApiError(400, f"{len(labels_raw)} labels for {len(uploads)} images: give "
                                    f"one label per image or one for all")
            labels = parsed
        codes, images = await service.run_encode(uploads)
        # the write is not abandoned on timeout: it either completes (and is saved) or not
        items, count = await anyio.to_thread.run_sync(
            partial(service.add, codes, images, [n for n, _ in uploads], labels))
        return _json({"added": items, "count": count}, 201)

    @app.delete("/items/{item_id}", summary="remove an item (needs the token)")
    async def delete_item(item_id: str, request: Request):
        service.authorize(request.headers.get("authorization"))
        iid = _item_id(item_id)
        count = await anyio.to_thread.run_sync(partial(service.remove, iid))
        return _json({"removed": iid, "count": count})

    return app


def app_from_env():
    """App factory for ``uvicorn --factory`` worker processes (``ssah serve --workers N``):
    the settings come as JSON in ``SSAH_SERVE_SETTINGS``."""
    settings = json.loads(os.environ["SSAH_SERVE_SETTINGS"])
    token = None
    if settings.get("token_file"):
        from .cli import read_token
        token = read_token(settings["token_file"])
    return create_app(settings["checkpoint"], settings["index"], token=token,
                      limits=Limits(**settings["limits"]), device=settings.get("device", "auto"),
                      data_path=settings.get("data_path"), engine=settings.get("engine"))
