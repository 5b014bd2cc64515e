"""Shallow hashing baselines: ITQ properties, LSH symmetry, code format, retrieval quality on
well-separated synthetic clusters, determinism and input validation."""
from __future__ import annotations

import numpy as np
import pytest

from ssah.baselines import itq_cca, itq_rotation, lsh, pca_itq, sdh
from ssah.errors import ConfigError, DataError
from ssah.metrics import mean_average_precision

BITS = 16


def clusters(seed=0, n=2000, d=64, c=10, sep=1.0, nuisance=1.5, n_nuisance=8):
    """10 Gaussian clusters in 64-d (unit noise, centres ~ N(0, sep^2/2)) plus a few
    class-independent high-variance directions that unsupervised methods partly chase."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)) * sep / np.sqrt(2)
    y = np.repeat(np.arange(c), n // c)
    rng.shuffle(y)
    X = centres[y] + rng.standard_normal((n, d))
    Q, _ = np.linalg.qr(rng.standard_normal((d, n_nuisance)))
    X += (rng.standard_normal((n, n_nuisance)) * nuisance) @ Q.T
    return X, y


@pytest.fixture(scope="module")
def split():
    X, y = clusters()
    return X[400:], y[400:], X[:400], y[:400]          # database, queries


@pytest.fixture(scope="module")
def maps(split):
    Xd, yd, Xq, yq = split
    models = {"lsh": lsh(Xd, BITS, seed=0), "pca_itq": pca_itq(Xd, BITS, seed=0),
              "itq_cca": itq_cca(Xd, yd, BITS, seed=0), "sdh": sdh(Xd, yd, BITS, seed=0)}
    return {k: mean_average_precision(m.encode(Xq), yq, m.encode(Xd), yd)
            for k, m in models.items()}


# --------------------------------------------------------------------------- ITQ

def test_itq_rotation_orthogonal_and_loss_non_increasing():
    rng = np.random.default_rng(1)
    V = rng.standard_normal((300, 8)) @ rng.standard_normal((8, 8))
    V -= V.mean(0)
    R, losses = itq_rotation(V, n_iter=30, seed=3)
    assert R.shape == (8, 8)
    np.testing.assert_allclose(R.T @ R, np.eye(8), atol=1e-10)
    assert len(losses) == 31
    assert np.all(np.diff(losses) <= 1e-9 * losses[0])
    assert losses[-1] < losses[0]
    # the recorded final loss is the loss of the returned rotation
    VR = V @ R
    assert losses[-1] == pytest.approx(((np.where(VR >= 0, 1, -1) - VR) ** 2).sum())


def test_pca_itq_exposes_rotation_and_history(split):
    Xd = split[0]
    m = pca_itq(Xd, 12, n_iter=20, seed=0)
    np.testing.assert_allclose(m.rotation.T @ m.rotation, np.eye(12), atol=1e-10)
    assert len(m.loss_history) == 21
    assert np.all(np.diff(m.loss_history) <= 1e-9 * m.loss_history[0])


def test_itq_cca_rotation_orthogonal_and_history(split):
    Xd, yd = split[:2]
    m = itq_cca(Xd, yd, 24, n_iter=20, seed=0)   # more bits than classes
    np.testing.assert_allclose(m.rotation.T @ m.rotation, np.eye(24), atol=1e-10)
    assert np.all(np.diff(m.loss_history) <= 1e-9 * m.loss_history[0])


def test_itq_without_iterations_is_random_rotation():
    V = np.random.default_rng(0).standard_normal((50, 4))
    R, losses = itq_rotation(V, n_iter=0, seed=0)
    np.testing.assert_allclose(R.T @ R, np.eye(4), atol=1e-12)
    assert len(losses) == 1


# --------------------------------------------------------------------------- LSH

def test_lsh_codes_of_mirrored_points_are_opposite():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 20)) + 5.0
    m = lsh(X, 32, seed=1)
    Z = X - X.mean(0)
    a = m.encode(X.mean(0) + Z)
    b = m.encode(X.mean(0) - Z)
    np.testing.assert_array_equal(a, -b)


def test_lsh_bits_may_exceed_dims():
    X = np.random.default_rng(0).standard_normal((30, 4))
    assert lsh(X, 64, seed=0).encode(X).shape == (30, 64)


# --------------------------------------------------------------------------- code format

@pytest.mark.parametrize("method", ["lsh", "pca_itq", "itq_cca", "sdh"])
def test_codes_are_pm1_int8_with_right_shape(method, split):
    Xd, yd, Xq, _ = split
    Xd, yd = Xd[:300], yd[:300]
    fit = {"lsh": lambda: lsh(Xd, 12, seed=0), "pca_itq": lambda: pca_itq(Xd, 12, seed=0),
           "itq_cca": lambda: itq_cca(Xd, yd, 12, seed=0),
           "sdh": lambda: sdh(Xd, yd, 12, n_anchors=100, seed=0)}[method]
    m = fit()
    codes = m.encode(Xq[:37])
    assert codes.shape == (37, 12) and codes.dtype == np.int8
    assert set(np.unique(codes)) <= {-1, 1}
    assert m.bits == 12
    # encoding is row-wise: a subset encodes the same
    np.testing.assert_array_equal(m.encode(Xq[5:9]), codes[5:9])
    # bits are not degenerate on the training data
    assert np.all(np.abs(m.encode(Xd).mean(0)) < 1.0)


# --------------------------------------------------------------------------- quality

def test_quality_on_separated_clusters(maps):
    # measured (seed 0, 16 bits): lsh 0.25, pca_itq 0.67, itq_cca 0.97, sdh 0.99;
    # chance (10 balanced classes) is about 0.1
    assert maps["lsh"] > 0.15
    assert maps["pca_itq"] > 0.5
    assert maps["pca_itq"] > maps["lsh"] + 0.2
    assert maps["itq_cca"] > 0.85
    assert maps["sdh"] > 0.85
    assert min(maps["itq_cca"], maps["sdh"]) >= maps["pca_itq"] + 0.1


def test_supervised_accept_multi_hot_labels(split):
    Xd, yd, Xq, yq = split
    Y = np.eye(10, dtype=np.int64)[yd]
    for fit in (lambda y: itq_cca(Xd, y, BITS, seed=0),
                lambda y: sdh(Xd, y, BITS, n_anchors=300, seed=0)):
        a, b = fit(yd), fit(Y)
        np.testing.assert_array_equal(a.encode(Xq), b.encode(Xq))


def test_sdh_objective_decreases(split):
    Xd, yd = split[:2]
    m = sdh(Xd, yd, BITS, n_anchors=300, seed=0)
    assert len(m.loss_history) == 5
    assert m.loss_history[-1] <= m.loss_history[0]


def test_arbitrary_class_ids(split):
    Xd, yd, Xq, _ = split
    a = itq_cca(Xd, yd, 12, seed=0).encode(Xq)
    b = itq_cca(Xd, yd * 7 + 100, 12, seed=0).encode(Xq)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- determinism

def test_deterministic_for_a_seed(split):
    Xd, yd, Xq, _ = split
    Xd, yd = Xd[:400], yd[:400]
    fits = [lambda s: lsh(Xd, 16, seed=s), lambda s: pca_itq(Xd, 16, seed=s),
            lambda s: itq_cca(Xd, yd, 16, seed=s),
            lambda s: sdh(Xd, yd, 16, n_anchors=100, seed=s)]
    for fit in fits:
        np.testing.assert_array_equal(fit(5).encode(Xq), fit(5).encode(Xq))
    assert not np.array_equal(lsh(Xd, 16, seed=1).encode(Xq), lsh(Xd, 16, seed=2).encode(Xq))


# --------------------------------------------------------------------------- validation

def test_pca_itq_bits_above_dims():
    X = np.random.default_rng(0).standard_normal((100, 8))
    with pytest.raises(ConfigError, match="bits"):
        pca_itq(X, 16)
    with pytest.raises(ConfigError, match="bits"):
        pca_itq(X[:5], 6)           # more bits than samples


@pytest.mark.parametrize("bits", [0, -3, 2.5, "8", True])
def test_bad_bits(bits):
    X = np.random.default_rng(0).standard_normal((50, 8))
    with pytest.raises(ConfigError):
        lsh(X, bits)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 8))
    y = rng.integers(0, 3, 50)
    with pytest.raises(DataError):
        lsh(X[0], 4)                                     # 1-d
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        pca_itq(bad, 4)
    with pytest.raises(DataError, match="labels"):
        itq_cca(X, y[:40], 4)
    with pytest.raises(DataError, match="labels"):
        sdh(X, y + 0.5, 4)
    with pytest.raises(DataError, match="multi-hot"):
        itq_cca(X, np.full((50, 3), 2), 4)
    with pytest.raises(ConfigError):
        itq_cca(X, y, 9)                                 # more bits than dims
    with pytest.raises(ConfigError):
        itq_cca(X, y, 4, reg=-1.0)
    with pytest.raises(ConfigError):
        pca_itq(X, 4, n_iter=-1)
    with pytest.raises(ConfigError):
        sdh(X, y, 4, n_anchors=0)
    m = lsh(X, 4)
    with pytest.raises(DataError, match="fitted on 8"):
        m.encode(rng.standard_normal((3, 9)))
