"""``HammingIndex``: ids, metadata, validation and persistence around a pluggable search engine."""
from __future__ import annotations

import importlib
import inspect
from numbers import Integral
from pathlib import Path

import numpy as np

from ..errors import IndexFileError, SSAHError
from . import storage
from .base import Engine, code_bytes, mask_padding
from .packing import to_bits

#: engine name -> "module:Class" (imported on first use, so optional extras stay optional)
ENGINES = {
    "flat": "ssah.index.flat:FlatEngine",
    "ivf": "ssah.index.ivf:IVFEngine",
    "mih": "ssah.index.mih:MIHEngine",
    "milvus": "ssah.index.milvus:MilvusEngine",
}


def register_engine(name: str, target) -> None:
    """Make an engine available by name; ``target`` is an Engine subclass or "module:Class"."""
    ENGINES[name] = target


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise SSAHError(f"unknown index engine {name!r}; choose from {', '.join(sorted(ENGINES))}")
    target = ENGINES[name]
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    return target


def _check_bits(bits) -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, Integral) or int(bits) < 1:
        raise SSAHError(f"bits must be a positive integer, got {bits!r}")
    return int(bits)


def _check_k(k) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, Integral):
        raise SSAHError(f"k must be a positive integer, got {k!r}")
    if int(k) <= 0:
        raise SSAHError(f"k must be a positive integer, got {k}")
    return int(k)


def _check_radius(radius) -> int:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, Integral):
        if isinstance(radius, float) and np.isfinite(radius) and radius == int(radius):
            radius = int(radius)
        else:
            raise SSAHError(f"radius must be a non-negative integer, got {radius!r}")
    if int(radius) < 0:
        raise SSAHError(f"radius must be >= 0, got {radius}")
    return int(radius)


def _default_fill(arr: np.ndarray):
    if arr.dtype.kind in "iu":
        return -1 if arr.dtype.kind == "i" else 0
    if arr.dtype.kind == "f":
        return np.nan
    if arr.dtype.kind == "b":
        return False
    if arr.dtype.kind in "TUSO":
        return ""
    return 0


def _string_array(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=np.dtypes.StringDType())


def normalize_metadata(metadata, n: int) -> dict[str, np.ndarray]:
    """Dict-like of per-item columns -> {name: array of length n} (strings as StringDType)."""
    if metadata is None:
        return {}
    if not hasattr(metadata, "keys"):
        raise SSAHError("metadata must be a dict-like of per-item columns, e.g. "
                        "{'label': [...], 'path': [...]}")
    out = {}
    for name in metadata.keys():
        if not isinstance(name, str) or not name:
            raise SSAHError(f"metadata column names must be non-empty strings, got {name!r}")
        raw = metadata[name]
        arr = np.asarray(raw)
        if arr.dtype.kind in "USOT":
            if arr.ndim != 1:
                raise SSAHError(f"metadata column {name!r}: string columns must be 1-D")
            arr = _string_array(arr.tolist())
        elif arr.dtype.kind not in "biuf":
            raise SSAHError(f"metadata column {name!r}: unsupported type {arr.dtype}")
        if arr.ndim == 0 or arr.ndim > 2:
            raise SSAHError(f"metadata column {name!r} must be 1-D or 2-D (multi-hot), "
                            f"got shape {arr.shape}")
        if len(arr) != n:
            raise SSAHError(f"metadata column {name!r} has {len(arr)} values for {n} codes")
        out[name] = arr
    return out


class IdList:
    """Increasing int64 ids; held as (start, count) while they are consecutive, so the common
    case (ids 0..n-1) costs no memory, and as an array otherwise."""

    def __init__(self, start: int = 0, count: int = 0, array=None):
        self._array = None if array is None else np.asarray(array, dtype=np.int64)
        self._start, self._count = int(start), int(count)
        if self._array is not None:
            self._compact()

    def _compact(self):
        a = self._array
        if len(a) == 0 or (a[-1] - a[0] == len(a) - 1):
            self._start = int(a[0]) if len(a) else 0
            self._count = len(a)
            self._array = None

    def __len__(self):
        return self._count if self._array is None else len(self._array)

    @property
    def is_range(self) -> bool:
        return self._array is None

    @property
    def start(self) -> int:
        return self._start

    def array(self) -> np.ndarray:
        if self._array is None:
            return np.arange(self._start, self._start + self._count, dtype=np.int64)
        return self._array

    def last(self) -> int:
        return int(self._start + self._count - 1 if self._array is None else self._array[-1])

    def first(self) -> int:
        return int(self._start if self._array is None else self._array[0])

    def take(self, pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos, dtype=np.int64)
        if self._array is None:
            return self._start + pos
        return self._array[pos]

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ids, -1 where absent."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(self)
        if self._array is None:
            pos = ids - self._start
            return np.where((pos >= 0) & (pos < n), pos, -1)
        pos = np.searchsorted(self._array, ids)
        ok = pos < n
        ok[ok] = self._array[pos[ok]] == ids[ok]
        return np.where(ok, pos, -1)

    def append(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if self._array is None:
            if self._count == 0 and ids[-1] - ids[0] == len(ids) - 1:
                self._start, self._count = int(ids[0]), len(ids)
                return
            if ids[0] == self._start + self._count and ids[-1] - ids[0] == len(ids) - 1:
                self._count += len(ids)
                return
        self._array = np.concatenate([self.array(), ids])

    def keep(self, mask: np.ndarray) -> None:
        self._array = self.array()[mask]
        self._compact()

    def nbytes(self) -> int:
        return 0 if self._array is None else int(self._array.nbytes)


class HammingIndex:
    """A Hamming-space index of binary codes with int64 ids and per-item metadata.

    ``engine`` is "flat" (FAISS exhaustive, default), "ivf" (FAISS inverted lists,
    approximate), "mih" (exact multi-index hashing over distinct codes) or "milvus"
    (pymilvus; local milvus-lite file or a remote server).  Search results are sorted by
    (distance, id); exact engines return exactly the brute-force answer, ties included.

    Items are kept in increasing id order; adding ids below the current largest one re-sorts
    the index (O(n)).  ``remove`` raises for unknown ids unless ``missing="ignore"``.
    """

    def __init__(self, bits: int, engine: str = "flat", **engine_options):
        self.bits = _check_bits(bits)
        self.engine = engine
        self.engine_options = dict(engine_options)
        cls = engine_class(engine)
        accepted = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(engine_options) - set(accepted))
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
            options = [p for p in accepted if p not in ("self", "bits")]
            raise SSAHError(f"engine {engine!r} has no option(s) {unknown}; its options: "
                            f"{', '.join(options) or 'none'}")
        self._engine = cls(self.bits, **engine_options)
        self._ids = IdList()
        self._meta: dict[str, np.ndarray] = {}
        self._codes_cache = None

    # -- basics --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_) -> bool:
        return bool(self._ids.find(np.array([id_]))[0] >= 0)

    def __repr__(self):
        return f"HammingIndex(bits={self.bits}, engine={self.engine!r}, count={len(self)})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def ids(self) -> np.ndarray:
        """All ids, increasing (a copy)."""
        return self._ids.array().copy()

    @property
    def metadata_columns(self) -> list[str]:
        return list(self._meta)

    @property
    def exact(self) -> bool:
        return bool(self._engine.exact)

    def close(self) -> None:
        self._engine.close()

    # -- validation ----------------------------------------------------------------------------
    def _bits_input(self, codes, what="codes") -> np.ndarray:
        a = np.asarray(codes)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise SSAHError(f"{what} must be a 2-D (n, {self.bits}) array, got shape {a.shape}")
        if a.shape[1] != self.bits:
            raise SSAHError(f"{what} have {a.shape[1]} bits per code, this index holds "
                            f"{self.bits}-bit codes")
        if a.dtype.kind not in "biuf":
            raise SSAHError(f"{what} must be numeric or bool, got dtype {a.dtype}")
        return np.packbits(to_bits(a), axis=1)

    def _packed_input(self, packed, what="packed codes") -> np.ndarray:
        a = np.asarray(packed)
        if a.ndim == 1:
            a = a[None, :]
        nb = code_bytes(self.bits)
        if a.ndim != 2 or a.shape[1] != nb:
            raise SSAHError(f"{what} of shape {a.shape} do not hold {self.bits}-bit codes "
                            f"(expected (n, {nb}) uint8)")
        if a.dtype != np.uint8:
            if a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() > 255)):
                raise SSAHError(f"{what} must be uint8 bytes, got dtype {a.dtype}")
        return mask_padding(np.array(a, dtype=np.uint8, copy=True, order="C"), self.bits)

    def _queries(self, queries, packed: bool) -> np.ndarray:
        return self._packed_input(queries, "packed queries") if packed \
            else self._bits_input(queries, "queries")

    def _ids_input(self, ids, n: int) -> np.ndarray:
        if ids is None:
            start = self._ids.last() + 1 if len(self._ids) else 0
            return np.arange(start, start + n, dtype=np.int64)
        a = np.asarray(ids)
        if a.ndim != 1 or len(a) != n:
            raise SSAHError(f"ids must be a 1-D array of {n} integers, got shape {a.shape}")
        if n and a.dtype.kind not in "iu":
            if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
                a = a.astype(np.int64)
            else:
                raise SSAHError(f"ids must be integers, got dtype {a.dtype}")
        if a.dtype.kind == "u" and n and a.max() > np.iinfo(np.int64).max:
            raise SSAHError("ids must fit in int64")
        a = a.astype(np.int64)
        if n and a.min() < 0:
            raise SSAHError(f"ids must be >= 0 (-1 marks an empty result), got {a.min()}")
        increasing = n < 2 or bool((a[1:] > a[:-1]).all())
        uniq = a if increasing else np.unique(a)
        if len(uniq) != n:
            s = np.sort(a)
            dup = s[1:][s[1:] == s[:-1]]
            raise SSAHError(f"duplicate ids in the batch: {dup[:5].tolist()}")
        if len(self._ids):
            clash = uniq[self._ids.find(uniq) >= 0]
            if len(clash):
                raise SSAHError(f"ids already in the index: {clash[:5].tolist()}"
                                + (f" and {len(clash) - 5} more" if len(clash) > 5 else ""))
        return a

    def positions_of(self, ids, missing: str = "error") -> np.ndarray:
        """Positions of ids (-1 for unknown ids when ``missing="ignore"``)."""
        a = np.atleast_1d(np.asarray(ids))
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise SSAHError(f"ids must be a 1-D list of integers, got {a.dtype} {a.shape}")
        a = a.astype(np.int64)
        pos = self._ids.find(a)
        ok = pos >= 0
        if not ok.all():
            if missing == "error":
                bad = a[~ok]
                raise SSAHError(f"unknown ids: {bad[:5].tolist()}"
                                + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
            pos = np.where(ok, pos, -1)
        return pos.astype(np.int64)

    # -- updates -------------------------------------------------------------------------------
    def add(self, codes, ids=None, metadata=None) -> np.ndarray:
        """Add (n, bits) codes in {-1, +1}, {0, 1} or bool; returns the ids given to them."""
        return self._add(self._bits_input(codes), ids, metadata)

    def add_packed(self, packed, ids=None, metadata=None) -> np.ndarray:
        """Add packed codes (n, ceil(bits / 8)) uint8 as :func:`pack_codes` writes them.

        Bits past ``bits`` in the last byte are ignored.
        """
        return self._add(self._packed_input(packed), ids, metadata)

    def _add(self, packed: np.ndarray, ids, metadata) -> np.ndarray:
        n = len(packed)
        ids = self._ids_input(ids, n)
        meta = normalize_metadata(metadata, n)
        if n == 0:
            return ids
        for name, col in meta.items():
            if name in self._meta:
                old = self._meta[name]
                if old.shape[1:] != col.shape[1:]:
                    raise SSAHError(f"metadata column {name!r}: shape {col.shape[1:]} per item "
                                    f"does not match the index's {old.shape[1:]}")
                if (old.dtype.kind == "T") != (col.dtype.kind == "T"):
                    raise SSAHError(f"metadata column {name!r}: strings and numbers mixed")
        self._codes_cache = None
        given = ids
        if n > 1 and not bool((ids[1:] > ids[:-1]).all()):
            order = np.argsort(ids, kind="stable")
            ids, packed = ids[order], packed[order]
            meta = {k: v[order] for k, v in meta.items()}
        # complete the columns on both sides
        old_n = len(self._ids)
        new_meta = {}
        for name in set(self._meta) | set(meta):
            ref = meta.get(name, self._meta.get(name))
            old = self._meta.get(name)
            if old is None:
                old = np.full((old_n,) + ref.shape[1:], _default_fill(ref), dtype=ref.dtype)
            new = meta.get(name)
            if new is None:
                new = np.full((n,) + ref.shape[1:], _default_fill(ref), dtype=ref.dtype)
            dtype = np.result_type(old.dtype, new.dtype) if old.dtype.kind != "T" else old.dtype
            new_meta[name] = (old.astype(dtype, copy=False), new.astype(dtype, copy=False))
        wants = getattr(self._engine, "wants_ids", False)
        if old_n == 0 or ids[0] > self._ids.last():
            self._engine.add(packed, ids=ids if wants else None,
                             metadata={k: b for k, (a, b) in new_meta.items()})
            self._ids.append(ids)
            self._meta = {k: np.concatenate([a, b]) for k, (a, b) in new_meta.items()}
        else:
            # ids interleave with existing ones: re-sort every row by id
            all_ids = np.concatenate([self._ids.array(), ids])
            order = np.argsort(all_ids, kind="stable")
            all_codes = np.concatenate([self._engine.codes(), packed])[order]
            self._ids = IdList(array=all_ids[order])
            self._meta = {k: np.concatenate([a, b])[order] for k, (a, b) in new_meta.items()}
            self._engine.reset(all_codes, ids=self._ids.array() if wants else None,
                               metadata=self._meta)
        return given

    def remove(self, ids, missing: str = "error") -> int:
        """Remove items by id; returns how many were removed.

        ``missing="error"`` (default) raises for ids not in the index and removes nothing;
        ``missing="ignore"`` skips them.
        """
        if missing not in ("error", "ignore"):
            raise SSAHError(f"missing must be 'error' or 'ignore', got {missing!r}")
        pos = self.positions_of(ids, missing=missing)
        pos = np.unique(pos[pos >= 0])
        if not len(pos):
            return 0
        self._codes_cache = None
        self._engine.remove(pos, ids=self._ids.take(pos))
        keep = np.ones(len(self._ids), dtype=bool)
        keep[pos] = False
        self._ids.keep(keep)
        self._meta = {k: v[keep] for k, v in self._meta.items()}
        return int(len(pos))

    # -- lookups -------------------------------------------------------------------------------
    def metadata_of(self, ids) -> dict[str, np.ndarray]:
        """Metadata columns for these ids, in the order given (unknown ids raise)."""
        pos = self.positions_of(ids)
        return {k: v[pos] for k, v in self._meta.items()}

    def codes_of(self, ids, packed: bool = False) -> np.ndarray:
        """Stored codes for these ids: 0/1 bits (n, bits), or packed bytes."""
        pos = self.positions_of(ids)
        codes = self._packed_codes()[pos]
        return codes if packed else np.unpackbits(codes, axis=1, count=self.bits)

    def _packed_codes(self) -> np.ndarray:
        if self._codes_cache is None:
            self._codes_cache = self._engine.codes()
        return self._codes_cache

    # -- search --------------------------------------------------------------------------------
    def _to_ids(self, dist, pos):
        ids = np.where(pos >= 0, self._ids.take(np.maximum(pos, 0)) if len(self._ids) else -1,
                       -1)
        return dist.astype(np.int32, copy=False), ids.astype(np.int64, copy=False)

    def _filter_mask(self, filter) -> np.ndarray:
        mask = np.ones(len(self._ids), dtype=bool)
        for name, want in filter.items():
            if name == "id":
                col = self._ids.array()
            elif name in self._meta:
                col = self._meta[name]
            else:
                raise SSAHError(f"filter on unknown metadata column {name!r}; the index has "
                                f"{sorted(self._meta) or 'no columns'}")
            values = np.atleast_1d(np.asarray(want))
            if col.ndim == 2:
                # multi-hot: keep items having any of the given classes
                if values.dtype.kind not in "iu" or (len(values) and (
                        values.min() < 0 or values.max() >= col.shape[1])):
                    raise SSAHError(f"filter {name!r} on a multi-hot column takes class "
                                    f"indices in [0, {col.shape[1]})")
                mask &= (col[:, values] != 0).any(axis=1)
            else:
                if col.dtype.kind == "T":
                    values = _string_array(values.tolist())
                mask &= np.isin(col, values)
        return mask

    def _filtered(self, q_packed, filter):
        from . import _kernels as K
        from .base import to_words
        mask = self._filter_mask(filter)
        sub = np.flatnonzero(mask)
        words = to_words(self._packed_codes()[sub])
        return K, sub, words, to_words(q_packed)

    def search(self, queries, k: int, *, packed: bool = False, filter=None):
        """k nearest items per query: ``(distances, ids)``, each (m, k) int.

        Rows are sorted by (distance, id); rows with fewer than k items are padded with
        distance -1 and id -1.  ``filter``: a dict ``{column: value or list}`` keeps items
        whose metadata matches (any listed class for a multi-hot column); the milvus engine
        also takes a Milvus expression string such as ``"label == 3"``.
        """
        k = _check_k(k)
        q = self._queries(queries, packed)
        if filter is not None and not isinstance(filter, dict):
            if self.engine != "milvus" or not isinstance(filter, str):
                raise SSAHError("filter must be a dict like {'label': 3}"
                                + ("" if self.engine == "milvus"
                                   else "; expression strings need the milvus engine"))
        if filter is not None and (isinstance(filter, str) or self.engine == "milvus"):
            dist, pos = self._engine.search(q, k, filter=filter)
            return self._to_ids(dist, pos)
        if filter is not None:
            K, sub, words, qw = self._filtered(q, filter)
            if len(sub) == 0:
                return (np.full((len(q), k), -1, np.int32), np.full((len(q), k), -1, np.int64))
            with K.KERNEL_LOCK:
                dist, spos = K.knn_scan(words, qw, k, self.bits)
            pos = np.where(spos >= 0, sub[np.maximum(spos, 0)], -1)
            return self._to_ids(dist, pos)
        dist, pos = self._engine.search(q, k)
        return self._to_ids(dist, pos)

    def range_search(self, queries, radius: int, *, packed: bool = False, filter=None):
        """Every item within Hamming distance ``radius`` (inclusive) of each query.

        Returns a list with one ``(distances, ids)`` pair per query, sorted by (distance, id).
        """
        radius = _check_radius(radius)
        q = self._queries(queries, packed)
        if filter is not None and not isinstance(filter, dict):
            if self.engine != "milvus" or not isinstance(filter, str):
                raise SSAHError("filter must be a dict like {'label': 3}")
        if filter is not None and (isinstance(filter, str) or self.engine == "milvus"):
            res = self._engine.range_search(q, radius, filter=filter)
        elif filter is not None:
            K, sub, words, qw = self._filtered(q, filter)
            res = []
            for i in range(len(q)):
                if len(sub) == 0:
                    res.append((np.zeros(0, np.int32), np.zeros(0, np.int64)))
                    continue
                d, sp = K.range_scan(words, qw[i], radius)
                res.append((d, sub[sp]))
        else:
            res = self._engine.range_search(q, radius)
        return [self._to_ids(d, p) for d, p in res]

    def search_ids(self, ids, k: int, **kwargs):
        """Search with the stored codes of these items as queries."""
        return self.search(self.codes_of(ids, packed=True), k, packed=True, **kwargs)

    # -- facts ---------------------------------------------------------------------------------
    def memory_bytes(self) -> dict:
        meta = 0
        for v in self._meta.values():
            if v.dtype.kind == "T":
                meta += sum(16 + (len(s) if len(s) > 15 else 0) for s in v.tolist())
            else:
                meta += v.nbytes
        engine = self._engine.memory_bytes()
        ids = self._ids.nbytes()
        return {"engine": int(engine), "ids": ids, "metadata": int(meta),
                "total": int(engine + ids + meta)}

    def stats(self) -> dict:
        mem = self.memory_bytes()
        n = len(self)
        return {
            "bits": self.bits,
            "engine": self.engine,
            "engine_options": self._engine.options(),
            "exact": self.exact,
            "count": n,
            "id_range": [self._ids.first(), self._ids.last()] if n else None,
            "metadata_columns": {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])}
                                 for k, v in self._meta.items()},
            "memory_bytes": mem,
            "bytes_per_item": (mem["engine"] + mem["ids"]) / n if n else None,
            "engine_stats": self._engine.stats(),
        }

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the index to ``path`` (a folder, holding ``index.ssah``, or a ``.ssah`` file).

        The write is atomic: a temporary file in the same folder renamed over the old one.
        """
        codes = self._packed_codes()
        arrays = {"codes": codes}
        if not self._ids.is_range:
            arrays["ids"] = self._ids.array()
        columns = []
        for name, col in self._meta.items():
            if col.dtype.kind == "T":
                data, ends = storage.encode_strings(col.tolist())
                arrays[f"meta/{name}/data"] = data
                arrays[f"meta/{name}/ends"] = ends
                columns.append({"name": name, "kind": "str"})
            else:
                arrays[f"meta/{name}"] = col
                columns.append({"name": name, "kind": "array"})
        header = {"bits": self.bits, "engine": self.engine, "count": int(len(self)),
                  "id_start": self._ids.start if self._ids.is_range else None,
                  "engine_options": self._engine.options(), "columns": columns}
        extra = getattr(self._engine, "save_extra", None)
        if extra is not None:
            header["engine_state"] = extra(Path(path))
        return storage.write_index_file(path, header, arrays)

    @classmethod
    def load(cls, path, bits: int | None = None, engine: str | None = None,
             **engine_options) -> "HammingIndex":
        """Read an index saved by :meth:`save`.

        ``bits``: the width the caller expects (a mismatch is an IndexFileError);
        ``engine`` / ``engine_options``: search with another engine than the saved one.
        """
        header, arrays, target = storage.read_index_file(path)
        try:
            saved_bits = int(header["bits"])
            count = int(header["count"])
            codes = arrays["codes"]
            if "ids" in arrays:
                ids = arrays["ids"]
            else:
                start = int(header["id_start"])
                ids = np.arange(start, start + count, dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFileError(f"{target}: corrupt index header (missing {e})") from None
        if bits is not None and int(bits) != saved_bits:
            raise IndexFileError(f"{target}: holds {saved_bits}-bit codes, expected {bits} bits")
        if codes.shape != (count, code_bytes(saved_bits)) or ids.shape != (count,):
            raise IndexFileError(f"{target}: corrupt index (codes {codes.shape} / ids "
                                 f"{ids.shape} do not match {count} {saved_bits}-bit codes)")
        if count > 1 and not (np.diff(ids) > 0).all():
            raise IndexFileError(f"{target}: corrupt index (ids not increasing)")
        saved_engine = header.get("engine", "flat")
        if engine is None or engine == saved_engine:
            engine = saved_engine
            options = dict(header.get("engine_options") or {})
            from_state = getattr(engine_class(engine), "options_from_state", None)
            if from_state is not None:
                options.update(from_state(header.get("engine_state"), Path(path)))
            options.update(engine_options)
        else:
            options = dict(engine_options)
        meta = {}
        for col in header.get("columns", []):
            name = col["name"]
            if col["kind"] == "str":
                meta[name] = _string_array(storage.decode_strings(
                    arrays[f"meta/{name}/data"], arrays[f"meta/{name}/ends"]))
            else:
                meta[name] = np.array(arrays[f"meta/{name}"])
            if len(meta[name]) != count:
                raise IndexFileError(f"{target}: corrupt index (column {name!r} length)")
        index = cls(saved_bits, engine=engine, **options)
        index._ids = IdList(array=np.array(ids, dtype=np.int64))
        index._meta = meta
        restore = getattr(index._engine, "restore", None)
        packed = np.array(codes, dtype=np.uint8)
        if restore is not None:
            restore(packed, ids=index._ids.array(), metadata=meta)
        elif count:
            index._engine.add(packed, ids=index._ids.array() if getattr(
                index._engine, "wants_ids", False) else None, metadata=meta)
        return index
