"""The engine interface, code layouts shared by the engines, and an exact numpy reference.

Engines index *positions*: item ``i`` is the ``i``-th row of the codes handed to them.  The
:class:`~ssah.index.hamming.HammingIndex` keeps its ids increasing with position, so an engine
that orders results by (distance, position) orders them by (distance, id) too.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..errors import SSAHError


def code_bytes(bits: int) -> int:
    """Bytes of one packed code: ``ceil(bits / 8)``."""
    return (bits + 7) // 8


def mask_padding(packed: np.ndarray, bits: int) -> np.ndarray:
    """Zero the bits past ``bits`` in the last byte (in place) and return the array."""
    rem = bits % 8
    if rem and packed.size:
        packed[:, -1] &= np.uint8((0xFF << (8 - rem)) & 0xFF)
    return packed


def pad_bytes(packed: np.ndarray, width: int) -> np.ndarray:
    """Packed (n, b) uint8 -> (n, width) with zero bytes appended (a copy unless b == width)."""
    n, b = packed.shape
    if b == width:
        return np.ascontiguousarray(packed)
    out = np.zeros((n, width), dtype=np.uint8)
    out[:, :b] = packed
    return out


def to_words(packed: np.ndarray) -> np.ndarray:
    """Packed (n, b) uint8 -> (n, ceil(b / 8)) native uint64 words, big-endian bit order."""
    n, b = packed.shape
    W = max(1, (b + 7) // 8)
    padded = pad_bytes(packed, W * 8)
    return padded.view(">u8").astype(np.uint64).reshape(n, W)


def from_words(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`to_words`: (n, W) uint64 -> packed (n, ceil(bits / 8)) uint8."""
    n, W = words.shape
    raw = np.ascontiguousarray(words.astype(">u8")).view(np.uint8).reshape(n, W * 8)
    return np.ascontiguousarray(raw[:, :code_bytes(bits)])


def hamming_matrix(q_packed: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """Exact distances (m, n) between packed codes with numpy (memory m * n * 4 bytes)."""
    qw = to_words(q_packed)
    dw = to_words(db_packed)
    out = np.zeros((len(qw), len(dw)), dtype=np.int32)
    for w in range(qw.shape[1]):
        out += np.bitwise_count(qw[:, w, None] ^ dw[None, :, w]).astype(np.int32)
    return out


def sort_by_distance(dist: np.ndarray, pos: np.ndarray):
    """Sort one result list by (distance, position)."""
    order = np.lexsort((pos, dist))
    return dist[order].astype(np.int32), pos[order].astype(np.int64)


def brute_force_knn(q_packed: np.ndarray, db_packed: np.ndarray, k: int, block: int = 65536):
    """Exact k-NN sorted by (distance, position), -1 padded; the reference the engines match."""
    m = len(q_packed)
    out_d = np.full((m, k), -1, dtype=np.int32)
    out_p = np.full((m, k), -1, dtype=np.int64)
    n = len(db_packed)
    if n == 0 or m == 0:
        return out_d, out_p
    rows = max(1, block * 64 // max(n, 1))
    for a in range(0, m, rows):
        dist = hamming_matrix(q_packed[a:a + rows], db_packed)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        kk = order.shape[1]
        out_p[a:a + rows, :kk] = order
        out_d[a:a + rows, :kk] = np.take_along_axis(dist, order, axis=1)
    return out_d, out_p


def brute_force_range(q_packed: np.ndarray, db_packed: np.ndarray, radius: int):
    """Exact range search: per query (distances, positions) sorted by (distance, position)."""
    out = []
    for a in range(0, len(q_packed), 64):
        dist = hamming_matrix(q_packed[a:a + 64], db_packed)
        for row in dist:
            pos = np.flatnonzero(row <= radius)
            out.append(sort_by_distance(row[pos], pos))
    return out


class Engine(ABC):
    """A search structure over packed codes.

    ``add``/``reset`` also receive the items' metadata columns, and their ids when the
    engine sets ``wants_ids``; engines that keep their own copy (milvus) use them.
    Positions are row numbers in insertion order; ``remove`` compacts them (the survivors keep
    their relative order).  ``search`` returns ``(distances, positions)`` of shape (m, k),
    each row sorted by (distance, position) and padded with -1; ``range_search`` returns one
    ``(distances, positions)`` pair per query, sorted the same way.
    """

    name = "engine"
    exact = True
    wants_ids = False      # True: add/remove/reset receive the items' ids

    def __init__(self, bits: int, **options):
        if options:
            raise SSAHError(f"engine {self.name!r} has no option(s) {sorted(options)}")
        self.bits = int(bits)
        self.nbytes_code = code_bytes(self.bits)

    @abstractmethod
    def add(self, packed: np.ndarray, ids=None, metadata=None) -> None:
        """Append codes, packed (n, ceil(bits / 8)) uint8 with zero padding bits."""

    @abstractmethod
    def remove(self, positions: np.ndarray, ids=None) -> None:
        """Remove the items at these sorted, unique positions."""

    @abstractmethod
    def codes(self) -> np.ndarray:
        """All codes in position order, packed (n, ceil(bits / 8)) uint8."""

    @abstractmethod
    def search(self, q_packed: np.ndarray, k: int, **kwargs):
        """k nearest per query: (distances int32 (m, k), positions int64 (m, k))."""

    @abstractmethod
    def range_search(self, q_packed: np.ndarray, radius: int, **kwargs):
        """Per query: (distances, positions) of all items within ``radius``."""

    @abstractmethod
    def __len__(self) -> int:
        ...

    def reset(self, packed: np.ndarray, ids=None, metadata=None) -> None:
        """Replace every item (used when ids arrive out of order and rows are re-sorted)."""
        self.remove(np.arange(len(self), dtype=np.int64))
        if len(packed):
            self.add(packed, ids=ids, metadata=metadata)

    def memory_bytes(self) -> int:
        """Bytes held by the engine's structures (codes included)."""
        return 0

    def options(self) -> dict:
        """Options to recreate this engine (stored in saved index headers)."""
        return {}

    def stats(self) -> dict:
        """Engine-specific facts for ``ssah index stats``."""
        return {}

    def close(self) -> None:
        """Release external resources (connections, processes)."""



class ArrayStore:
    """A growable (n, width) uint8 array of packed codes with amortised appends."""

    def __init__(self, width: int):
        self.width = width
        self._buf = np.zeros((0, width), dtype=np.uint8)
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self._buf):
            cap = max(need, int(len(self._buf) * 1.5), 1024)
            buf = np.zeros((cap, self.width), dtype=np.uint8)
            buf[:self.n] = self._buf[:self.n]
            self._buf = buf
        self._buf[self.n:need] = rows
        self.n = need

    def remove(self, positions: np.ndarray) -> None:
        keep = np.ones(self.n, dtype=bool)
        keep[positions] = False
        kept = self._buf[:self.n][keep]
        self._buf = np.ascontiguousarray(kept)
        self.n = len(kept)

    def replace(self, rows: np.ndarray) -> None:
        self._buf = np.ascontiguousarray(rows, dtype=np.uint8).copy()
        self.n = len(rows)

    @property
    def array(self) -> np.ndarray:
        return self._buf[:self.n]

    def nbytes(self) -> int:
        return int(self._buf.nbytes)
