"""``ivf``: approximate search with FAISS ``IndexBinaryIVF`` (inverted lists over k-means cells).

Options: ``nlist`` (cells; default ``round(sqrt(n) / 4)`` for the first batch of n codes, at
most n / 8), ``nprobe`` (cells visited per query, default 16), ``niter`` (k-means iterations,
default 10).  Results are sorted by (distance, id) but
may miss true neighbours; the benchmark reports recall@k against brute force.  The quantizer is
trained on the first batch added (40 codes per cell, at most 100,000 codes); later batches
reuse it.  A loaded
index re-trains on the codes it holds (deterministic for a given ``seed`` and data).
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from ..errors import SSAHError
from .base import Engine, pad_bytes
from .flat import faiss_threads, padded_bytes, sorted_range_results

TRAIN_SAMPLE = 100_000


class IVFEngine(Engine):
    name = "ivf"
    exact = False

    def __init__(self, bits: int, nlist: int | None = None, nprobe: int = 16,
                 pad: str | int = "auto", seed: int = 0, niter: int = 10):
        super().__init__(bits)
        if nlist is not None and int(nlist) < 1:
            raise SSAHError(f"ivf nlist must be >= 1, got {nlist}")
        if int(nprobe) < 1:
            raise SSAHError(f"ivf nprobe must be >= 1, got {nprobe}")
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = int(nprobe)
        self.pad = pad
        self.seed = int(seed)
        self.niter = max(1, int(niter))
        self.width = padded_bytes(self.bits, pad)
        self._index = None
        self._n = 0

    def __len__(self):
        return self._n

    def _make(self, sample):
        n = len(sample)
        nlist = self.nlist or max(1, round(math.sqrt(n) / 4))
        nlist = max(1, min(nlist, n // 8 if n >= 8 else 1))
        d = self.width * 8
        quantizer = faiss.IndexBinaryFlat(d)
        index = faiss.IndexBinaryIVF(quantizer, d, nlist)
        self._quantizer = quantizer      # FAISS does not own it: keep it alive
        rng = np.random.default_rng(self.seed)
        want = min(TRAIN_SAMPLE, max(40 * nlist, 1000))
        if n > want:
            sample = sample[np.sort(rng.choice(n, want, replace=False))]
        index.cp.seed = self.seed
        index.cp.niter = self.niter
        index.cp.verbose = False
        with faiss_threads(len(sample) * nlist * 25):
            index.train(sample)
        index.nprobe = min(self.nprobe, nlist)
        self._index = index

    def add(self, packed, ids=None, metadata=None):
        if not len(packed):
            return
        padded = pad_bytes(packed, self.width)
        if self._index is None:
            self._make(padded)
        ids = np.arange(self._n, self._n + len(padded), dtype=np.int64)
        with faiss_threads(len(padded) * self._index.nlist):
            self._index.add_with_ids(padded, ids)
        self._n += len(padded)

    def codes(self):
        out = np.zeros((self._n, self.width), dtype=np.uint8)
        if self._index is not None and self._n:
            inv = self._index.invlists
            cs = inv.code_size
            for lst in range(inv.nlist):
                size = inv.list_size(lst)
                if size == 0:
                    continue
                ids = faiss.rev_swig_ptr(inv.get_ids(lst), size).copy()
                codes = faiss.rev_swig_ptr(inv.get_codes(lst), size * cs).copy()
                out[ids] = codes.reshape(size, cs)
        return np.ascontiguousarray(out[:, :self.nbytes_code])

    def remove(self, positions, ids=None):
        if len(positions):
            keep = np.ones(self._n, dtype=bool)
            keep[positions] = False
            self.reset(self.codes()[keep])

    def reset(self, packed, ids=None, metadata=None):
        if self._index is not None:
            self._index.reset()          # keeps the trained quantizer
        self._n = 0
        self.add(packed)

    def search(self, q_packed, k, **kwargs):
        m = len(q_packed)
        out_d = np.full((m, k), -1, np.int32)
        out_p = np.full((m, k), -1, np.int64)
        if self._n == 0 or m == 0:
            return out_d, out_p
        work = m * (self._index.nlist + self._index.nprobe * self._n / self._index.nlist)
        with faiss_threads(work):
            D, I = self._index.search(pad_bytes(q_packed, self.width), k)
        for i in range(m):
            ok = I[i] >= 0
            d, p = D[i][ok], I[i][ok]
            order = np.lexsort((p, d))
            out_d[i, :len(order)] = d[order]
            out_p[i, :len(order)] = p[order]
        return out_d, out_p

    def range_search(self, q_packed, radius, **kwargs):
        m = len(q_packed)
        if self._n == 0 or m == 0:
            return [(np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in range(m)]
        work = m * (self._index.nlist + self._index.nprobe * self._n / self._index.nlist)
        with faiss_threads(work):
            lims, D, I = self._index.range_search(pad_bytes(q_packed, self.width),
                                                  int(radius) + 1)
        return sorted_range_results(lims, D, I)

    def memory_bytes(self):
        if self._index is None:
            return 0
        nlist = self._index.nlist
        return self._n * (self.width + 8) + nlist * self.width

    def options(self):
        return {"nlist": self.nlist, "nprobe": self.nprobe, "pad": self.pad, "seed": self.seed,
                "niter": self.niter}

    def stats(self):
        if self._index is None:
            return {"nlist": self.nlist, "nprobe": self.nprobe, "trained": False}
        return {"nlist": int(self._index.nlist), "nprobe": int(self._index.nprobe),
                "trained": True}
