"""Evaluation protocols: sizes, partitions, determinism, persistence."""
import json
import warnings

import numpy as np
import pytest

from ssah.data.protocols import (Split, fine_grained_split, standard_split, unseen_class_split,
                                 unseen_class_splits)
from ssah.errors import ConfigError, DataError

CIFAR = np.repeat(np.arange(10), 6000)          # CIFAR-10-like: 6000 items x 10 classes


def _disjoint(*arrays):
    allv = np.concatenate(arrays)
    return len(np.unique(allv)) == len(allv)


@pytest.fixture(scope="module")
def cifar_split():
    return standard_split(CIFAR, 100, 500, seed=0)


def test_standard_sizes(cifar_split):
    s = cifar_split
    assert s.sizes() == {"query": 1000, "database": 59000, "labeled": 5000, "unlabeled": 54000}
    for name in ("query", "database", "labeled", "unlabeled"):
        a = getattr(s, name)
        assert a.dtype == np.int64 and np.all(np.diff(a) > 0)     # sorted, no repeats


def test_standard_partition_and_per_class(cifar_split):
    s = cifar_split
    assert _disjoint(s.query, s.database)
    assert np.array_equal(np.union1d(s.query, s.database), np.arange(len(CIFAR)))
    assert _disjoint(s.labeled, s.unlabeled)
    assert np.array_equal(np.union1d(s.labeled, s.unlabeled), s.database)
    assert np.all(np.bincount(CIFAR[s.query]) == 100)
    assert np.all(np.bincount(CIFAR[s.labeled]) == 500)
    assert np.array_equal(s.labeled_class, CIFAR[s.labeled])
    assert s.meta["protocol"] == "standard" and s.meta["short_classes"] == []
    s.check(len(CIFAR))


def test_standard_determinism(cifar_split):
    assert standard_split(CIFAR, 100, 500, seed=0) == cifar_split
    other = standard_split(CIFAR, 100, 500, seed=1)
    assert not np.array_equal(other.query, cifar_split.query)
    assert not np.array_equal(other.labeled, cifar_split.labeled)


def test_standard_short_class_and_shuffled_labels():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.r_[np.zeros(50, int), np.full(300, 3), np.full(200, 7)])
    with pytest.warns(UserWarning, match="fewer than"):
        s = standard_split(labels, queries_per_class=60, labeled_per_class=100, seed=2)
    counts = {c: int((labels[s.query] == c).sum()) for c in (0, 3, 7)}
    assert counts == {0: 50, 3: 60, 7: 60}                  # class 0 gave all it had
    assert int((labels[s.labeled] == 0).sum()) == 0
    assert s.meta["short_classes"] == [0]
    assert np.array_equal(np.union1d(s.labeled, s.unlabeled), s.database)


def test_standard_multilabel():
    rng = np.random.default_rng(0)
    labels = (rng.random((3000, 5)) < 0.3).astype(np.uint8)
    labels[:40] = 0                                           # items with no label
    s = standard_split(labels, queries_per_class=30, labeled_per_class=100, seed=0)
    assert len(s.query) == 150 and len(s.labeled) == 500     # one class per drawn item
    assert _disjoint(s.query, s.database) and len(s.query) + len(s.database) == 3000
    assert np.array_equal(np.union1d(s.labeled, s.unlabeled), s.database)
    assert not np.isin(np.arange(40), s.query).any() and not np.isin(np.arange(40), s.labeled).any()
    assert np.all(labels[s.labeled, s.labeled_class] == 1)   # drawn for a class it carries
    assert np.all(np.bincount(s.labeled_class, minlength=5) == 100)
    assert standard_split(labels, 30, 100, seed=0) == s


def test_standard_errors():
    with pytest.raises(ConfigError):
        standard_split(CIFAR, queries_per_class=0)
    with pytest.raises(ConfigError):
        standard_split(CIFAR, labeled_per_class=-1)
    with pytest.raises(DataError):
        standard_split(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(DataError):
        standard_split(np.array([[0, 2], [1, 0]]))
    with pytest.raises(DataError):
        standard_split(np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("name", ["split.json", "split.npz", "split.bin"])
def test_save_load_round_trip(tmp_path, name, cifar_split):
    s = unseen_class_split(CIFAR[::20], seed=3) if name == "split.bin" else cifar_split
    p = s.save(tmp_path / "sub" / name)
    assert p.is_file() and [f.name for f in p.parent.iterdir()] == [name]   # no temp left
    t = Split.load(p)
    assert t == s and t.labeled_class is not None
    assert t.query.dtype == np.int64
    if name.endswith(".json"):
        assert json.loads(p.read_text())["format"] == "ssah-split"


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Split.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="malformed"):
        Split.load(bad)
    bad.write_text(json.dumps({"format": "ssah-split", "query": [0], "database": [1]}))
    with pytest.raises(DataError, match="missing"):
        Split.load(bad)
    bad.write_text(json.dumps({"format": "ssah-split", "query": [0, 1], "database": [1],
                               "labeled": [], "unlabeled": []}))
    with pytest.raises(DataError, match="overlap"):
        Split.load(bad)
    s = Split([0], [1, 2], [1], [2])
    with pytest.raises(DataError, match="out of range"):
        s.check(2)
    with pytest.raises(DataError):
        Split([[0]], [1], [], [])
    with pytest.raises(DataError):
        Split([-1], [1], [], [])


# ----------------------------------------------------------------------------- validation set

def test_validation_per_class(cifar_split):
    train, val = cifar_split.validation(20, seed=0)
    assert len(val) == 200 and len(train) == 4800
    assert np.all(np.bincount(CIFAR[val]) == 20)
    assert _disjoint(train, val) and np.array_equal(np.union1d(train, val), cifar_split.labeled)
    assert not np.isin(val, cifar_split.query).any()
    t2, v2 = cifar_split.validation(20, seed=0, labels=CIFAR)
    assert np.all(np.bincount(CIFAR[v2]) == 20)
    assert np.array_equal(cifar_split.validation(20, seed=0)[1], val)
    assert not np.array_equal(cifar_split.validation(20, seed=1)[1], val)


def test_validation_fraction_and_errors(cifar_split):
    train, val = cifar_split.validation(0.1, seed=0)
    assert np.all(np.bincount(CIFAR[val]) == 50)
    bare = Split(cifar_split.query, cifar_split.database, cifar_split.labeled,
                 cifar_split.unlabeled)
    train, val = bare.validation(0.1, seed=0)
    assert len(val) == 500 and _disjoint(train, val)
    with pytest.raises(ConfigError, match="per-class"):
        bare.validation(5)
    for bad in (1.5, 0.0, -3, "x", True):
        with pytest.raises(ConfigError):
            cifar_split.validation(bad)
    # never empties a class: a class with 3 labeled items keeps at least one.
    small = Split([0], [1, 2, 3], [1, 2, 3], [], labeled_class=[4, 4, 4])
    train, val = small.validation(10)
    assert len(train) == 1 and len(val) == 2


# ----------------------------------------------------------------------------- fine-grained

def test_fine_grained():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, 2000)
    labels[:1] = 19
    splits = np.where(rng.random(2000) < 0.5, "train", "test")
    splits[0] = "train"
    labels[labels == 19] = 5                      # class 19 -> a single item
    labels[0] = 19
    s = fine_grained_split(labels, splits, 0.5, seed=0)
    assert np.array_equal(s.query, np.flatnonzero(splits == "test"))
    assert np.array_equal(s.database, np.flatnonzero(splits == "train"))
    assert np.array_equal(np.union1d(s.labeled, s.unlabeled), s.database)
    assert _disjoint(s.labeled, s.unlabeled)
    for c in np.unique(labels[s.database]):
        n_c = int((labels[s.database] == c).sum())
        assert int((labels[s.labeled] == c).sum()) == max(1, int(np.floor(0.5 * n_c + 0.5)))
    assert 0 in s.labeled                          # the single item of class 19 is labeled
    assert fine_grained_split(labels, splits, 0.5, seed=0) == s
    assert fine_grained_split(labels, [x.upper() for x in splits], 0.5, seed=0) == s


def test_fine_grained_errors():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="'train' or 'test'"):
        fine_grained_split(labels, ["train", "val", "test", "test"])
    with pytest.raises(DataError, match="does not match"):
        fine_grained_split(labels, ["train", "test"])
    with pytest.raises(DataError, match="both"):
        fine_grained_split(labels, ["train"] * 4)
    with pytest.raises(ConfigError):
        fine_grained_split(labels, ["train", "test"] * 2, labeled_fraction=0)


# ----------------------------------------------------------------------------- unseen classes

def test_unseen_class_cifar():
    s = unseen_class_split(CIFAR, 0.75, seed=0)
    known, unseen = s.meta["known_classes"], s.meta["unseen_classes"]
    assert len(known) == 7 and len(unseen) == 3 and sorted(known + unseen) == list(range(10))
    assert set(CIFAR[s.query]) == set(unseen)                 # queries only from unseen classes
    assert set(CIFAR[s.labeled]) == set(known)
    assert len(s.query) == 9000 and len(s.labeled) == 21000 and len(s.database) == 30000
    assert len(s.unlabeled) == 0
    assert not np.isin(s.database, s.labeled).any()           # no training image in database
    assert _disjoint(s.query, s.database, s.labeled)
    assert set(CIFAR[s.database]) == set(range(10))           # every class in the database
    assert s.meta["parts"] == {"train75": 21000, "test75": 21000, "train25": 9000,
                               "test25": 9000}
    s.check(len(CIFAR))


def test_unseen_class_options_and_determinism():
    labels = np.repeat(np.arange(4), 101)                     # odd class sizes
    a = unseen_class_split(labels, 0.75, seed=1)
    assert len(a.meta["known_classes"]) == 3
    assert a == unseen_class_split(labels, 0.75, seed=1)
    splits = list(unseen_class_splits(labels, n_splits=5, seed=1))
    assert len(splits) == 5 and splits[0] == a
    assert [x.meta["seed"] for x in splits] == [1, 2, 3, 4, 5]
    assert len({tuple(x.meta["known_classes"]) for x in splits}) > 1
    b = unseen_class_split(labels, 0.75, seed=1, database="train25")
    assert set(labels[b.database]) == set(a.meta["unseen_classes"])
    c = unseen_class_split(labels, 0.75, seed=1, database="all-but-query", unlabeled="train25")
    assert np.array_equal(c.database, np.setdiff1d(np.arange(len(labels)), c.query))
    assert np.isin(c.unlabeled, c.database).all() and not np.isin(c.unlabeled, c.labeled).any()
    assert a.meta["parts"]["train25"] == 50 and a.meta["parts"]["test25"] == 51
    for bad in ("test25", "train25+bogus", "train25+train25"):
        with pytest.raises(ConfigError):
            unseen_class_split(labels, database=bad)
    with pytest.raises(ConfigError):
        unseen_class_split(labels, unlabeled="train75")
    with pytest.raises(ConfigError):
        unseen_class_split(labels, known_fraction=1.0)
    with pytest.raises(DataError):
        unseen_class_split(np.zeros(10, int))
    # rounding: half rounds down, clamped to [1, C-1]
    assert len(unseen_class_split(np.arange(2), 0.75).meta["known_classes"]) == 1
    assert len(unseen_class_split(np.repeat(np.arange(10), 2), 0.76).meta["known_classes"]) == 8


def test_unseen_class_multilabel():
    rng = np.random.default_rng(0)
    labels = (rng.random((600, 6)) < 0.25).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = unseen_class_split(labels, 0.5, seed=0)
    unseen = s.meta["unseen_classes"]
    assert len(unseen) == 3
    assert labels[s.query][:, unseen].any(1).all()
    assert not labels[s.labeled][:, unseen].any()
    assert not np.isin(s.database, s.labeled).any()
    assert s.meta["excluded_without_label"] == int((labels.sum(1) == 0).sum())
