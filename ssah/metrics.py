"""Exact retrieval metrics for binary hash codes.

All functions take query and database codes and labels:

* codes are ``(n, bits)`` arrays with values in {-1, +1}, in {0, 1}, or bool (each array is
  detected on its own; a value > 0 is the bit 1). NumPy arrays, nested lists and CPU torch
  tensors are accepted.
* labels are int class vectors ``(n,)`` or 0/1 multi-hot matrices ``(n, c)``. Two items are
  relevant to each other when they share at least one label (int labels: when they are
  equal). A class vector paired with a multi-hot matrix is turned into one-hot rows first.

The database is ranked for each query by ascending Hamming distance; ties are broken by
database position (a stable sort), so every metric is deterministic. Queries are processed in
chunks so memory stays bounded (about ``_CHUNK_ELEMENTS`` query x database pairs at once),
and Hamming distances are computed by XOR + popcount on bit-packed codes.

Conventions (every mean is over *all* queries):

* ``mean_average_precision``: the AP of a query with no relevant item in the (top-k) list is 0.
* ``precision_recall_curve`` / ``precision_within_radius``: the precision of an empty set (no
  item within the radius) is 0, and the recall of a query that has no relevant item in the
  database is 0.

Malformed codes or labels raise :class:`ssah.errors.DataError`; invalid parameter values
(``top_k``, ``ns``, ``radius``) raise :class:`ssah.errors.ConfigError`.
"""
from __future__ import annotations

import numbers

import numpy as np
from scipy.special import gammaln

from ssah.errors import ConfigError, DataError

__all__ = [
    "mean_average_precision",
    "precision_at_n",
    "precision_recall_curve",
    "precision_within_radius",
    "hamming_distances",
]

# Query x database pairs handled at once; bounds the working memory to roughly
# 25 bytes per pair (about 100 MB).
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- input checks

def _to_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{name}: cannot be read as an array ({exc})") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise DataError(f"{name}: expected a numeric or bool array, got dtype {a.dtype}")
    return a


def _binary(a: np.ndarray, name: str) -> np.ndarray:
    """Bool array of the bits of a {-1,+1} / {0,1} / bool array, or DataError."""
    if a.dtype == bool:
        return a
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    pos = a == 1
    if np.all(pos | (a == -1)) or np.all(pos | (a == 0)):
        return pos
    bad = a[~(pos | (a == -1) | (a == 0))]
    if bad.size:
        raise DataError(f"{name}: values must be in {{-1, +1}} or {{0, 1}}; found {bad.flat[0]!r}")
    raise DataError(f"{name}: mixes -1 and 0; use either {{-1, +1}} or {{0, 1}}")


def _pack(bits: np.ndarray) -> np.ndarray:
    """Pack an ``(n, b)`` bool array into ``(n, ceil(b / 64))`` uint64 words."""
    n, b = bits.shape
    packed = np.packbits(bits, axis=1)
    nbytes = -(-b // 64) * 8
    if packed.shape[1] != nbytes:
        packed = np.concatenate([packed, np.zeros((n, nbytes - packed.shape[1]), np.uint8)], 1)
    return np.ascontiguousarray(packed).view(np.uint64)


def _codes(x, name: str) -> tuple[np.ndarray, int]:
    a = _to_array(x, name)
    if a.ndim != 2:
        raise DataError(f"{name}: expected a 2-d (n, bits) array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{name}: is empty (shape {a.shape})")
    return _pack(_binary(a, name)), int(a.shape[1])


def _labels(x, name: str, n: int) -> np.ndarray:
    a = _to_array(x, name)
    if a.ndim not in (1, 2):
        raise DataError(f"{name}: expected a class vector (n,) or a multi-hot matrix (n, c), "
                        f"got shape {a.shape}")
    if a.shape[0] != n:
        raise DataError(f"{name}: {a.shape[0]} labels for {n} codes")
    if a.ndim == 2:
        if a.shape[1] == 0:
            raise DataError(f"{name}: multi-hot matrix has no columns")
        if a.dtype == bool:
            return a
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DataError(f"{name}: contains NaN or infinite values")
        pos = a == 1
        if not np.all(pos | (a == 0)):
            raise DataError(f"{name}: a multi-hot label matrix must hold only 0 and 1")
        return pos
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError(f"{name}: contains NaN or infinite values")
        if not np.all(a == np.round(a)):
            raise DataError(f"{name}: class labels must be integers")
    return a.astype(np.int64)


def _one_hot(v: np.ndarray, c: int, name: str) -> np.ndarray:
    if v.size and (v.min() < 0 or v.max() >= c):
        raise DataError(f"{name}: class ids must lie in [0, {c}) to match the other side's "
                        f"{c}-column multi-hot labels")
    out = np.zeros((len(v), c), bool)
    out[np.arange(len(v)), v] = True
    return out


class _Problem:
    """Validated, packed inputs shared by every metric."""

    def __init__(self, query_codes, query_labels, db_codes, db_labels):
        self.q, self.bits = _codes(query_codes, "query_codes")
        self.d, db_bits = _codes(db_codes, "db_codes")
        if db_bits != self.bits:
            raise DataError(f"code width mismatch: queries have {self.bits} bits, "
                            f"database has {db_bits}")
        self.n_q, self.n_db = len(self.q), len(self.d)
        ql = _labels(query_labels, "query_labels", self.n_q)
        dl = _labels(db_labels, "db_labels", self.n_db)
        if ql.ndim != dl.ndim:
            if ql.ndim == 1:
                ql = _one_hot(ql, dl.shape[1], "query_labels")
            else:
                dl = _one_hot(dl, ql.shape[1], "db_labels")
        if ql.ndim == 2:
            if ql.shape[1] != dl.shape[1]:
                raise DataError(f"label width mismatch: queries have {ql.shape[1]} classes, "
                                f"database has {dl.shape[1]}")
            ql, dl = _pack(ql), _pack(dl)
        self.ql, self.dl = ql, dl
        self.multilabel = ql.ndim == 2
        self.dist_dtype = np.uint8 if self.bits < 256 else np.uint16

    def chunks(self):
        step = max(1, _CHUNK_ELEMENTS // self.n_db)
        for start in range(0, self.n_q, step):
            yield slice(start, min(start + step, self.n_q))

    def distances(self, sl: slice) -> np.ndarray:
        return _hamming_packed(self.q[sl], self.d, self.dist_dtype)

    def relevance(self, sl: slice) -> np.ndarray:
        if not self.multilabel:
            return self.ql[sl, None] == self.dl[None, :]
        q, d = self.ql[sl], self.dl
        rel = (q[:, None, 0] & d[None, :, 0]) != 0
        for w in range(1, q.shape[1]):
            rel |= (q[:, None, w] & d[None, :, w]) != 0
        return rel


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    b = x.view(np.uint8).reshape(x.shape + (8,))
    return np.unpackbits(b, axis=-1).sum(-1, dtype=np.uint8)


def _hamming_packed(q: np.ndarray, d: np.ndarray, dtype) -> np.ndarray:
    out = _popcount(q[:, None, 0] ^ d[None, :, 0]).astype(dtype, copy=False)
    for w in range(1, q.shape[1]):
        out += _popcount(q[:, None, w] ^ d[None, :, w])
    return out


def hamming_distances(query_codes, db_codes) -> np.ndarray:
    """Full ``(n_query, n_db)`` Hamming distance matrix (uint8, or uint16 past 255 bits)."""
    q, bits = _codes(query_codes, "query_codes")
    d, db_bits = _codes(db_codes, "db_codes")
    if db_bits != bits:
        raise DataError(f"code width mismatch: queries have {bits} bits, database has {db_bits}")
    return _hamming_packed(q, d, np.uint8 if bits < 256 else np.uint16)


def _int_param(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------- ranking helpers

def _ranked_relevance(D: np.ndarray, rel: np.ndarray, k: int) -> np.ndarray:
    """Relevance of the first ``k`` items of each row in stable ascending-distance order."""
    order = np.argsort(D, axis=1, kind="stable")  # radix sort on uint8/uint16
    if k < D.shape[1]:
        order = order[:, :k]
    return np.take_along_axis(rel, order, axis=1)


def _histograms(D: np.ndarray, rel: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row counts of items and of relevant items at each distance 0..bits."""
    nb = bits + 1
    key = D.astype(np.uint16 if 2 * nb <= 65536 else np.int64)
    key <<= 1
    key |= rel
    h = np.empty((len(D), 2 * nb), np.int64)
    for i, row in enumerate(key):
        h[i] = np.bincount(row, minlength=2 * nb)
    return h[:, 0::2] + h[:, 1::2], h[:, 1::2]


def _harmonic(n: int) -> np.ndarray:
    """``H[t] = sum_{i=1..t} 1/i`` for ``t = 0..n``."""
    h = np.zeros(n + 1)
    np.cumsum(1.0 / np.arange(1, n + 1), out=h[1:])
    return h


def _tie_sum(a, b, N, s, H):
    """``sum_{t=N+1}^{N+s} (a + b (t - N - 1)) / t`` in closed form (elementwise)."""
    return b * s + (a - b * (N + 1)) * (H[N + s] - H[N])


def _tie_aware_ap(cnt: np.ndarray, rcnt: np.ndarray, k: int | None, H: np.ndarray) -> np.ndarray:
    """Expected AP (or AP@k) over uniformly random orderings of each tie group."""
    ncum = np.cumsum(cnt, axis=1)
    rcum = np.cumsum(rcnt, axis=1)
    N = ncum - cnt
    R = rcum - rcnt
    n_db = int(ncum[0, -1])
    if k is None or k >= n_db:
        k = n_db
    full = ncum <= k                                  # tie groups entirely inside the top k
    n = cnt.astype(np.float64)
    r = rcnt.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(cnt > 1, (r - 1) / (n - 1), 0.0)
        contrib = np.where(r > 0, r / n * _tie_sum(R + 1.0, b, N, cnt, H), 0.0)
    X = np.where(full, contrib, 0.0).sum(1)           # expected numerator from full groups
    ap = np.zeros(len(cnt))
    # A row has at most one group straddling the cut-off: N < k < N + n.
    strad = (N < k) & (ncum > k)
    has = strad.any(1)
    R_full = np.where(full, rcnt, 0).sum(1)
    ok = ~has & (R_full > 0)
    ap[ok] = X[ok] / R_full[ok]
    for i in np.flatnonzero(has):
        g = int(np.argmax(strad[i]))
        n_g, r_g, N_g, R_g = int(cnt[i, g]), int(rcnt[i, g]), int(N[i, g]), int(R[i, g])
        s = k - N_g                                    # positions of the group inside top k
        lo, hi = max(0, s - (n_g - r_g)), min(r_g, s)
        m = np.arange(lo, hi + 1, dtype=np.float64)   # relevant among those s positions
        logp = (gammaln(r_g + 1) - gammaln(m + 1) - gammaln(r_g - m + 1)
                + gammaln(n_g - r_g + 1) - gammaln(s - m + 1) - gammaln(n_g - r_g - s + m + 1)
                - gammaln(n_g + 1) + gammaln(s + 1) + gammaln(n_g - s + 1))
        p = np.exp(logp)
        bm = (m - 1) / (s - 1) if s > 1 else np.zeros_like(m)
        y = m / s * _tie_sum(R_g + 1.0, bm, N_g, s, H)
        den = R_g + m
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(den > 0, (X[i] + y) / den, 0.0)
        ap[i] = float(np.dot(p, terms))
    return ap


# --------------------------------------------------------------------------- public metrics

def mean_average_precision(query_codes, query_labels, db_codes, db_labels,
                           top_k: int | None = None, tie_aware: bool = False) -> float:
    """Mean average precision of Hamming ranking.

    The database is ranked for each query by ascending Hamming distance, ties broken by
    database position. The AP of one query is the mean of precision@r over the positions r
    (within the top ``top_k``; the whole database when ``top_k`` is None) that hold a relevant
    item, i.e. the sum of those precisions divided by the number of relevant items found in
    the top ``top_k``; it is 0 when none is found. The result is the mean AP over queries.

    With ``tie_aware=True`` the result is the *expectation* of exactly that quantity when the
    items of each tie group (same distance) are put in a uniformly random order instead of
    database order (He et al., "Hashing as tie-aware learning to rank", CVPR 2018), computed
    in closed form. For a tie group of ``n`` items, ``r`` of them relevant, preceded by ``N``
    items of which ``R`` are relevant, each position ``t = N+1..N+n`` is relevant with
    probability ``r/n`` and then has expected precision
    ``(R + 1 + (t-N-1)(r-1)/(n-1)) / t``; summing over t uses harmonic numbers.
    With ``top_k`` the number of relevant items in the top k (the AP denominator) is itself
    random when a tie group straddles the cut-off; the expectation of the ratio is taken
    exactly by conditioning on the hypergeometric number ``m`` of relevant items among the
    group's positions inside the top k. So ``tie_aware=True`` equals the average of the
    ``tie_aware=False`` value over all orderings of the ties.
    """
    P = _Problem(query_codes, query_labels, db_codes, db_labels)
    k = P.n_db if top_k is None else min(_int_param(top_k, "top_k", 1), P.n_db)
    total = 0.0
    if tie_aware:
        H = _harmonic(P.n_db)
        for sl in P.chunks():
            cnt, rcnt = _histograms(P.distances(sl), P.relevance(sl), P.bits)
            total += float(_tie_aware_ap(cnt, rcnt, k, H).sum())
        return total / P.n_q
    for sl in P.chunks():
        rs = _ranked_relevance(P.distances(sl), P.relevance(sl), k)
        cs = np.cumsum(rs, axis=1, dtype=np.int32)
        rows, cols = np.nonzero(rs)
        num = np.bincount(rows, weights=cs[rows, cols] / (cols + 1.0), minlength=len(rs))
        found = cs[:, -1]
        total += float(np.sum(num[found > 0] / found[found > 0]))
    return total / P.n_q


def precision_at_n(query_codes, query_labels, db_codes, db_labels, ns,
                   tie_aware: bool = False) -> np.ndarray:
    """Mean over queries of the precision of the first N ranked items, for each N in ``ns``.

    Same stable ranking as :func:`mean_average_precision`. Each N must lie in
    ``[1, database size]``. Returns a float64 array shaped like ``ns``.

    With ``tie_aware=True`` the result is the expectation over uniformly random orderings of
    each tie group: a group of ``n`` items, ``r`` of them relevant, that starts after ``N0``
    items contributes ``r * clip((N - N0) / n, 0, 1)`` relevant items to the top N.
    """
    P = _Problem(query_codes, query_labels, db_codes, db_labels)
    ns_arr = np.asarray(ns)
    flat = [_int_param(v.item() if hasattr(v, "item") else v, "N", 1) for v in ns_arr.ravel()]
    if not flat:
        raise ConfigError("ns is empty")
    if max(flat) > P.n_db:
        raise ConfigError(f"N = {max(flat)} exceeds the database size {P.n_db}")
    idx = np.asarray(flat) - 1
    sums = np.zeros(len(flat))
    if tie_aware:
        for sl in P.chunks():
            cnt, rcnt = _histograms(P.distances(sl), P.relevance(sl), P.bits)
            start = np.cumsum(cnt, axis=1) - cnt
            for j, n in enumerate(flat):
                with np.errstate(divide="ignore", invalid="ignore"):
                    frac = np.where(cnt > 0, np.clip((n - start) / cnt, 0.0, 1.0), 0.0)
                sums[j] += float((rcnt * frac).sum())
        return (sums / (idx + 1) / P.n_q).reshape(ns_arr.shape)
    for sl in P.chunks():
        rs = _ranked_relevance(P.distances(sl), P.relevance(sl), max(flat))
        cs = np.cumsum(rs, axis=1, dtype=np.int32)
        sums += cs[:, idx].sum(0)
    return (sums / (idx + 1) / P.n_q).reshape(ns_arr.shape)


def precision_recall_curve(query_codes, query_labels, db_codes, db_labels
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Hamming-radius precision/recall curve.

    Returns ``(precision, recall)``, float64 arrays of length ``bits + 1``: entry ``r`` is the
    mean over all queries of the precision / recall of the set of database items within
    Hamming distance ``<= r``. A query whose set is empty counts as precision 0; a query
    with no relevant item in the database counts as recall 0.
    """
    P = _Problem(query_codes, query_labels, db_codes, db_labels)
    prec = np.zeros(P.bits + 1)
    rec = np.zeros(P.bits + 1)
    for sl in P.chunks():
        cnt, rcnt = _histograms(P.distances(sl), P.relevance(sl), P.bits)
        c = np.cumsum(cnt, axis=1)
        rc = np.cumsum(rcnt, axis=1).astype(np.float64)
        tot = rc[:, -1:]
        prec += np.divide(rc, c, out=np.zeros_like(rc), where=c > 0).sum(0)
        rec += np.divide(rc, tot, out=np.zeros_like(rc), where=tot > 0).sum(0)
    return prec / P.n_q, rec / P.n_q


def precision_within_radius(query_codes, query_labels, db_codes, db_labels,
                            radius: int = 2) -> float:
    """Mean over queries of the precision of the items within Hamming distance ``radius``.

    A query with no item within the radius counts as precision 0 (the convention of the
    DPSH / HashNet evaluation code).
    """
    P = _Problem(query_codes, query_labels, db_codes, db_labels)
    radius = min(_int_param(radius, "radius", 0), P.bits)
    total = 0.0
    for sl in P.chunks():
        cnt, rcnt = _histograms(P.distances(sl), P.relevance(sl), P.bits)
        c = cnt[:, :radius + 1].sum(1)
        rc = rcnt[:, :radius + 1].sum(1)
        total += float(np.sum(rc[c > 0] / c[c > 0]))
    return total / P.n_q
