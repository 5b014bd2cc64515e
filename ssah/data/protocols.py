"""The evaluation protocols (query / database / labeled / unlabeled splits) of the paper.

* :func:`standard_split` -- CIFAR-10 and NUS-WIDE: per class ``queries_per_class`` queries,
  the rest is the database, ``labeled_per_class`` labeled items per class drawn from it.
* :func:`fine_grained_split` -- CUB / Stanford Dogs: official test = queries, official
  train = database, a fraction of each class of the database labeled.
* :func:`unseen_class_split` -- retrieval of classes never seen in training, after
  Sablayrolles et al., "How should we evaluate supervised hashing?" (ICASSP 2017).

Every function is deterministic for its ``seed`` (``np.random.default_rng(seed)``) and
returns a :class:`Split` whose index arrays are sorted ascending int64.

Labels are an int class vector ``(n,)`` (the classes are its distinct values, in ascending
order) or a 0/1 multi-hot matrix ``(n, c)`` (the classes are its columns). Multi-label items
are drawn per class greedily: classes are visited in order and each draws among the items
that carry its label and were not drawn yet, so an item counts for one class only; a class
with too few items gives what it has (recorded in ``meta["short_classes"]`` and warned about).
"""
from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ssah.atomic import atomic_write
from ssah.errors import ConfigError, DataError

__all__ = ["Split", "standard_split", "fine_grained_split", "unseen_class_split",
           "unseen_class_splits", "UNSEEN_PARTS"]

_FORMAT = "ssah-split"
_VERSION = 1
_ARRAYS = ("query", "database", "labeled", "unlabeled")

#: The four parts of the unseen-class protocol: train/test halves of known (75) and unseen (25)
#: classes.
UNSEEN_PARTS = ("train75", "test75", "train25", "test25")


# --------------------------------------------------------------------------- the Split

def _index_array(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.ndim != 1:
        raise DataError(f"split {name}: expected a 1-d index array, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.isfinite(a).all() and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise DataError(f"split {name}: indices must be integers, got dtype {a.dtype}")
    if a.min() < 0:
        raise DataError(f"split {name}: negative index {int(a.min())}")
    return a.astype(np.int64, copy=False)


def _jsonable(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"split meta: {type(o).__name__} is not JSON serialisable")


@dataclass(eq=False)
class Split:
    """Index arrays of one evaluation protocol.

    ``query`` and ``database`` are the retrieval queries and the retrieval set; ``labeled``
    and ``unlabeled`` the training items. ``labeled_class`` (optional, aligned with
    ``labeled``) is the class each labeled item was drawn for; :meth:`validation` uses it to
    draw per class. ``meta`` holds JSON-serialisable facts about how the split was made.
    """

    query: np.ndarray
    database: np.ndarray
    labeled: np.ndarray
    unlabeled: np.ndarray
    meta: dict = field(default_factory=dict)
    labeled_class: np.ndarray | None = None

    def __post_init__(self):
        for name in _ARRAYS:
            setattr(self, name, _index_array(getattr(self, name), name))
        if self.labeled_class is not None:
            lc = np.asarray(self.labeled_class)
            if lc.ndim != 1 or len(lc) != len(self.labeled):
                raise DataError(f"split labeled_class: {lc.shape} does not match "
                                f"{len(self.labeled)} labeled items")
            if lc.size and lc.dtype.kind not in "iu":
                raise DataError(f"split labeled_class: must be integers, got dtype {lc.dtype}")
            self.labeled_class = lc.astype(np.int64)
        self.meta = dict(self.meta or {})

    # ---------------------------------------------------------------- inspection

    def sizes(self) -> dict:
        """Number of items in each part."""
        return {name: int(len(getattr(self, name))) for name in _ARRAYS}

    def __eq__(self, other) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        same_lc = (self.labeled_class is None) == (other.labeled_class is None) and (
            self.labeled_class is None or np.array_equal(self.labeled_class, other.labeled_class))
        return (same_lc and self.meta == other.meta
                and all(np.array_equal(getattr(self, n), getattr(other, n)) for n in _ARRAYS))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return f"Split({sizes}, protocol={self.meta.get('protocol')!r})"

    def check(self, n_items: int | None = None) -> "Split":
        """Raise DataError unless the split is consistent (and fits ``n_items`` items).

        Required: no index repeated within a part, queries disjoint from the database and
        from the training items, labeled disjoint from unlabeled, every index < ``n_items``.
        """
        for name in _ARRAYS:
            a = getattr(self, name)
            if len(np.unique(a)) != len(a):
                raise DataError(f"split {name}: repeated indices")
            if n_items is not None and len(a) and a.max() >= n_items:
                raise DataError(f"split {name}: index {int(a.max())} out of range for "
                                f"{n_items} items (split made for another dataset?)")
        for a, b in (("query", "database"), ("query", "labeled"), ("query", "unlabeled"),
                     ("labeled", "unlabeled")):
            if np.intersect1d(getattr(self, a), getattr(self, b)).size:
                raise DataError(f"split: {a} and {b} overlap")
        return self

    # ---------------------------------------------------------------- persistence

    def save(self, path) -> Path:
        """Write the split atomically: JSON when ``path`` ends in ``.json``, else npz."""
        path = Path(path)
        with atomic_write(path) as f:
            if path.suffix.lower() == ".json":
                doc = {"format": _FORMAT, "version": _VERSION, "meta": self.meta}
                doc.update({n: getattr(self, n).tolist() for n in _ARRAYS})
                if self.labeled_class is not None:
                    doc["labeled_class"] = self.labeled_class.tolist()
                f.write(json.dumps(doc, default=_jsonable).encode())
            else:
                arrays = {n: getattr(self, n) for n in _ARRAYS}
                if self.labeled_class is not None:
                    arrays["labeled_class"] = self.labeled_class
                arrays["meta"] = np.array(json.dumps(self.meta, default=_jsonable))
                arrays["format"] = np.array(f"{_FORMAT}/{_VERSION}")
                np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path) -> "Split":
        """Read a split written by :meth:`save` (JSON or npz, detected from the content)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"split file not found: {path}") from None
        except OSError as exc:
            raise DataError(f"cannot read split file {path}: {exc}") from None
        try:
            if raw[:2] == b"PK":
                import io
                with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                    if "format" not in z or not str(z["format"]).startswith(_FORMAT):
                        raise ValueError("not an ssah split")
                    doc = {n: z[n] for n in _ARRAYS}
                    doc["meta"] = json.loads(str(z["meta"])) if "meta" in z else {}
                    doc["labeled_class"] = z["labeled_class"] if "labeled_class" in z else None
            else:
                doc = json.loads(raw.decode())
                if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                    raise ValueError("not an ssah split")
                if not isinstance(doc.get("meta", {}), dict):
                    raise ValueError("meta is not an object")
            missing = [n for n in _ARRAYS if n not in doc]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except (ValueError, KeyError, UnicodeDecodeError, OSError) as exc:
            raise DataError(f"split file {path} is malformed: {exc}") from None
        split = cls(*(doc[n] for n in _ARRAYS), meta=doc.get("meta", {}),
                    labeled_class=doc.get("labeled_class"))
        return split.check()

    # ---------------------------------------------------------------- validation set

    def validation(self, fraction_or_per_class, seed: int = 0, labels=None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Carve a validation set out of ``labeled``; returns ``(train_labeled, val)``.

        The validation items serve as both queries and database for model selection; they
        are never the real queries. ``fraction_or_per_class`` is an int (that many items per
        class) or a float in (0, 1) (that fraction of each class, rounded half up). Classes
        come from ``labels`` (the full label array of the dataset) when given, else from
        ``labeled_class``; a float with neither draws uniformly from all labeled items. At
        least one labeled item of every class stays in training.
        """
        v = fraction_or_per_class
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise ConfigError(f"validation size must be an int or a fraction, got {v!r}")
        per_class = isinstance(v, numbers.Integral)
        if per_class and v < 0:
            raise ConfigError(f"validation items per class must be >= 0, got {v}")
        if not per_class and not 0 < v < 1:
            raise ConfigError(f"validation fraction must lie in (0, 1), got {v}")
        rng = np.random.default_rng(seed)
        lab = self.labeled
        if labels is not None:
            labels = _check_labels(labels)
            if len(lab) and lab.max() >= len(labels):
                raise DataError(f"split labeled index {int(lab.max())} out of range for "
                                f"{len(labels)} labels")
            classes = _classes(labels)
            _, groups = _draw(labels, classes, np.isin(np.arange(len(labels)), lab),
                              lambda n: n, rng=None)
        elif self.labeled_class is not None:
            groups = [lab[self.labeled_class == c] for c in np.unique(self.labeled_class)]
        elif not per_class:
            groups = None
        else:
            raise ConfigError("a per-class validation set needs the class of each labeled "
                              "item: pass labels= or use a split made by this module")
        if groups is None:
            k = min(_round_half_up(v * len(lab)), max(len(lab) - 1, 0))
            val = rng.choice(lab, size=k, replace=False) if k else np.zeros(0, np.int64)
        else:
            picks = []
            for g in groups:
                want = int(v) if per_class else _round_half_up(v * len(g))
                k = min(want, max(len(g) - 1, 0))
                if k:
                    picks.append(rng.choice(np.sort(g), size=k, replace=False))
            val = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        val = np.sort(val.astype(np.int64))
        return np.setdiff1d(lab, val).astype(np.int64), val


# --------------------------------------------------------------------------- helpers

def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _check_labels(labels) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim not in (1, 2) or a.dtype == object or a.dtype.kind not in "biuf":
        raise DataError(f"labels: expected an int class vector (n,) or a 0/1 multi-hot matrix "
                        f"(n, c), got shape {a.shape} dtype {a.dtype}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError("labels: contain NaN or infinite values")
        if not np.all(a == np.round(a)):
            raise DataError("labels: class ids must be integers")
    if a.ndim == 2:
        if not np.all((a == 0) | (a == 1)):
            raise DataError("labels: a multi-hot matrix must hold only 0 and 1")
        return a.astype(bool)
    return a.astype(np.int64)


def _classes(labels: np.ndarray) -> list:
    return list(range(labels.shape[1])) if labels.ndim == 2 else np.unique(labels).tolist()


def _members(labels: np.ndarray, c) -> np.ndarray:
    return labels[:, c] if labels.ndim == 2 else labels == c


def _draw(labels, classes, pool, count, rng):
    """Per class (in order), draw ``count(available)`` items of the class from ``pool``.

    An item is drawn for at most one class. Returns ``(picked, groups)``: the sorted picked
    indices with their classes, and the list of per-class index arrays. With ``rng=None``
    every available item is taken in order (used to group items by class).
    """
    taken = np.zeros(len(labels), bool)
    groups, picked, picked_cls = [], [], []
    for c in classes:
        cand = np.flatnonzero(_members(labels, c) & pool & ~taken)
        k = min(int(count(len(cand))), len(cand))
        if rng is None:
            sel = cand[:k]
        else:
            sel = rng.choice(cand, size=k, replace=False) if k else cand[:0]
        taken[sel] = True
        groups.append(np.sort(sel))
        picked.append(sel)
        picked_cls.append(np.full(len(sel), c, np.int64))
    idx = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    cls = np.concatenate(picked_cls) if picked_cls else np.zeros(0, np.int64)
    order = np.argsort(idx, kind="stable")
    return (idx[order].astype(np.int64), cls[order]), groups


def _count_param(v, name: str, minimum: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _seed_param(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _note_short(groups, classes, want: int, what: str) -> list:
    short = [c for g, c in zip(groups, classes) if len(g) < want]
    if short:
        warnings.warn(f"{len(short)} class(es) have fewer than {want} items available for "
                      f"{what}: {short[:10]}{' ...' if len(short) > 10 else ''}; took what "
                      f"there is", stacklevel=3)
    return [int(c) for c in short]


# --------------------------------------------------------------------------- protocols

def standard_split(labels, queries_per_class: int = 100, labeled_per_class: int = 500,
                   seed: int = 0) -> Split:
    """The CIFAR-10 / NUS-WIDE protocol of the paper.

    Per class, ``queries_per_class`` queries are drawn; the database is every other item;
    ``labeled_per_class`` labeled items per class are then drawn from the database and the
    rest of the database is unlabeled (``labeled`` and ``unlabeled`` partition ``database``;
    ``query`` and ``database`` partition all items). For multi-hot labels the per-class draws
    are greedy (see the module doc), so there are at most ``queries_per_class * c`` queries;
    items with no label are never queries nor labeled. CIFAR-10 (6000 images x 10 classes)
    gives 1000 queries, 59000 database, 5000 labeled and 54000 unlabeled items.
    """
    labels = _check_labels(labels)
    qpc = _count_param(queries_per_class, "queries_per_class", 1)
    lpc = _count_param(labeled_per_class, "labeled_per_class", 0)
    seed = _seed_param(seed)
    n = len(labels)
    if n == 0:
        raise DataError("labels: empty dataset")
    rng = np.random.default_rng(seed)
    classes = _classes(labels)
    all_items = np.ones(n, bool)
    (query, _), qgroups = _draw(labels, classes, all_items, lambda a: qpc, rng)
    database = np.setdiff1d(np.arange(n, dtype=np.int64), query)
    in_db = ~np.isin(np.arange(n), query)
    (labeled, labeled_cls), lgroups = _draw(labels, classes, in_db, lambda a: lpc, rng)
    unlabeled = np.setdiff1d(database, labeled)
    meta = {"protocol": "standard", "seed": seed, "queries_per_class": qpc,
            "labeled_per_class": lpc, "num_classes": len(classes),
            "multilabel": labels.ndim == 2,
            "short_classes": sorted(set(_note_short(qgroups, classes, qpc, "queries"))
                                    | set(_note_short(lgroups, classes, lpc, "labeling")))}
    return Split(query, database, labeled, unlabeled, meta, labeled_cls)


def fine_grained_split(labels, splits, labeled_fraction: float = 0.5, seed: int = 0) -> Split:
    """The fine-grained protocol (CUB-200-2011, Stanford Dogs).

    Queries are the items whose official split is ``"test"``; the database is the official
    ``"train"`` items; ``labeled_fraction`` of each class of the database is labeled
    (rounded half up, at least 1 per non-empty class) and the rest of it is unlabeled.
    ``splits`` must hold only ``"train"`` and ``"test"`` (case and surrounding spaces are
    ignored).
    """
    labels = _check_labels(labels)
    seed = _seed_param(seed)
    if isinstance(labeled_fraction, (bool, np.bool_)) or not isinstance(labeled_fraction, numbers.Real) \
            or not 0 < labeled_fraction <= 1:
        raise ConfigError(f"labeled_fraction must lie in (0, 1], got {labeled_fraction!r}")
    s = np.char.lower(np.char.strip(np.asarray(splits, dtype=str)))
    if s.shape != (len(labels),):
        raise DataError(f"splits: {s.shape} does not match {len(labels)} labels")
    bad = sorted(set(np.unique(s).tolist()) - {"train", "test"})
    if bad:
        raise DataError(f"splits: values must be 'train' or 'test', found {bad[:5]}")
    query = np.flatnonzero(s == "test").astype(np.int64)
    database = np.flatnonzero(s == "train").astype(np.int64)
    if not len(query) or not len(database):
        raise DataError(f"splits: need both train and test items, got {len(database)} train "
                        f"and {len(query)} test")
    rng = np.random.default_rng(seed)
    classes = _classes(labels)
    frac = float(labeled_fraction)
    (labeled, labeled_cls), _ = _draw(
        labels, classes, s == "train",
        lambda a: max(1, _round_half_up(frac * a)) if a else 0, rng)
    unlabeled = np.setdiff1d(database, labeled)
    meta = {"protocol": "fine-grained", "seed": seed, "labeled_fraction": frac,
            "num_classes": len(classes), "multilabel": labels.ndim == 2}
    return Split(query, database, labeled, unlabeled, meta, labeled_cls)


def _parts_spec(spec: str, name: str, allowed: tuple, extra: dict) -> list:
    if not isinstance(spec, str):
        raise ConfigError(f"{name} must be a string, got {spec!r}")
    key = spec.strip().lower()
    if key in extra:
        return extra[key]
    parts = [p.strip() for p in key.split("+")]
    bad = [p for p in parts if p not in allowed]
    if bad or len(set(parts)) != len(parts):
        choices = ", ".join(list(allowed) + list(extra))
        raise ConfigError(f"{name}={spec!r}: join parts from {{{choices}}} with '+', "
                          f"e.g. 'train25+test75'")
    return parts


def unseen_class_split(labels, known_fraction: float = 0.75, seed: int = 0,
                       database: str = "train25+test75", unlabeled: str = "none") -> Split:
    """Retrieval of unseen classes, after Sablayrolles et al. (ICASSP 2017).

    ``n_known = round(known_fraction * C)`` with halves rounded *down*, clamped to
    ``[1, C-1]``; CIFAR-10 with 0.75 gives 7 known and 3 unseen classes. The known classes
    are drawn at random. Every class's items are halved at random into train (``n // 2``)
    and test (the rest), which gives four parts: ``train75``/``test75`` (known classes) and
    ``train25``/``test25`` (unseen classes).

    * labeled = ``train75`` (the only images with labels used in training);
    * query = ``test25``;
    * database: ``"train25+test75"`` (default: no image used in training, every class
      present), or any ``'+'``-joined subset of ``train25``, ``test75``, ``train75``, or
      ``"all-but-query"`` (= train75+test75+train25, which puts training images in the
      database);
    * unlabeled: ``"none"`` (default), or a ``'+'``-joined subset of ``train25``, ``test75``
      (unlabeled training images; those then also appear in a database that contains them).

    ``meta`` records ``known_classes``, ``unseen_classes`` and the size of each part;
    ``labeled_class`` is the class of each labeled item. Multi-hot labels: an item is an
    unseen-class item when it has any unseen label, a known-class item when all its labels
    are known; items with no label are left out; each of the two groups is halved at random
    and ``labeled_class`` is the item's first label.
    """
    labels = _check_labels(labels)
    seed = _seed_param(seed)
    if isinstance(known_fraction, (bool, np.bool_)) or not isinstance(known_fraction, numbers.Real) \
            or not 0 < known_fraction < 1:
        raise ConfigError(f"known_fraction must lie in (0, 1), got {known_fraction!r}")
    db_parts = _parts_spec(database, "database", ("train25", "test75", "train75"),
                           {"all-but-query": ["train75", "test75", "train25"]})
    un_parts = _parts_spec(unlabeled, "unlabeled", ("train25", "test75"), {"none": []})
    classes = _classes(labels)
    n_classes = len(classes)
    if n_classes < 2:
        raise DataError(f"labels: the unseen-class protocol needs at least 2 classes, "
                        f"got {n_classes}")
    n_known = min(max(math.ceil(known_fraction * n_classes - 0.5 - 1e-9), 1), n_classes - 1)
    rng = np.random.default_rng(seed)
    known = np.sort(rng.choice(np.asarray(classes), size=n_known, replace=False))
    unseen = np.setdiff1d(np.asarray(classes), known)
    n = len(labels)
    if labels.ndim == 1:
        is_known = np.isin(labels, known)
        groups = [np.flatnonzero(labels == c) for c in classes]
        excluded = 0
    else:
        has_any = labels.any(1)
        is_known = has_any & ~labels[:, unseen].any(1)
        groups = [np.flatnonzero(is_known), np.flatnonzero(has_any & ~is_known)]
        excluded = int((~has_any).sum())
    is_train = np.zeros(n, bool)
    for g in groups:
        perm = rng.permutation(g)
        is_train[perm[: len(g) // 2]] = True
    member = np.zeros(n, bool)
    for g in groups:
        member[g] = True
    parts = {"train75": member & is_known & is_train, "test75": member & is_known & ~is_train,
             "train25": member & ~is_known & is_train, "test25": member & ~is_known & ~is_train}
    parts = {k: np.flatnonzero(v).astype(np.int64) for k, v in parts.items()}

    def union(names):
        return np.sort(np.concatenate([parts[p] for p in names])) if names \
            else np.zeros(0, np.int64)

    labeled = parts["train75"]
    labeled_cls = labels[labeled] if labels.ndim == 1 else np.argmax(labels[labeled], 1)
    meta = {"protocol": "unseen", "seed": seed, "known_fraction": float(known_fraction),
            "known_classes": [int(c) for c in known], "unseen_classes": [int(c) for c in unseen],
            "database": "+".join(db_parts), "unlabeled": "+".join(un_parts) or "none",
            "parts": {k: int(len(v)) for k, v in parts.items()},
            "multilabel": labels.ndim == 2, "excluded_without_label": excluded}
    return Split(parts["test25"], union(db_parts), labeled, union(un_parts), meta,
                 labeled_cls.astype(np.int64))


def unseen_class_splits(labels, n_splits: int = 5, known_fraction: float = 0.75, seed: int = 0,
                        database: str = "train25+test75", unlabeled: str = "none"
                        ) -> Iterator[Split]:
    """Yield ``n_splits`` unseen-class splits with seeds ``seed .. seed + n_splits - 1``
    (results are averaged over these class splits)."""
    n_splits = _count_param(n_splits, "n_splits", 1)
    seed = _seed_param(seed)
    for i in range(n_splits):
        yield unseen_class_split(labels, known_fraction, seed + i, database, unlabeled)
