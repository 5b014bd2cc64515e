"""ssah.index: every engine against a numpy brute force, persistence, validation, CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ssah.errors import DataError, IndexFileError, SSAHError
from ssah.index import HammingIndex, pack_codes
from ssah.index.base import brute_force_knn, brute_force_range
from ssah.index.flat import padded_bytes


def _milvus_skip_reason():
    try:
        from ssah.index.milvus import import_pymilvus
        import_pymilvus(local=True)
    except SSAHError as e:
        return str(e)
    return None


MILVUS_SKIP = _milvus_skip_reason()
needs_milvus = pytest.mark.skipif(MILVUS_SKIP is not None, reason=f"milvus unavailable: {MILVUS_SKIP}")


def engine_params(with_milvus=True):
    # "mih" keeps its default memory budget (tables or, when they do not fit, a scan);
    # "mih-tables" lifts the budget so that the tables are always what is searched
    out = ["flat", "mih", "mih-tables", pytest.param("ivf", id="ivf-exhaustive")]
    if with_milvus:
        out.append(pytest.param("milvus", marks=needs_milvus))
    return out


def make_index(engine, bits, tmp_path, **kw):
    if engine == "milvus":
        kw.setdefault("uri", str(tmp_path / f"m{bits}.db"))
    if engine == "ivf":
        kw.setdefault("nlist", 8)
        kw.setdefault("nprobe", 8)   # every cell: exhaustive, hence exact
    if engine == "mih-tables":
        engine = "mih"
        kw.setdefault("memory_budget", None)
    return HammingIndex(bits, engine=engine, **kw)


def tied_codes(rng, n, bits, centres=6, flip=0.08):
    """Codes near a few centres: many exact duplicates and equal distances."""
    c = rng.integers(0, 2, (centres, bits))
    codes = c[rng.integers(0, centres, n)]
    return np.where(rng.random((n, bits)) < flip, 1 - codes, codes)


def reference(q_bits, db_bits, db_ids, k):
    d, p = brute_force_knn(pack_codes(q_bits), pack_codes(db_bits), k)
    ids = np.where(p >= 0, db_ids[np.maximum(p, 0)], -1)
    return d, ids


def assert_same(a, b, ties_exact=True):
    np.testing.assert_array_equal(a[0], b[0])
    if ties_exact:
        np.testing.assert_array_equal(a[1], b[1])
    else:   # ids may differ only inside groups of equal distance; rows stay id-sorted there
        for d, i in zip(*a):
            d, i = d[i >= 0], i[i >= 0]
            same = np.diff(d) == 0
            assert (np.diff(i)[same] > 0).all()


# ---------------------------------------------------------------------------------------------
# exact search against brute force
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", engine_params())
@pytest.mark.parametrize("bits", [8, 12, 16, 48])
def test_knn_range_and_removal_match_brute_force(engine, bits, tmp_path):
    rng = np.random.default_rng(bits)
    n = 700 if engine == "milvus" else 1500
    db = tied_codes(rng, n, bits) if bits > 16 else rng.integers(0, 2, (n, bits))
    q = np.concatenate([db[:5], tied_codes(rng, 20, bits)])     # exact hits and near misses
    index = make_index(engine, bits, tmp_path)
    exact = engine != "ivf"   # exhaustive ivf: exact distances, arbitrary ids within ties
    try:
        first = index.add(db[:n // 2] * 2 - 1)                 # {-1, +1}
        second = index.add(db[n // 2:].astype(bool))            # bool
        ids = np.concatenate([first, second])
        assert np.array_equal(ids, np.arange(n)) and len(index) == n
        for k in (1, 10, 100, n + 40):
            got = index.search(q, k)
            assert got[0].shape == (len(q), k) and got[1].dtype == np.int64
            assert_same(got, reference(q, db, ids, k), exact)
        if n + 40 > n:
            assert (index.search(q, n + 40)[1][:, n:] == -1).all()
        for radius in (0, 2, bits // 4):
            got = index.range_search(q, radius)
            want = brute_force_range(pack_codes(q), pack_codes(db), radius)
            assert len(got) == len(q)
            for (gd, gi), (wd, wp) in zip(got, want):
                np.testing.assert_array_equal(gd, wd)
                np.testing.assert_array_equal(gi, ids[wp])
        gone = rng.choice(ids, n // 3, replace=False)
        assert index.remove(gone) == len(gone)
        keep = ~np.isin(ids, gone)
        assert len(index) == keep.sum()
        for k in (1, 10, 100):
            assert_same(index.search(q, k), reference(q, db[keep], ids[keep], k), exact)
        # ids below the largest one: rows are re-sorted by id
        extra = tied_codes(rng, 50, bits)
        new_ids = np.sort(gone)[:50][::-1].copy()
        index.add(extra, ids=new_ids)
        all_ids = np.concatenate([ids[keep], new_ids])
        all_db = np.concatenate([db[keep], extra])
        order = np.argsort(all_ids)
        assert np.array_equal(index.ids, all_ids[order])
        assert_same(index.search(q, 10), reference(q, all_db[order], all_ids[order], 10), exact)
    finally:
        index.close()


@pytest.mark.parametrize("bits", [64, 100, 130])
def test_mih_wide_codes_and_table_layouts(bits):
    rng = np.random.default_rng(7)
    db = tied_codes(rng, 3000, bits, centres=20, flip=0.05)
    q = tied_codes(rng, 30, bits, centres=20, flip=0.05)
    ids = np.arange(len(db))
    for options in ({}, {"substrings": 1}, {"substrings": 2}, {"substrings": 7},
                    {"scan_factor": 1e9}):
        index = HammingIndex(bits, engine="mih", memory_budget=None, **options)
        index.add(db)
        for k in (1, 17, 200):
            assert_same(index.search(q, k), reference(q, db, ids, k))
        (d, i), = index.range_search(q[:1], 6)
        want = brute_force_range(pack_codes(q[:1]), pack_codes(db), 6)[0]
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(i, want[1])
    assert index.stats()["engine_stats"]["distinct_codes"] <= len(db)


@pytest.mark.parametrize("budget", ["auto", None])
def test_mih_uniform_codes_and_single_query(budget):
    rng = np.random.default_rng(3)
    db = rng.integers(0, 2, (20000, 32))
    q = rng.integers(0, 2, (5, 32))
    index = HammingIndex(32, engine="mih", memory_budget=budget)
    index.add(db)
    ids = np.arange(len(db))
    for k in (1, 10, 100):
        assert_same(index.search(q, k), reference(q, db, ids, k))
    assert_same(index.search(q[0], 5), reference(q[:1], db, ids, 5))
    (d, i), = index.range_search(q[:1], 9)
    want = brute_force_range(pack_codes(q[:1]), pack_codes(db), 9)[0]
    np.testing.assert_array_equal(d, want[0])
    np.testing.assert_array_equal(i, want[1])
    # no repeats: the tables (4-byte entries per code and table, plus groups) exceed
    # bits / 8 + 8 bytes per item, so the default budget holds the codes in a scan
    assert index.stats()["engine_stats"]["mode"] == ("scan" if budget else "tables")


def test_mih_memory_budget_picks_tables_or_scan_and_is_kept():
    """The structures stay within the budget: heavily repeated codes keep their tables,
    barely repeated ones fall back to the scan, and the layout follows the data across
    removals and additions; results stay those of the brute force throughout."""
    rng = np.random.default_rng(11)
    bits = 48
    clustered = tied_codes(rng, 6000, bits, centres=8, flip=0.02)
    uniform = rng.integers(0, 2, (6000, bits))
    q = np.concatenate([tied_codes(rng, 10, bits, centres=8, flip=0.02), uniform[:5]])
    index = HammingIndex(bits, engine="mih")
    engine = index._engine

    def check(db):
        ids = index.ids
        assert_same(index.search(q, 10), reference(q, db, ids, 10))
        mem = engine.memory_bytes()
        assert mem <= (bits / 8 + 8) * len(index), mem / len(index)
        return index.stats()["engine_stats"]["mode"]

    index.add(clustered)
    assert check(clustered) == "tables"
    t = engine._tables
    # the estimate the budget is checked against is what the build allocates
    from ssah.index.mih import _table_bytes
    assert _table_bytes(len(engine._uniq), t["lengths"], t["direct"]) == (
        t["tab"].nbytes + t["offsets"].nbytes + t["skeys"].nbytes)
    index.add(uniform)
    assert check(np.concatenate([clustered, uniform])) == "scan"
    index.remove(np.arange(6000, 12000))
    assert check(clustered) == "tables"
    # a budget of 2 bytes per item is below even the codes: always the scan
    small = HammingIndex(bits, engine="mih", memory_budget=2)
    small.add(clustered)
    assert small.stats()["engine_stats"]["mode"] == "scan"
    assert_same(small.search(q, 7), reference(q, clustered, np.arange(len(clustered)), 7))
    # the budget travels with a saved index
    assert small._engine.options()["memory_budget"] == 2.0


@pytest.mark.parametrize("bad", [0, -3, "lots", float("nan"), float("inf")])
def test_mih_memory_budget_rejects_bad_values(bad):
    with pytest.raises(SSAHError, match="memory_budget"):
        HammingIndex(16, engine="mih", memory_budget=bad)



def test_mih_reused_workspace_stays_exact():
    """Small batches reuse one workspace (stamped 'visited' marks): interleaving them with
    big batches, range searches, removals and a stamp wrap-around must not change results."""
    import ssah.index.mih as mih_mod
    rng = np.random.default_rng(4)
    db = tied_codes(rng, 3000, 24, centres=5, flip=0.05)
    q = tied_codes(rng, 40, 24, centres=5, flip=0.05)
    ids = np.arange(len(db))
    index = HammingIndex(24, engine="mih", memory_budget=None)
    index.add(db)
    engine = index._engine
    for i in range(len(q)):   # single queries: the serial path, stamps 1, 2, ...
        assert_same(index.search(q[i:i + 1], 7), reference(q[i:i + 1], db, ids, 7))
    assert engine._work["stamp"] == len(q)
    assert mih_mod.SERIAL_QUERIES < len(q)
    assert_same(index.search(q, 7), reference(q, db, ids, 7))          # the parallel path
    engine._work["stamp"] = 2**32 - 3                                   # next batch wraps
    assert_same(index.search(q[:5], 3), reference(q[:5], db, ids, 3))
    assert engine._work["stamp"] == 5
    got = index.range_search(q[:3], 4)
    for i, (d, found) in enumerate(got):
        rd, rp = brute_force_range(pack_codes(q[i:i + 1]), pack_codes(db), 4)[0]
        np.testing.assert_array_equal(d, rd)
        np.testing.assert_array_equal(found, ids[rp])
    index.remove(np.arange(0, 3000, 3))
    keep = np.setdiff1d(ids, np.arange(0, 3000, 3))
    assert engine._work is None                                          # rebuilt with the tables
    for i in range(3):
        assert_same(index.search(q[i:i + 1], 7), reference(q[i:i + 1], db[keep], keep, 7))

def test_flat_padding_and_single_query_ties():
    assert [padded_bytes(b) for b in (8, 12, 16, 24, 32, 48, 64, 96, 128, 200)] == \
        [4, 4, 4, 4, 4, 8, 8, 16, 16, 32]
    assert padded_bytes(48, "none") == 6 and padded_bytes(12, 16) == 2
    rng = np.random.default_rng(1)
    db = rng.integers(0, 2, (200000, 8))
    for pad in ("auto", "none"):
        index = HammingIndex(8, pad=pad)
        index.add_packed(pack_codes(db))
        q = rng.integers(0, 2, (1, 8))
        assert_same(index.search(q, 1000), reference(q, db, np.arange(len(db)), 1000))
    with pytest.raises(SSAHError, match="pad"):
        HammingIndex(12, pad=12)


def test_ivf_is_approximate_but_sorted():
    rng = np.random.default_rng(2)
    db = tied_codes(rng, 5000, 64, centres=30, flip=0.05)
    q = tied_codes(rng, 50, 64, centres=30, flip=0.05)
    index = HammingIndex(64, engine="ivf", nlist=32, nprobe=2)
    assert not index.exact
    index.add(db)
    d, i = index.search(q, 10)
    want = reference(q, db, np.arange(len(db)), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, want[1])])
    assert recall > 0.5
    for dr, ir in zip(d, i):
        ok = ir >= 0
        assert (np.diff(dr[ok]) >= 0).all()
        same = np.diff(dr[ok]) == 0
        assert (np.diff(ir[ok])[same] > 0).all()
    assert index.stats()["engine_stats"]["nlist"] == 32


# ---------------------------------------------------------------------------------------------
# ids, metadata, filters
# ---------------------------------------------------------------------------------------------
def test_custom_ids_metadata_and_duplicates():
    rng = np.random.default_rng(4)
    index = HammingIndex(16)
    codes = rng.integers(0, 2, (3, 16))
    out = index.add(codes, ids=[100, 5, 50],
                    metadata={"label": [1, 2, 3], "path": ["a.jpg", "b.jpg", "c.jpg"]})
    assert out.tolist() == [100, 5, 50]
    assert index.ids.tolist() == [5, 50, 100]
    assert index.add(codes[:2]).tolist() == [101, 102]       # continues after the largest
    meta = index.metadata_of([50, 101, 5])
    assert meta["label"].tolist() == [3, -1, 2]
    assert meta["path"].tolist() == ["c.jpg", "", "b.jpg"]
    np.testing.assert_array_equal(index.codes_of([100]), codes[:1])
    index.add(codes[:1], ids=[7], metadata={"score": [0.5]})  # a new column: old rows filled
    assert np.isnan(index.metadata_of([5])["score"][0])
    with pytest.raises(SSAHError, match="already in the index"):
        index.add(codes[:1], ids=[5])
    with pytest.raises(SSAHError, match="duplicate ids"):
        index.add(codes[:2], ids=[9, 9])
    with pytest.raises(SSAHError, match=">= 0"):
        index.add(codes[:1], ids=[-3])
    with pytest.raises(SSAHError, match="unknown ids"):
        index.metadata_of([999])
    with pytest.raises(SSAHError, match="metadata column 'label' has 1 values"):
        index.add(codes[:2], metadata={"label": [1]})
    with pytest.raises(SSAHError, match="unknown ids"):
        index.remove([5, 999])
    assert 5 in index                                         # nothing removed on error
    assert index.remove([5, 999], missing="ignore") == 1
    assert 5 not in index and 50 in index


def test_dict_filter_matches_brute_force_on_subset():
    rng = np.random.default_rng(5)
    db = tied_codes(rng, 3000, 24)
    labels = rng.integers(0, 4, len(db))
    multi = (rng.random((len(db), 5)) < 0.3).astype(np.int8)
    q = tied_codes(rng, 10, 24)
    for engine in ("flat", "mih"):
        index = HammingIndex(24, engine=engine)
        index.add(db, metadata={"label": labels, "tags": multi})
        sel = labels == 2
        assert_same(index.search(q, 15, filter={"label": 2}),
                     reference(q, db[sel], np.flatnonzero(sel), 15))
        sel = np.isin(labels, [0, 3]) & (multi[:, 1] | multi[:, 4]).astype(bool)
        assert_same(index.search(q, 15, filter={"label": [0, 3], "tags": [1, 4]}),
                     reference(q, db[sel], np.flatnonzero(sel), 15))
        got = index.range_search(q, 3, filter={"label": 1})
        want = brute_force_range(pack_codes(q), pack_codes(db[labels == 1]), 3)
        for (gd, gi), (wd, wp) in zip(got, want):
            np.testing.assert_array_equal(gd, wd)
            np.testing.assert_array_equal(gi, np.flatnonzero(labels == 1)[wp])
        assert (index.search(q, 3, filter={"label": 9})[1] == -1).all()
        with pytest.raises(SSAHError, match="unknown metadata column"):
            index.search(q, 3, filter={"colour": 1})
        with pytest.raises(SSAHError, match="milvus"):
            index.search(q, 3, filter="label == 1")


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def test_input_validation():
    index = HammingIndex(12)
    good = np.zeros((2, 12))
    with pytest.raises(SSAHError, match="13 bits per code"):
        index.add(np.zeros((2, 13)))
    bad = good.copy()
    bad[0, 3] = np.nan
    with pytest.raises(SSAHError, match="NaN"):
        index.add(bad)
    with pytest.raises(SSAHError, match=r"\{-1, \+1\}"):
        index.add(good + 2)
    with pytest.raises(SSAHError, match="2-D"):
        index.add(np.zeros((2, 3, 12)))
    with pytest.raises(SSAHError, match="do not hold 12-bit"):
        index.add_packed(np.zeros((2, 3), np.uint8))
    index.add(good)
    for k in (0, -1, 2.5, True):
        with pytest.raises(SSAHError, match="k must be"):
            index.search(good, k)
    with pytest.raises(SSAHError, match="radius"):
        index.range_search(good, -1)
    with pytest.raises(SSAHError, match="11 bits per code"):
        index.search(np.zeros((1, 11)), 1)
    with pytest.raises(SSAHError, match="unknown index engine"):
        HammingIndex(12, engine="annoy")
    with pytest.raises(SSAHError, match="no option"):
        HammingIndex(12, engine="mih", nprobe=3)
    with pytest.raises(SSAHError, match="bits"):
        HammingIndex(0)
    # padding bits of packed input are ignored
    packed = np.full((1, 2), 0xFF, np.uint8)
    index.add_packed(packed, ids=[10])
    assert index.codes_of([10]).sum() == 12
    assert index.search_ids([10], 1)[0][0, 0] == 0


def test_empty_index_pads():
    index = HammingIndex(16, engine="mih")
    d, i = index.search(np.zeros((2, 16)), 3)
    assert (d == -1).all() and (i == -1).all()
    assert [len(x[0]) for x in index.range_search(np.zeros((2, 16)), 4)] == [0, 0]


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["flat", "mih", "ivf"])
def test_save_load_round_trip(engine, tmp_path):
    rng = np.random.default_rng(6)
    db = tied_codes(rng, 2000, 48)
    labels = (rng.random((len(db), 10)) < 0.2).astype(np.uint8)
    paths = [f"img/{i}/ü.jpg" for i in range(len(db))]
    index = make_index(engine, 48, tmp_path)
    index.add(db, ids=np.arange(0, 4000, 2), metadata={"label": labels, "path": paths})
    index.remove([0, 2, 4])
    q = tied_codes(rng, 10, 48)
    want = index.search(q, 20)
    target = index.save(tmp_path / "idx")
    assert target == tmp_path / "idx" / "index.ssah"
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    back = HammingIndex.load(tmp_path / "idx", bits=48)
    assert back.engine == engine and len(back) == len(index)
    assert_same(back.search(q, 20), want, engine != "ivf")   # ivf re-trains when loaded
    np.testing.assert_array_equal(back.ids, index.ids)
    meta = back.metadata_of([6, 3998])
    np.testing.assert_array_equal(meta["label"], labels[[3, 1999]])
    assert meta["path"].tolist() == ["img/3/ü.jpg", "img/1999/ü.jpg"]
    # same data under another engine; single-file form; overwrite in place
    other = HammingIndex.load(tmp_path / "idx", engine="mih")
    assert other.engine == "mih"
    assert_same(other.search(q, 20), want, engine != "ivf")
    index.save(tmp_path / "single.ssah")
    assert len(HammingIndex.load(tmp_path / "single.ssah")) == len(index)
    index.remove([6])
    index.save(tmp_path / "idx")
    assert len(HammingIndex.load(tmp_path / "idx")) == len(index)


def test_corrupt_truncated_and_foreign_files(tmp_path):
    index = HammingIndex(16)
    index.add(np.random.default_rng(0).integers(0, 2, (500, 16)), metadata={"label": np.arange(500)})
    f = index.save(tmp_path / "good")
    raw = f.read_bytes()

    def write(name, data):
        d = tmp_path / name
        d.mkdir()
        (d / "index.ssah").write_bytes(data)
        return d

    flipped = bytearray(raw)
    flipped[-100] ^= 0x40
    with pytest.raises(IndexFileError, match=r"flipped.*checksum mismatch"):
        HammingIndex.load(write("flipped", bytes(flipped)))
    with pytest.raises(IndexFileError, match=r"cut.*truncated"):
        HammingIndex.load(write("cut", raw[:len(raw) // 2]))
    with pytest.raises(IndexFileError, match="truncated"):
        HammingIndex.load(write("tiny", raw[:12]))
    with pytest.raises(IndexFileError, match="not an ssah index"):
        HammingIndex.load(write("foreign", b"PK\x03\x04" + b"\0" * 200))
    with pytest.raises(IndexFileError, match="not an ssah index"):
        HammingIndex.load(write("empty", b""))
    head = bytearray(raw)
    head[30] ^= 0x01
    with pytest.raises(IndexFileError, match="header checksum"):
        HammingIndex.load(write("header", bytes(head)))
    with pytest.raises(IndexFileError, match="trailing"):
        HammingIndex.load(write("longer", raw + b"x"))
    with pytest.raises(IndexFileError, match="holds 16-bit codes, expected 32"):
        HammingIndex.load(tmp_path / "good", bits=32)
    with pytest.raises(IndexFileError, match="no index.ssah"):
        HammingIndex.load(tmp_path)
    with pytest.raises(IndexFileError, match="not found"):
        HammingIndex.load(tmp_path / "nowhere.ssah")


# ---------------------------------------------------------------------------------------------
# milvus
# ---------------------------------------------------------------------------------------------
@needs_milvus
def test_milvus_filters_and_reload(tmp_path):
    rng = np.random.default_rng(8)
    db = tied_codes(rng, 600, 12)
    labels = rng.integers(0, 4, len(db))
    paths = [f"p{i}.jpg" for i in range(len(db))]
    q = tied_codes(rng, 8, 12)
    index = HammingIndex(12, engine="milvus", uri=str(tmp_path / "idx" / "milvus.db"))
    index.add(db, metadata={"label": labels, "path": paths})
    sel = labels == 3
    want = reference(q, db[sel], np.flatnonzero(sel), 10)
    assert_same(index.search(q, 10, filter="label == 3"), want)
    assert_same(index.search(q, 10, filter={"label": 3}), want)
    sel = np.isin(np.arange(len(db)), [1, 2, 3])
    assert_same(index.search(q, 10, filter='path in ["p1.jpg", "p2.jpg", "p3.jpg"]'),
                reference(q, db[sel], np.flatnonzero(sel), 10))
    assert index.stats()["engine_stats"]["dim"] == 16           # 12 bits padded to 16
    index.save(tmp_path / "idx")
    index.close()
    back = HammingIndex.load(tmp_path / "idx")
    try:
        assert back.engine == "milvus"
        assert_same(back.search(q, 10, filter="label == 3"), want)
    finally:
        back.close()


def test_milvus_missing_extra_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(SSAHError, match=r"pip install 'ssah\[milvus\]'"):
        HammingIndex(16, engine="milvus")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _run(argv, capsys):
    from ssah.index import commands
    args = commands.build_parser().parse_args(argv)
    rc = args.func(args)
    return rc, capsys.readouterr().out


def _codes_file(path, codes, **extra):
    np.savez(path, codes=pack_codes(codes), bits=np.int64(codes.shape[1]), **extra)
    return str(path)


def test_cli_build_add_remove_stats_search(tmp_path, capsys):
    rng = np.random.default_rng(9)
    codes = tied_codes(rng, 300, 24)
    a = _codes_file(tmp_path / "a.npz", codes[:200], ids=np.arange(200),
                    labels=rng.integers(0, 5, 200),
                    paths=np.array([f"a/{i}.jpg" for i in range(200)]))
    b = _codes_file(tmp_path / "b.npz", codes[200:], ids=np.arange(200, 300),
                    labels=rng.integers(0, 5, 100))
    out = str(tmp_path / "idx")
    rc, text = _run(["index", "build", "--codes", a, b, "--out", out, "--engine", "mih"], capsys)
    assert rc == 0 and "indexed 300 codes of 24 bits" in text
    rc, text = _run(["search", "--index", out, "--id", "7", "-k", "5", "--json"], capsys)
    res = json.loads(text)["results"]
    assert res[0]["id"] == 7 and res[0]["distance"] == 0 and res[0]["path"] == "a/7.jpg"
    want = reference(codes[7:8], codes, np.arange(300), 5)
    assert [r["id"] for r in res] == want[1][0].tolist()
    code = "".join(map(str, codes[250]))
    rc, text = _run(["search", "--index", out, "--code", code, "-k", "3"], capsys)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["rank", "id", "distance"] and len(lines) == 4
    assert lines[1].split()[2] == "0"
    rc, text = _run(["index", "remove", "--index", out, "--ids", "1", "2"], capsys)
    assert "removed 2 items (298 left)" in text
    c = _codes_file(tmp_path / "c.npz", tied_codes(rng, 10, 24))
    rc, text = _run(["index", "add", "--index", out, "--codes", c], capsys)
    assert "(308 in all)" in text
    rc, text = _run(["index", "stats", "--index", out, "--json"], capsys)
    stats = json.loads(text)
    assert stats["count"] == 308 and stats["engine"] == "mih" and stats["id_range"] == [0, 309]
    rc, text = _run(["index", "stats", "--index", out], capsys)
    assert "count" in text and "308" in text
    rc, text = _run(["search", "--index", out, "--id", "7", "--radius", "3", "--json"], capsys)
    dists = [r["distance"] for r in json.loads(text)["results"]]
    assert dists == sorted(dists) and max(dists) <= 3


def test_cli_mih_memory_budget(tmp_path, capsys):
    rng = np.random.default_rng(12)
    codes = rng.integers(0, 2, (3000, 32))          # uniform: the tables exceed the budget
    a = _codes_file(tmp_path / "a.npz", codes)
    modes = {}
    for budget in (None, "none", "40"):
        out = str(tmp_path / f"idx-{budget}")
        extra = [] if budget is None else ["--memory-budget", budget]
        _run(["index", "build", "--codes", a, "--out", out, "--engine", "mih", *extra], capsys)
        rc, text = _run(["index", "stats", "--index", out, "--json"], capsys)
        stats = json.loads(text)
        modes[budget] = (stats["engine_stats"]["mode"], stats["engine_options"]["memory_budget"])
        if budget is None:      # the scan holds 4 bytes per 32-bit code, counted once built
            assert stats["bytes_per_item"] == 4.0
        rc, text = _run(["search", "--index", out, "--id", "5", "-k", "4", "--json"], capsys)
        got = [r["id"] for r in json.loads(text)["results"]]
        assert got == reference(codes[5:6], codes, np.arange(3000), 4)[1][0].tolist()
    assert modes == {None: ("scan", "auto"), "none": ("tables", None), "40": ("tables", 40.0)}
    with pytest.raises(SSAHError, match="memory_budget"):
        _run(["index", "build", "--codes", a, "--out", str(tmp_path / "x"), "--engine", "mih",
              "--memory-budget", "-1"], capsys)
    with pytest.raises(SSAHError, match="option of the mih engine"):
        _run(["index", "build", "--codes", a, "--out", str(tmp_path / "x"),
              "--memory-budget", "10"], capsys)


def test_cli_errors(tmp_path, capsys):
    rng = np.random.default_rng(10)
    a = _codes_file(tmp_path / "a.npz", rng.integers(0, 2, (20, 16)), ids=np.arange(20))
    b = _codes_file(tmp_path / "b.npz", rng.integers(0, 2, (20, 32)))
    c = _codes_file(tmp_path / "c.npz", rng.integers(0, 2, (5, 16)), ids=np.arange(15, 20))
    out = str(tmp_path / "idx")
    with pytest.raises(DataError, match="disagree on bits"):
        _run(["index", "build", "--codes", a, b, "--out", out], capsys)
    with pytest.raises(DataError, match="share ids"):
        _run(["index", "build", "--codes", a, c, "--out", out], capsys)
    with pytest.raises(DataError, match="not found"):
        _run(["index", "build", "--codes", str(tmp_path / "none.npz"), "--out", out], capsys)
    np.savez(tmp_path / "bad.npz", codes=np.zeros((3, 5), np.uint8), bits=np.int64(16))
    with pytest.raises(DataError, match="not packed 16-bit"):
        _run(["index", "build", "--codes", str(tmp_path / "bad.npz"), "--out", out], capsys)
    _run(["index", "build", "--codes", a, "--out", out], capsys)
    with pytest.raises(SSAHError, match="15 bits"):
        _run(["search", "--index", out, "--code", "0" * 15], capsys)
    with pytest.raises(SSAHError, match="exactly one query"):
        _run(["search", "--index", out], capsys)
    with pytest.raises(SSAHError, match="unknown ids"):
        _run(["index", "remove", "--index", out, "--ids", "99"], capsys)
    with pytest.raises(IndexFileError):
        _run(["index", "stats", "--index", str(tmp_path)], capsys)


def test_search_command_image_hook(tmp_path, capsys):
    from ssah.index import commands
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 2, (50, 16))
    a = _codes_file(tmp_path / "a.npz", codes)
    out = str(tmp_path / "idx")
    _run(["index", "build", "--codes", a, "--out", out], capsys)
    args = commands.build_parser().parse_args(["search", "--index", out, "-k", "2", "--json"])
    args.image = "q.jpg"
    rc = commands.search_command(args, encode_image=lambda path: codes[3] * 2 - 1)
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["results"][0]["id"] == 3 and res["query"]["image"] == "q.jpg"


def test_cli_main_wiring(tmp_path, capsys):
    cli = pytest.importorskip("ssah.cli")
    rng = np.random.default_rng(12)
    a = _codes_file(tmp_path / "a.npz", rng.integers(0, 2, (30, 16)))
    assert cli.main(["index", "build", "--codes", a, "--out", str(tmp_path / "i")]) == 0
    assert cli.main(["search", "--index", str(tmp_path / "i"), "--id", "4", "-k", "1"]) == 0
    assert cli.main(["search", "--index", str(tmp_path / "nowhere"), "--id", "4"]) == 2
    assert "ssah: error:" in capsys.readouterr().err


def test_benchmark_quick_run(tmp_path):
    from ssah.bench import search
    out = tmp_path / "README.md"
    rc = search.main(["--sizes", "3000", "--bits", "16,48", "--data", "clustered,uniform",
                      "--ks", "1,10", "--queries", "20", "--engines", "flat,mih,mih-tables,ivf",
                      "--out", str(out)])
    text = out.read_text()
    assert rc == 0 and "| mih |" in text and "| mih-tables |" in text
    assert "popcount limit" in text and "identical" in text.lower()
    # under its budget mih stays within bits/8 + 8 bytes per item on every configuration
    assert "memory <= bits/8 + 8 bytes per item (mih): 4/4 configurations" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| 3,000 |")]
    rows = [r for r in rows if len(r) == 13]        # the results table, not the limits
    assert len(rows) == 2 * 2 * 2 * 5 and all(r[11] == "yes" for r in rows if r[4] in ("flat", "mih", "mih-tables"))
