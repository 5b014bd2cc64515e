"""Retrieval metrics against slow, obviously correct references."""
import itertools
import math

import numpy as np
import pytest

from ssah.errors import ConfigError, DataError, SSAHError
from ssah.metrics import (hamming_distances, mean_average_precision, precision_at_n,
                          precision_recall_curve, precision_within_radius)


# ----------------------------------------------------------------------------- references

def _dist(a, b):
    return sum(1 for x, y in zip(a, b) if x != y)


def _rel(la, lb):
    if np.ndim(la) == 0:
        return int(la) == int(lb)
    return any(x and y for x, y in zip(la, lb))


def _ranking(q, db, tiebreak=None):
    """Database indices by (distance, tiebreak position)."""
    pos = list(range(len(db))) if tiebreak is None else tiebreak
    return sorted(range(len(db)), key=lambda j: (_dist(q, db[j]), pos[j]))


def _ap(order, rels, k=None):
    order = order if k is None else order[:k]
    hits, s = 0, 0.0
    for i, j in enumerate(order, 1):
        if rels[j]:
            hits += 1
            s += hits / i
    return s / hits if hits else 0.0


def ref_map(qc, ql, dc, dl, k=None):
    aps = []
    for q, lq in zip(qc, ql):
        rels = [_rel(lq, ld) for ld in dl]
        aps.append(_ap(_ranking(q, dc), rels, k))
    return float(np.mean(aps))


def ref_map_tie_aware(qc, ql, dc, dl, k=None):
    """Average of the stable-order mAP over every permutation of the database order."""
    n = len(dc)
    aps = []
    for q, lq in zip(qc, ql):
        rels = [_rel(lq, ld) for ld in dl]
        vals = [_ap(_ranking(q, dc, perm), rels, k) for perm in itertools.permutations(range(n))]
        aps.append(np.mean(vals))
    return float(np.mean(aps))


def ref_p_at_n(qc, ql, dc, dl, ns):
    out = []
    for N in ns:
        vals = []
        for q, lq in zip(qc, ql):
            order = _ranking(q, dc)[:N]
            vals.append(sum(_rel(lq, dl[j]) for j in order) / N)
        out.append(np.mean(vals))
    return np.array(out)


def ref_pr(qc, ql, dc, dl):
    bits = len(qc[0])
    P, R = np.zeros(bits + 1), np.zeros(bits + 1)
    for r in range(bits + 1):
        for q, lq in zip(qc, ql):
            inside = [j for j in range(len(dc)) if _dist(q, dc[j]) <= r]
            rel_in = sum(_rel(lq, dl[j]) for j in inside)
            rel_all = sum(_rel(lq, ld) for ld in dl)
            P[r] += rel_in / len(inside) if inside else 0.0
            R[r] += rel_in / rel_all if rel_all else 0.0
    return P / len(qc), R / len(qc)


def _case(rng, n_q, n_db, bits, classes, multilabel, pm=True):
    qc = rng.integers(0, 2, (n_q, bits))
    dc = rng.integers(0, 2, (n_db, bits))
    if multilabel:
        ql = (rng.random((n_q, classes)) < 0.3).astype(int)
        dl = (rng.random((n_db, classes)) < 0.3).astype(int)
    else:
        ql = rng.integers(0, classes, n_q)
        dl = rng.integers(0, classes, n_db)
    if pm:
        qc, dc = 2 * qc - 1, 2 * dc - 1
    return qc, ql, dc, dl


CASES = [(seed, ml) for seed in range(6) for ml in (False, True)]


# ----------------------------------------------------------------------------- mAP

@pytest.mark.parametrize("seed,multilabel", CASES)
@pytest.mark.parametrize("top_k", [None, 1, 7, 25])
def test_map_matches_reference(seed, multilabel, top_k):
    rng = np.random.default_rng(seed)
    qc, ql, dc, dl = _case(rng, 9, 40, 4, 3, multilabel, pm=seed % 2 == 0)
    got = mean_average_precision(qc, ql, dc, dl, top_k=top_k)
    assert got == pytest.approx(ref_map(qc, ql, dc, dl, top_k), abs=1e-12)


def test_map_hand_case():
    # query 0000; database distances [1, 0, 2, 1]; relevant items 0 and 2.
    q = np.array([[0, 0, 0, 0]])
    db = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0]])
    ql, dl = np.array([1]), np.array([1, 0, 1, 0])
    # ranking (stable): 1 (d0), 0 (d1), 3 (d1), 2 (d2); relevant at positions 2 and 4.
    assert mean_average_precision(q, ql, db, dl) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert mean_average_precision(q, ql, db, dl, top_k=2) == pytest.approx(1 / 2)
    assert mean_average_precision(q, ql, db, dl, top_k=1) == 0.0
    assert mean_average_precision(q, ql, db, dl, top_k=100) == pytest.approx(0.5)
    # Tie-aware: items 0 and 3 (one relevant) tie at positions 2..3.
    # position of relevant item 0: 2 or 3 with prob 1/2 -> E[1/pos] = (1/2 + 1/3) / 2.
    expected = ((1 / 2 + 1 / 3) / 2 + 2 / 4) / 2
    assert mean_average_precision(q, ql, db, dl, tie_aware=True) == pytest.approx(expected)
    # top_k = 2 cuts the tie: relevant item 0 inside with prob 1/2 (AP 1/2), else AP 0.
    assert mean_average_precision(q, ql, db, dl, top_k=2, tie_aware=True) == pytest.approx(0.25)


def test_map_perfect_and_none_relevant():
    q = np.array([[1, 1, -1]])
    db = np.array([[1, 1, -1], [1, 1, -1], [-1, -1, 1]])
    assert mean_average_precision(q, [0], db, [0, 0, 1]) == pytest.approx(1.0)
    assert mean_average_precision(q, [5], db, [0, 0, 1]) == 0.0
    assert mean_average_precision(q, [5], db, [0, 0, 1], tie_aware=True) == 0.0


def test_map_formats_agree():
    rng = np.random.default_rng(3)
    qc, ql, dc, dl = _case(rng, 7, 30, 6, 4, False, pm=False)
    ref = mean_average_precision(qc, ql, dc, dl)
    assert mean_average_precision(2 * qc - 1, ql, 2 * dc - 1, dl) == ref
    assert mean_average_precision(qc.astype(bool), ql, dc.astype(np.float32), dl) == ref
    onehot = np.eye(4, dtype=int)
    assert mean_average_precision(qc, onehot[ql], dc, onehot[dl]) == pytest.approx(ref)
    assert mean_average_precision(qc, ql, dc, onehot[dl]) == pytest.approx(ref)
    torch = pytest.importorskip("torch")
    assert mean_average_precision(torch.tensor(qc), torch.tensor(ql), dc, dl) == ref


def test_map_chunking_and_wide_codes(monkeypatch):
    import ssah.metrics as m
    rng = np.random.default_rng(5)
    qc, ql, dc, dl = _case(rng, 11, 50, 70, 3, True)   # > 64 bits: two packed words
    whole = [mean_average_precision(qc, ql, dc, dl, top_k=k, tie_aware=t)
             for k in (None, 13) for t in (False, True)]
    monkeypatch.setattr(m, "_CHUNK_ELEMENTS", 60)         # one query per chunk
    chunked = [mean_average_precision(qc, ql, dc, dl, top_k=k, tie_aware=t)
               for k in (None, 13) for t in (False, True)]
    assert chunked == pytest.approx(whole, abs=1e-12)
    assert whole[0] == pytest.approx(ref_map(qc, ql, dc, dl), abs=1e-12)
    d = hamming_distances(qc, dc)
    assert d[3, 7] == _dist(qc[3], dc[7])


# ----------------------------------------------------------------------------- tie-aware

@pytest.mark.parametrize("seed,multilabel", CASES[:8])
@pytest.mark.parametrize("top_k", [None, 1, 2, 3, 4])
def test_tie_aware_matches_exhaustive_permutations(seed, multilabel, top_k):
    rng = np.random.default_rng(100 + seed)
    qc, ql, dc, dl = _case(rng, 3, 6, 2, 2, multilabel)   # 2 bits, 6 items: big ties
    got = mean_average_precision(qc, ql, dc, dl, top_k=top_k, tie_aware=True)
    assert got == pytest.approx(ref_map_tie_aware(qc, ql, dc, dl, top_k), abs=1e-12)


@pytest.mark.parametrize("top_k", [None, 37])
def test_tie_aware_matches_monte_carlo(top_k):
    rng = np.random.default_rng(7)
    qc, ql, dc, dl = _case(rng, 4, 120, 3, 3, False)
    exact = mean_average_precision(qc, ql, dc, dl, top_k=top_k, tie_aware=True)
    vals = []
    for _ in range(1500):
        perm = rng.permutation(len(dc))        # random database order = random tie order
        vals.append(mean_average_precision(qc, ql, dc[perm], dl[perm], top_k=top_k))
    se = np.std(vals) / math.sqrt(len(vals))
    assert abs(np.mean(vals) - exact) < 4 * se + 1e-9
    assert exact != pytest.approx(mean_average_precision(qc, ql, dc, dl, top_k=top_k))


def test_tie_aware_without_ties_equals_plain():
    q = np.array([[0, 0, 0, 0]])
    db = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    assert sorted(hamming_distances(q, db)[0]) == [0, 1, 2, 3, 4]   # no ties at all
    dl = np.array([1, 0, 1, 1, 0])
    for k in (None, 1, 2, 3, 4):
        plain = mean_average_precision(q, [1], db, dl, top_k=k)
        assert mean_average_precision(q, [1], db, dl, top_k=k, tie_aware=True) == \
            pytest.approx(plain, abs=1e-12)
    assert mean_average_precision(q, [1], db[:1], [1], tie_aware=True) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- other metrics

@pytest.mark.parametrize("seed,multilabel", CASES)
def test_precision_at_n_matches_reference(seed, multilabel):
    rng = np.random.default_rng(200 + seed)
    qc, ql, dc, dl = _case(rng, 8, 35, 5, 3, multilabel)
    ns = [1, 2, 5, 10, 35]
    got = precision_at_n(qc, ql, dc, dl, ns)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, ref_p_at_n(qc, ql, dc, dl, ns), atol=1e-12)
    assert precision_at_n(qc, ql, dc, dl, 5).shape == ()


@pytest.mark.parametrize("seed,multilabel", CASES)
def test_pr_curve_and_radius_match_reference(seed, multilabel):
    rng = np.random.default_rng(300 + seed)
    qc, ql, dc, dl = _case(rng, 8, 30, 6, 3, multilabel, pm=seed % 2 == 1)
    P, R = precision_recall_curve(qc, ql, dc, dl)
    rP, rR = ref_pr(qc, ql, dc, dl)
    np.testing.assert_allclose(P, rP, atol=1e-12)
    np.testing.assert_allclose(R, rR, atol=1e-12)
    assert P.shape == R.shape == (7,)
    assert np.all(np.diff(R) >= -1e-12)
    for radius in (0, 2, 6, 10):
        assert precision_within_radius(qc, ql, dc, dl, radius) == pytest.approx(
            rP[min(radius, 6)], abs=1e-12)


def test_radius_empty_set_counts_zero():
    q = np.array([[1, 1, 1, 1]])
    db = np.array([[-1, -1, -1, 1]])
    assert precision_within_radius(q, [0], db, [0], radius=2) == 0.0
    assert precision_within_radius(q, [0], db, [0], radius=3) == 1.0


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("fn", [mean_average_precision, precision_recall_curve,
                                precision_within_radius])
def test_invalid_inputs(fn):
    q = np.array([[1, -1, 1]])
    db = np.array([[1, -1, 1], [-1, -1, 1]])
    with pytest.raises(DataError, match="width"):
        fn(q, [0], db[:, :2], [0, 1])
    with pytest.raises(DataError, match="values"):
        fn(np.array([[1, 2, 1]]), [0], db, [0, 1])
    with pytest.raises(DataError, match="NaN"):
        fn(np.array([[1.0, np.nan, 1.0]]), [0], db, [0, 1])
    with pytest.raises(DataError, match="mixes"):
        fn(np.array([[1, -1, 0]]), [0], db, [0, 1])
    with pytest.raises(DataError, match="labels for"):
        fn(q, [0, 1], db, [0, 1])
    with pytest.raises(DataError, match="2-d"):
        fn(q[0], [0], db, [0, 1])
    with pytest.raises(DataError, match="empty"):
        fn(q[:0], [], db, [0, 1])
    with pytest.raises(DataError, match="NaN"):
        fn(q, [np.nan], db, [0, 1])
    with pytest.raises(DataError, match="label width"):
        fn(q, [[1, 0]], db, [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(DataError, match="0 and 1"):
        fn(q, [[1, -1]], db, [[1, 0], [0, 1]])
    with pytest.raises(DataError):
        fn(q, ["a"], db, [0, 1])


def test_invalid_parameters():
    q = np.array([[1, -1, 1]])
    db = np.array([[1, -1, 1], [-1, -1, 1]])
    for k in (0, -1, 2.5, True):
        with pytest.raises(ConfigError):
            mean_average_precision(q, [0], db, [0, 1], top_k=k)
    with pytest.raises(ConfigError):
        precision_at_n(q, [0], db, [0, 1], [3])
    with pytest.raises(ConfigError):
        precision_at_n(q, [0], db, [0, 1], [0])
    with pytest.raises(ConfigError):
        precision_within_radius(q, [0], db, [0, 1], radius=-1)
    assert issubclass(ConfigError, SSAHError) and issubclass(DataError, SSAHError)


def test_tie_aware_precision_at_n_closed_form():
    # one query at distance 0 from all 4 items, 1 of them relevant: each position is
    # relevant with probability 1/4, so P@N = 1/4 for every N, whatever the database order
    q = np.array([[0, 0]])
    db = np.zeros((4, 2), int)
    dl = np.array([0, 0, 0, 1])
    assert precision_at_n(q, [1], db, dl, [1, 2, 4]).tolist() == [0.0, 0.0, 0.25]
    got = precision_at_n(q, [1], db, dl, [1, 2, 4], tie_aware=True)
    assert got == pytest.approx([0.25, 0.25, 0.25], abs=1e-12)


@pytest.mark.parametrize("seed,multilabel", CASES[:6])
def test_tie_aware_precision_at_n_matches_exhaustive_permutations(seed, multilabel):
    rng = np.random.default_rng(300 + seed)
    qc, ql, dc, dl = _case(rng, 3, 6, 2, 2, multilabel)   # 2 bits, 6 items: big ties
    ns = [1, 2, 3, 5, 6]
    ref = np.mean([ref_p_at_n(qc, ql, dc[list(p)], dl[list(p)], ns)
                   for p in itertools.permutations(range(len(dc)))], axis=0)
    got = precision_at_n(qc, ql, dc, dl, ns, tie_aware=True)
    assert got == pytest.approx(ref, abs=1e-12)
