"""Compiled (numba) kernels for Hamming search over codes stored as big-endian uint64 words.

A code of ``bits`` bits is held as ``W = ceil(bits / 64)`` uint64 words: code bit ``i`` is bit
``63 - i % 64`` of word ``i // 64`` (the byte order of :func:`ssah.index.packing.pack_codes`
read big-endian), and the unused low bits of the last word are zero.

The multi-index hashing kernels work on a table of *distinct* codes (``uniq``, ``(u, W)``)
whose items are listed group by group in ``members`` (database positions, increasing within a
group; group ``g`` owns ``members[gstart[g]:gstart[g + 1]]``).  Each of the ``m`` substring
tables maps a substring value to the distinct codes holding it, either by direct addressing
(``offsets`` of length ``2**L + 1``) or, for long substrings, by binary search in sorted keys.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange, get_num_threads
from numba.extending import intrinsic

# Parallel numba kernels must not be entered by two Python threads at once with the default
# threading layer; the engines hold this lock around them.
KERNEL_LOCK = threading.Lock()


@intrinsic
def popcount(typingctx, x):
    """Population count of an unsigned integer (one POPCNT instruction where the CPU has it)."""
    sig = x(x)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@njit(inline="always")
def _ham(q, db, row, W):
    d = 0
    for w in range(W):
        d += popcount(q[w] ^ db[row, w])
    return d


@njit(inline="always")
def _substring(words, row, start, length):
    """Bits [start, start + length) of a code (1 <= length <= 64) as an integer."""
    w = start // 64
    o = start % 64
    if o + length <= 64:
        return (words[row, w] << np.uint64(o)) >> np.uint64(64 - length)
    hi = 64 - o
    lo = length - hi
    part1 = (words[row, w] << np.uint64(o)) >> np.uint64(64 - hi)
    part2 = words[row, w + 1] >> np.uint64(64 - lo)
    return (part1 << np.uint64(lo)) | part2


@njit(cache=True)
def substrings(words, starts, lengths):
    """All substrings of all codes: (n, m) uint64."""
    n = words.shape[0]
    m = starts.shape[0]
    out = np.empty((n, m), np.uint64)
    for i in range(n):
        for j in range(m):
            out[i, j] = _substring(words, i, starts[j], lengths[j])
    return out


# ---------------------------------------------------------------------------------------------
# The popcount limit: a tight XOR-popcount loop, used by the benchmark as the ceiling.
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _block_sum(block, qi):
    # a loop from 0 over a view: numba drops the negative-index checks and LLVM vectorises
    # it (VPOPCNTQ where the CPU has it)
    s = np.uint64(0)
    for j in range(block.shape[0]):
        s += popcount(qi ^ block[j])
    return s


@njit(parallel=True)
def popcount_scan(words, queries, block):
    """XOR-popcount of every query against every 64-bit word, summed per query.

    ``words``/``queries`` are 1-D uint64 (one word per code).  This is the work every
    exhaustive Hamming search must do at least, with no selection: the database is cut into
    cache-sized blocks and each thread takes every nthreads-th query.
    """
    n = words.shape[0]
    nq = queries.shape[0]
    nthreads = get_num_threads()
    sums = np.zeros(nq, np.int64)
    for t in prange(nthreads):
        for b0 in range(0, n, block):
            blk = words[b0:min(b0 + block, n)]
            for i in range(t, nq, nthreads):
                sums[i] += np.int64(_block_sum(blk, queries[i]))
    return sums


# ---------------------------------------------------------------------------------------------
# Exhaustive exact k-NN by counting, used by engines for small or filtered sets.
# ---------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def knn_scan(db, queries, k, bits):
    """Exact k-NN sorted by (distance, position) over all of ``db``; -1 padded."""
    n, W = db.shape
    nq = queries.shape[0]
    out_d = np.full((nq, k), -1, np.int32)
    out_p = np.full((nq, k), -1, np.int64)
    for i in prange(nq):
        hist = np.zeros(bits + 2, np.int64)
        dist = np.empty(n, np.int32)
        for j in range(n):
            d = _ham(queries[i], db, j, W)
            dist[j] = d
            hist[d] += 1
        # k-th distance
        cum = 0
        dk = bits
        for d in range(bits + 1):
            cum += hist[d]
            if cum >= k:
                dk = d
                break
        # bucket start offsets for distances <= dk (counting sort, stable in position)
        start = np.zeros(bits + 2, np.int64)
        for d in range(dk + 1):
            start[d + 1] = start[d] + hist[d]
        filled = 0
        for j in range(n):
            d = dist[j]
            if d <= dk:
                r = start[d]
                if r < k:
                    out_d[i, r] = d
                    out_p[i, r] = j
                    filled += 1
                start[d] = r + 1
    return out_d, out_p


# ---------------------------------------------------------------------------------------------
# Multi-index hashing over distinct codes
# ---------------------------------------------------------------------------------------------
@njit(inline="always")
def _bucket(j, v, direct, offsets, off_base, skeys, tab_base, u):
    """[lo, hi) range in table j's entry list for substring value v."""
    if direct:
        b = off_base[j] + np.int64(v)
        return np.int64(offsets[b]), np.int64(offsets[b + 1])
    base = tab_base[j]
    lo = np.int64(0)
    hi = np.int64(u)
    while lo < hi:
        mid = (lo + hi) >> 1
        if skeys[base + mid] < v:
            lo = mid + 1
        else:
            hi = mid
    first = lo
    hi = np.int64(u)
    while lo < hi:
        mid = (lo + hi) >> 1
        if skeys[base + mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return first, lo


@njit(inline="always")
def _binom(n, r):
    if r < 0 or r > n:
        return 0.0
    out = 1.0
    for i in range(r):
        out = out * (n - i) / (i + 1)
    return out


@njit(inline="always")
def _visit(cu, q, uniq, W, gstart, visited, stamp, cand_u, cand_d, hist, ncand):
    """Adds distinct code ``cu`` to the candidates once per query (``visited`` holds the
    query's ``stamp``) and its items to the distance histogram; returns the new count."""
    if visited[cu] != stamp:
        visited[cu] = stamp
        d = _ham(q, uniq, cu, W)
        cand_u[ncand] = cu
        cand_d[ncand] = d
        hist[d] += gstart[cu + 1] - gstart[cu]
        ncand += 1
    return ncand


@njit(inline="always")
def _kth_distance(hist, bits, k):
    """The smallest d with at least k items at distance <= d in ``hist``; -1 if none."""
    cum = 0
    for d in range(bits + 1):
        cum += hist[d]
        if cum >= k:
            return d
    return -1


@njit(cache=True)
def _mih_collect(q, qsub, uniq, gstart, starts_, lengths, direct, offsets, off_base, skeys,
                 tab_base, tab, bits, k, radius, scan_factor, visited, stamp, cand_u, cand_d, hist):
    """Finds candidates for one query until the answer is certain.

    k > 0: until the k-th item distance is within the certainly-complete radius;
    k == 0: until every code within ``radius`` has been found.
    Returns (ncand, dk): candidates in cand_u/cand_d[:ncand]; dk the distance bound to keep
    (the k-th distance, or ``radius``; -1 when k exceeds the number of items).
    """
    u, W = uniq.shape
    m = lengths.shape[0]
    ncand = 0
    for d in range(bits + 1):
        hist[d] = 0
    minlen = 64
    for j in range(m):
        if lengths[j] < minlen:
            minlen = lengths[j]
    probes_done = 0.0
    full = False
    for s in range(minlen + 1):
        # Probing radius s in every table costs sum_j C(L_j, s) lookups; when that exceeds a
        # fraction of a scan over all distinct codes, scan them instead (exact either way).
        cost = 0.0
        for j in range(m):
            cost += _binom(lengths[j], s)
        if s > 0 and (probes_done + cost) * scan_factor > u:
            full = True
            break
        probes_done += cost
        for j in range(m):
            L = lengths[j]
            base = tab_base[j]
            qv = qsub[j]
            if s == 0:
                mask = np.uint64(0)
            else:
                mask = (np.uint64(1) << np.uint64(s)) - np.uint64(1)
            limit = np.uint64(1) << np.uint64(L) if L < 64 else np.uint64(0)
            while True:
                v = qv ^ mask
                lo, hi = _bucket(j, v, direct, offsets, off_base, skeys, tab_base, u)
                for t in range(lo, hi):
                    # the distinct codes are sorted by substring 0: table 0 is the identity
                    cu = t if j == 0 else tab[base - u + t]
                    ncand = _visit(cu, q, uniq, W, gstart, visited, stamp, cand_u, cand_d, hist, ncand)
                if s == 0:
                    break
                # Gosper's hack: next mask with the same popcount
                c = mask & (~mask + np.uint64(1))
                r = mask + c
                if L == 64 and r == 0:
                    break
                mask = (((r ^ mask) >> np.uint64(2)) // c) | r
                if L < 64 and mask >= limit:
                    break
            complete = m * s + j
            if s == L:
                complete = bits
            if k > 0:
                dk = _kth_distance(hist, bits, k)
                if dk >= 0 and dk <= complete:
                    return ncand, dk
                if complete >= bits:
                    return ncand, -1
            elif complete >= radius:
                return ncand, radius
    # exhaustive pass over the distinct codes not yet visited
    for cu in range(u):
        ncand = _visit(cu, q, uniq, W, gstart, visited, stamp, cand_u, cand_d, hist, ncand)
    if k > 0:
        return ncand, _kth_distance(hist, bits, k)
    return ncand, radius


@njit(cache=True)
def _expand(cand_u, cand_d, ncand, dk, limit, members, gstart, npos):
    """Items of the candidate codes with distance <= dk, sorted by (distance, position).

    With ``limit`` > 0 only the first ``limit`` items are needed, so each code contributes at
    most ``limit`` of its (position-sorted) members.
    """
    size = 0
    for c in range(ncand):
        if cand_d[c] <= dk:
            g = cand_u[c]
            cnt = gstart[g + 1] - gstart[g]
            if limit > 0 and cnt > limit:
                cnt = limit
            size += cnt
    keys = np.empty(size, np.int64)
    r = 0
    for c in range(ncand):
        d = cand_d[c]
        if d <= dk:
            g = cand_u[c]
            a = gstart[g]
            b = gstart[g + 1]
            if limit > 0 and b - a > limit:
                b = a + limit
            for t in range(a, b):
                keys[r] = np.int64(d) * npos + members[t]
                r += 1
    keys.sort()
    return keys


@njit(cache=True)
def _mih_knn_rows(queries, qsubs, uniq, members, gstart, starts_, lengths, direct, offsets,
                  off_base, skeys, tab_base, tab, bits, k, npos64, scan_factor, first, step,
                  visited, stamp, cand_u, cand_d, hist, out_d, out_p):
    """k-NN of queries first, first + step, ... into out_d/out_p, with one workspace.

    ``visited`` entries equal to a used stamp mark codes seen by that query; stamps count
    up from ``stamp`` + 1, and the last one used is returned."""
    nq = queries.shape[0]
    for i in range(first, nq, step):
        stamp += np.uint32(1)
        ncand, dk = _mih_collect(queries[i], qsubs[i], uniq, gstart, starts_, lengths,
                                 direct, offsets, off_base, skeys, tab_base, tab, bits, k,
                                 0, scan_factor, visited, stamp, cand_u, cand_d, hist)
        if dk < 0:
            dk = bits
        keys = _expand(cand_u, cand_d, ncand, dk, k, members, gstart, npos64)
        nk = min(k, keys.shape[0])
        for r in range(nk):
            out_d[i, r] = np.int32(keys[r] // npos64)
            out_p[i, r] = keys[r] % npos64
    return stamp


@njit(parallel=True, cache=True)
def mih_knn(queries, qsubs, uniq, members, gstart, starts_, lengths, direct, offsets,
            off_base, skeys, tab_base, tab, bits, k, npos, scan_factor, nchunks):
    """Batch k-NN: ``nchunks`` threads, each with its own freshly allocated workspace."""
    nq = queries.shape[0]
    u = uniq.shape[0]
    out_d = np.full((nq, k), -1, np.int32)
    out_p = np.full((nq, k), -1, np.int64)
    for c in prange(nchunks):
        visited = np.zeros(u, np.uint32)
        cand_u = np.empty(u, np.int64)
        cand_d = np.empty(u, np.int32)
        hist = np.zeros(bits + 1, np.int64)
        _mih_knn_rows(queries, qsubs, uniq, members, gstart, starts_, lengths, direct,
                      offsets, off_base, skeys, tab_base, tab, bits, k, np.int64(npos),
                      scan_factor, c, nchunks, visited, np.uint32(0), cand_u, cand_d, hist,
                      out_d, out_p)
    return out_d, out_p


@njit(cache=True)
def mih_knn_serial(queries, qsubs, uniq, members, gstart, starts_, lengths, direct, offsets,
                   off_base, skeys, tab_base, tab, bits, k, npos, scan_factor, visited, stamp,
                   cand_u, cand_d, hist):
    """Small batches (a served query): one thread, the caller's reusable workspace, so a
    call costs no allocation or thread start-up proportional to the index size.
    Returns (distances, positions, last stamp used)."""
    nq = queries.shape[0]
    out_d = np.full((nq, k), -1, np.int32)
    out_p = np.full((nq, k), -1, np.int64)
    last = _mih_knn_rows(queries, qsubs, uniq, members, gstart, starts_, lengths, direct,
                         offsets, off_base, skeys, tab_base, tab, bits, k, np.int64(npos),
                         scan_factor, 0, 1, visited, stamp, cand_u, cand_d, hist, out_d, out_p)
    return out_d, out_p, last


@njit(cache=True)
def mih_range(query, qsub, uniq, members, gstart, starts_, lengths, direct, offsets,
              off_base, skeys, tab_base, tab, bits, radius, npos, scan_factor, visited, stamp,
              cand_u, cand_d, hist):
    ncand, dk = _mih_collect(query, qsub, uniq, gstart, starts_, lengths, direct, offsets,
                             off_base, skeys, tab_base, tab, bits, 0, radius, scan_factor,
                             visited, stamp, cand_u, cand_d, hist)
    npos64 = np.int64(npos)
    keys = _expand(cand_u, cand_d, ncand, radius, 0, members, gstart, npos64)
    return (keys // npos64).astype(np.int32), keys % npos64


@njit(cache=True)
def range_scan(db, query, radius):
    """All positions within ``radius`` of one query, sorted by (distance, position)."""
    n, W = db.shape
    cnt = 0
    dist = np.empty(n, np.int32)
    for j in range(n):
        d = _ham(query, db, j, W)
        dist[j] = d
        if d <= radius:
            cnt += 1
    keys = np.empty(cnt, np.int64)
    r = 0
    npos = np.int64(n + 1)
    for j in range(n):
        if dist[j] <= radius:
            keys[r] = np.int64(dist[j]) * npos + j
            r += 1
    keys.sort()
    return (keys // npos).astype(np.int32), keys % npos
