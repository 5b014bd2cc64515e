"""``mih``: exact sub-linear search by multi-index hashing over the table of distinct codes.

Learned hash codes repeat heavily, so the engine first groups the items by code: ``u``
distinct codes, each with its items (positions, increasing).  Every distinct code is split
into ``m`` disjoint substrings and indexed in ``m`` hash tables (Norouzi, Punjani and Fleet,
"Fast search in Hamming space with multi-index hashing", CVPR 2012).  A code within distance
``r`` of the query has at least one substring within ``floor(r / m)`` of the query's, so
probing every table at growing substring radius ``s`` finds, after table ``j`` at radius
``s``, every code within ``m * s + j``.  A query stops as soon as the k-th nearest *item*
(codes weighted by their item counts) lies within that certain radius; then every item that
could belong to the answer has been seen, ties at the k-th distance included, and the answer
is exactly the brute-force one sorted by (distance, id).  When probing would cost more than
scanning the distinct codes, the engine scans them instead (still exact).

Memory: the tables cost one 4-byte entry per distinct code in each of ``m - 1`` tables, on
top of the distinct codes, their groups and the substring directories.  Codes that barely
repeat (uniform random ones) make that two to three times the codes themselves, so the
engine keeps a budget, ``memory_budget`` bytes per item (default ``bits / 8 + 8``, what a
flat index with int64 ids holds).  At build time it takes the largest ``m`` whose structures
fit; when none does, it holds the codes in a flat FAISS scan instead (``mode`` "scan" in
:meth:`MIHEngine.stats`): still exact, and as fast as ``flat``.  That trades speed for
memory: on uniform 32- and 48-bit codes the tables search many times faster than a scan
(results/search/README.md, row ``mih-tables``).  ``memory_budget=None`` lifts the bound.

The tables are rebuilt lazily on the first search after ``add``/``remove`` (O(n log n)).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import SSAHError
from . import _kernels as K
from .base import Engine, code_bytes, from_words, to_words


SERIAL_QUERIES = 8   # batches up to this size run on one thread with the kept workspace


def _layout(bits: int, u: int, m: int):
    """Substring starts and lengths, and whether the tables address substrings directly
    (``offsets`` of ``2**L + 1`` entries) rather than by binary search in sorted keys."""
    m = max(m, -(-bits // 64))          # a substring is at most 64 bits
    starts, lengths = _split(bits, m)
    maxlen = int(lengths.max())
    direct = maxlen <= 24 and (1 << maxlen) <= 8 * u + 65536
    return starts, lengths, direct


def _table_bytes(u: int, lengths, direct: bool) -> int:
    """Bytes of the ``m`` substring tables over ``u`` distinct codes, as ``_build`` makes them."""
    entry = 4 if u < 2**32 else 8
    m = len(lengths)
    total = (m - 1) * u * entry
    if direct:      # offsets per table, and a one-key placeholder for the sorted keys
        total += sum((1 << int(L)) + 1 for L in lengths) * entry + 8
    else:           # sorted keys per table, and a two-entry placeholder for the offsets
        total += m * u * 8 + 2 * entry
    return int(total)


def _split(bits: int, m: int):
    m = max(1, min(m, bits))
    base, extra = divmod(bits, m)
    lengths = np.array([base + (1 if j < extra else 0) for j in range(m)], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return starts, lengths


class MIHEngine(Engine):
    """Exact k-NN and range search; results identical to ``flat``.

    Options: ``substrings`` (m, default ``ceil(bits / log2(distinct codes))``, at least
    ``ceil(bits / 64)``; fewer where m tables would exceed ``memory_budget``),
    ``scan_factor`` (probing gives way to a scan of the distinct codes when
    ``probes * scan_factor`` exceeds their number; default 4),
    ``memory_budget`` (bytes per item the structures may hold: "auto" = ``bits / 8 + 8``, a
    number, or None for no bound; see the module docstring).
    """

    name = "mih"

    def __init__(self, bits: int, substrings: int | None = None, scan_factor: float = 4.0,
                 memory_budget: str | float | None = "auto"):
        super().__init__(bits)
        if substrings is not None and not (1 <= int(substrings) <= bits):
            raise SSAHError(f"mih substrings must be in [1, {bits}], got {substrings}")
        if scan_factor <= 0:
            raise SSAHError(f"mih scan_factor must be > 0, got {scan_factor}")
        self.substrings = None if substrings is None else int(substrings)
        self.scan_factor = float(scan_factor)
        self.memory_budget = _parse_budget(memory_budget)
        self._flat = None           # the scan that holds the codes when the tables exceed the budget
        self.W = max(1, (self.bits + 63) // 64)
        # the distinct-code table; the source of truth for the codes
        self._uniq = np.zeros((0, self.W), dtype=np.uint64)
        self._members = np.zeros(0, dtype=np.int64)
        self._gstart = np.zeros(1, dtype=np.int64)
        self._n = 0
        self._pending = []          # appended packed codes not yet in the table
        self._removed = None        # positions removed since the last build
        self._tables = None
        self._work = None           # reusable search workspace, see _workspace

    # -- updates -------------------------------------------------------------------------------
    def __len__(self):
        return self._n

    def add(self, packed, ids=None, metadata=None):
        if len(packed):
            self._pending.append(np.ascontiguousarray(packed))
            self._n += len(packed)
            self._tables = None

    def remove(self, positions, ids=None):
        if len(positions):
            codes = self.codes()
            keep = np.ones(len(codes), dtype=bool)
            keep[positions] = False
            self._set(codes[keep])

    def reset(self, packed, ids=None, metadata=None):
        self._set(np.ascontiguousarray(packed))

    def _set(self, packed):
        self._flat = None
        self._uniq = np.zeros((0, self.W), dtype=np.uint64)
        self._members = np.zeros(0, dtype=np.int64)
        self._gstart = np.zeros(1, dtype=np.int64)
        self._pending = [packed] if len(packed) else []
        self._n = len(packed)
        self._tables = None
        self._work = None

    def budget_bytes(self) -> float | None:
        """Bytes per item the structures may hold (None: no bound)."""
        if self.memory_budget == "auto":
            return self.bits / 8 + 8
        return self.memory_budget

    def codes(self):
        if self._flat is not None:
            return np.concatenate([self._flat.codes(), *self._pending])
        out_words = np.zeros((self._n, self.W), dtype=np.uint64)
        nb = len(self._members)
        if nb:
            counts = np.diff(self._gstart)
            out_words[self._members] = np.repeat(self._uniq, counts, axis=0)
        packed = from_words(out_words, self.bits)
        a = nb
        for chunk in self._pending:
            packed[a:a + len(chunk)] = chunk
            a += len(chunk)
        return packed

    # -- building ------------------------------------------------------------------------------
    def _build(self):
        if self._tables is not None:
            return
        if self._flat is not None:
            self._set(self.codes())     # re-decide the layout over all the codes
        packed = None                   # the codes as handed in, kept for a fall-back scan
        if self._pending:
            packed = self.codes()
            words = to_words(packed)
            n = len(words)
            if self.W == 1:
                order = np.argsort(words[:, 0], kind="stable")
                sw = words[order, 0]
                new = np.flatnonzero(sw[1:] != sw[:-1]) + 1 if n else np.zeros(0, np.int64)
            else:
                order = np.lexsort(words.T[::-1])
                sw = words[order]
                new = np.flatnonzero((sw[1:] != sw[:-1]).any(axis=1)) + 1
            idx_dtype = np.int32 if n < 2**31 - 1 else np.int64
            gstart = np.concatenate([[0], new, [n]]).astype(idx_dtype) if n else np.zeros(1, idx_dtype)
            self._uniq = np.ascontiguousarray(words[order[gstart[:-1]]]) if n else self._uniq
            self._members = order.astype(idx_dtype)
            self._gstart = gstart
            self._pending = []
        u = len(self._uniq)
        m = self.substrings or max(1, math.ceil(self.bits / math.log2(max(u, 2))))
        layout = self._fitting_layout(u, m)
        if layout is None:
            self._to_scan(self.codes() if packed is None else packed)
            return
        starts, lengths, direct = layout
        m = len(lengths)
        subs = K.substrings(self._uniq, starts, lengths) if u else np.zeros((0, m), np.uint64)
        subs = self._sort_groups_by(subs)
        tdtype = np.uint32 if u < 2**32 else np.int64
        tab = np.empty((m - 1) * u, dtype=tdtype)   # table 0 needs none: see _sort_groups_by
        tab_base = np.arange(m, dtype=np.int64) * u
        if direct:
            sizes = [(1 << int(L)) + 1 for L in lengths]
            off_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            offsets = np.empty(int(sum(sizes)), dtype=tdtype)
            skeys = np.zeros(1, dtype=np.uint64)
        else:
            off_base = np.zeros(m, dtype=np.int64)
            offsets = np.zeros(2, dtype=tdtype)
            skeys = np.empty(m * u, dtype=np.uint64)
        for j in range(m):
            col = subs[:, j]
            if j == 0:
                order = slice(None)
            else:
                order = np.argsort(col, kind="stable")
                tab[(j - 1) * u:j * u] = order
            if direct:
                L = int(lengths[j])
                cnt = np.bincount(col.astype(np.int64), minlength=1 << L)
                off = offsets[off_base[j]:off_base[j] + (1 << L) + 1]
                off[0] = 0
                np.cumsum(cnt, out=off[1:])
            else:
                skeys[j * u:(j + 1) * u] = col[order]
        self._work = None
        self._tables = dict(starts=starts, lengths=lengths, direct=direct, offsets=offsets,
                            off_base=off_base, skeys=skeys, tab_base=tab_base, tab=tab)

    def _fitting_layout(self, u: int, m: int):
        """The layout with the most substrings, at most ``m``, whose structures fit the
        budget; None when not even one table fits."""
        budget = self.budget_bytes()
        base = self._uniq.nbytes + self._members.nbytes + self._gstart.nbytes
        for mm in range(m, 0, -1):
            layout = _layout(self.bits, u, mm)
            if budget is None or base + _table_bytes(u, layout[1], layout[2]) <= budget * self._n:
                return layout
            if len(layout[1]) > mm:     # already at the fewest substrings a code allows
                break
        return None

    def _to_scan(self, packed):
        """Hold ``packed`` (every code, in position order) in a flat FAISS scan (exact, ties
        by position) instead of tables."""
        from .flat import FlatEngine
        flat = FlatEngine(self.bits)
        flat.add(packed)
        self._set(np.zeros((0, self.nbytes_code), np.uint8))
        self._flat = flat
        self._n = len(flat)
        self._tables = {}               # built: nothing but the scan

    def _sort_groups_by(self, subs):
        """Reorder the distinct codes (and their item groups) by substring 0, stably, so
        that table 0 is the identity permutation and stores no entries (saves 4 bytes per
        distinct code). Returns ``subs`` in the new order."""
        if len(subs) < 2:
            return subs
        o = np.argsort(subs[:, 0], kind="stable")
        if (o[1:] > o[:-1]).all():
            return subs
        counts = np.diff(self._gstart)[o]
        gstart = np.zeros(len(o) + 1, dtype=self._gstart.dtype)
        np.cumsum(counts, out=gstart[1:])
        src = np.repeat(self._gstart[:-1][o].astype(np.int64) - gstart[:-1], counts)
        src += np.arange(self._n, dtype=np.int64)
        self._members = self._members[src]
        self._gstart = gstart
        self._uniq = np.ascontiguousarray(self._uniq[o])
        return subs[o]

    # -- search --------------------------------------------------------------------------------
    def _query_words(self, q_packed):
        qw = to_words(q_packed)
        t = self._tables
        qs = K.substrings(qw, t["starts"], t["lengths"])
        return qw, qs

    def _structure(self):
        """The built arrays, in the order the kernels take them."""
        t = self._tables
        return (self._uniq, self._members, self._gstart, t["starts"], t["lengths"], t["direct"],
                t["offsets"], t["off_base"], t["skeys"], t["tab_base"], t["tab"])

    def _workspace(self, nq):
        """The arrays one query's probing needs (sized by the distinct codes), kept between
        calls; ``visited`` is marked with increasing stamps and cleared only when they wrap.
        Callers hold ``K.KERNEL_LOCK``."""
        u = len(self._uniq)
        w = self._work
        if w is None:
            w = self._work = dict(visited=np.zeros(u, np.uint32), cand_u=np.empty(u, np.int64),
                                  cand_d=np.empty(u, np.int32),
                                  hist=np.zeros(self.bits + 1, np.int64), stamp=0)
        if w["stamp"] + nq + 1 >= 2**32:
            w["visited"][:] = 0
            w["stamp"] = 0
        return w

    def search(self, q_packed, k, **kwargs):
        self._build()
        if self._flat is not None:
            return self._flat.search(q_packed, k)
        m = len(q_packed)
        if self._n == 0 or m == 0:
            return (np.full((m, k), -1, np.int32), np.full((m, k), -1, np.int64))
        qw, qs = self._query_words(q_packed)
        args = (qw, qs, *self._structure(), self.bits, int(k), self._n + 1, self.scan_factor)
        threads = K.get_num_threads()
        with K.KERNEL_LOCK:
            if threads == 1 or m <= SERIAL_QUERIES:
                w = self._workspace(m)
                d, p, last = K.mih_knn_serial(*args, w["visited"], np.uint32(w["stamp"]),
                                              w["cand_u"], w["cand_d"], w["hist"])
                w["stamp"] = int(last)
                return d, p
            return K.mih_knn(*args, max(1, min(m, 4 * threads)))

    def range_search(self, q_packed, radius, **kwargs):
        self._build()
        if self._flat is not None:
            return self._flat.range_search(q_packed, radius)
        m = len(q_packed)
        if self._n == 0:
            return [(np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in range(m)]
        qw, qs = self._query_words(q_packed)
        structure = self._structure()
        out = []
        radius = min(int(radius), self.bits)
        with K.KERNEL_LOCK:
            w = self._workspace(m)
            for i in range(m):
                w["stamp"] += 1
                out.append(K.mih_range(qw[i], qs[i], *structure, self.bits, radius, self._n + 1,
                                       self.scan_factor, w["visited"], np.uint32(w["stamp"]),
                                       w["cand_u"], w["cand_d"], w["hist"]))
        return out

    # -- facts ---------------------------------------------------------------------------------
    def memory_bytes(self):
        self._build()           # what a search holds, not the codes waiting for the build
        if self._flat is not None:
            return int(self._flat.memory_bytes())
        t = self._tables
        total = self._uniq.nbytes + self._members.nbytes + self._gstart.nbytes
        total += t["tab"].nbytes + t["offsets"].nbytes + t["skeys"].nbytes
        return int(total)

    def options(self):
        return {"substrings": self.substrings, "scan_factor": self.scan_factor,
                "memory_budget": self.memory_budget}

    def stats(self):
        self._build()
        t = self._tables
        budget = {"memory_budget_bytes_per_item": self.budget_bytes()}
        if self._flat is not None:
            return {"mode": "scan", **budget, **self._flat.stats()}
        return {"mode": "tables", **budget,
                "distinct_codes": int(len(self._uniq)),
                "substrings": int(len(t["lengths"])),
                "substring_bits": [int(x) for x in t["lengths"]],
                "tables": "direct" if t["direct"] else "sorted",
                # kept between searches, not counted in memory_bytes (16 bytes per distinct
                # code, allocated by the first search; the candidate buffers are touched
                # only as far as a query needs)
                "workspace_bytes": 0 if self._work is None else int(
                    sum(a.nbytes for a in self._work.values() if isinstance(a, np.ndarray)))}


def _parse_budget(value):
    """``memory_budget``: "auto", None / "none", or a positive number of bytes per item."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return None
        if value.strip().lower() == "auto":
            return "auto"
    try:
        budget = float(value)
    except (TypeError, ValueError):
        budget = float("nan")
    if not budget > 0 or math.isinf(budget):
        raise SSAHError(f"mih memory_budget must be 'auto', 'none' or a positive number of "
                        f"bytes per item, got {value!r}")
    return budget
