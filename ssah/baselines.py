"""Shallow (non-deep) hashing baselines on fixed real-valued features.

Each function fits a hash function on training features ``X_train`` (an ``(n, d)`` float
array, e.g. the frozen backbone's pooled features) and returns an encoder whose
``encode(X)`` gives ``(m, bits)`` int8 codes in {-1, +1} (a zero projection maps to +1):

* :func:`lsh` -- sign random projections (Charikar, STOC 2002; Andoni & Indyk, FOCS 2006).
* :func:`pca_itq` -- PCA followed by Iterative Quantization (Gong & Lazebnik, CVPR 2011;
  Gong et al., TPAMI 2013).
* :func:`itq_cca` -- CCA-ITQ, the supervised variant of ITQ (Gong et al., TPAMI 2013).
* :func:`sdh` -- Supervised Discrete Hashing with an RBF anchor kernel (Shen et al., CVPR 2015).

Labels are int class vectors ``(n,)`` (any integer ids) or 0/1 multi-hot matrices ``(n, c)``.
Malformed features or labels raise :class:`ssah.errors.DataError`; invalid parameters
(``bits``, ``n_iter``, ...) raise :class:`ssah.errors.ConfigError`. Every fit is
deterministic for a given ``seed``.
"""
from __future__ import annotations

import numbers

import numpy as np
import scipy.linalg
from sklearn.decomposition import PCA

from ssah.errors import ConfigError, DataError

__all__ = ["LinearHash", "KernelHash", "itq_rotation", "lsh", "pca_itq", "itq_cca", "sdh"]


# --------------------------------------------------------------------------- validation

def _features(X, name: str, dim: int | None = None) -> np.ndarray:
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # torch tensor
        X = X.detach().cpu().numpy()
    try:
        a = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: cannot be read as a float array ({exc})") from None
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{name}: expected a non-empty 2-d (n, d) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    if dim is not None and a.shape[1] != dim:
        raise DataError(f"{name}: has {a.shape[1]} feature dimensions, the hash was fitted "
                        f"on {dim}")
    return a


def _label_matrix(labels, n: int) -> np.ndarray:
    """``(n, c)`` float 0/1 matrix: one-hot for a class vector, as is for multi-hot."""
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    a = np.asarray(labels)
    if a.dtype == object or a.dtype.kind not in "biuf" or a.ndim not in (1, 2):
        raise DataError(f"labels_train: expected an int class vector (n,) or a 0/1 multi-hot "
                        f"matrix (n, c), got dtype {a.dtype} and shape {a.shape}")
    if a.shape[0] != n:
        raise DataError(f"labels_train: {a.shape[0]} labels for {n} feature rows")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError("labels_train: contains NaN or infinite values")
    if a.ndim == 2:
        if a.shape[1] == 0 or not np.all((a == 0) | (a == 1)):
            raise DataError("labels_train: a multi-hot label matrix must hold only 0 and 1")
        return a.astype(np.float64)
    if not np.all(a == np.round(a)):
        raise DataError("labels_train: class labels must be integers")
    _, inverse = np.unique(a, return_inverse=True)
    Y = np.zeros((n, int(inverse.max()) + 1))
    Y[np.arange(n), inverse] = 1.0
    return Y


def _int_param(value, name: str, minimum: int, maximum: int | None = None,
               why: str = "") -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} = {value} exceeds {maximum}{why}")
    return int(value)


def _pos_float(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _sign(Z: np.ndarray) -> np.ndarray:
    """{-1, +1} int8 signs; 0 maps to +1."""
    return np.where(Z >= 0, 1, -1).astype(np.int8)


# --------------------------------------------------------------------------- encoders

class LinearHash:
    """``encode(X) = sign((X - mean) @ projection)``.

    ``rotation`` is the ITQ rotation already folded into ``projection`` (None for LSH) and
    ``loss_history`` the ITQ quantisation loss ``||B - V R||_F^2`` before each update of R
    and after the last one (empty for LSH).
    """

    def __init__(self, mean: np.ndarray, projection: np.ndarray, rotation=None,
                 loss_history=()):
        self.mean = mean
        self.projection = projection
        self.rotation = rotation
        self.loss_history = list(loss_history)

    @property
    def bits(self) -> int:
        return int(self.projection.shape[1])

    def project(self, X) -> np.ndarray:
        """Real-valued ``(m, bits)`` projections whose signs are the codes."""
        X = _features(X, "X", len(self.mean))
        return (X - self.mean) @ self.projection

    def encode(self, X) -> np.ndarray:
        return _sign(self.project(X))


class KernelHash:
    """``encode(X) = sign([phi(X), 1] @ projection)`` with the RBF anchor features
    ``phi(x)_j = exp(-||x - a_j||^2 / (2 sigma^2))``. ``loss_history`` holds the SDH
    objective after each outer iteration."""

    def __init__(self, anchors: np.ndarray, sigma: float, projection: np.ndarray,
                 loss_history=()):
        self.anchors = anchors
        self.sigma = sigma
        self.projection = projection
        self.loss_history = list(loss_history)

    @property
    def bits(self) -> int:
        return int(self.projection.shape[1])

    def features(self, X) -> np.ndarray:
        X = _features(X, "X", self.anchors.shape[1])
        return _rbf(X, self.anchors, self.sigma)

    def project(self, X) -> np.ndarray:
        return self.features(X) @ self.projection

    def encode(self, X) -> np.ndarray:
        return _sign(self.project(X))


def _sq_dists(X: np.ndarray, A: np.ndarray) -> np.ndarray:
    d = (X * X).sum(1)[:, None] + (A * A).sum(1)[None, :] - 2.0 * X @ A.T
    return np.maximum(d, 0.0, out=d)


def _rbf(X: np.ndarray, anchors: np.ndarray, sigma: float) -> np.ndarray:
    phi = np.exp(-_sq_dists(X, anchors) / (2.0 * sigma * sigma))
    return np.hstack([phi, np.ones((len(X), 1))])      # bias column


# --------------------------------------------------------------------------- ITQ

def itq_rotation(V, n_iter: int = 50, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Iterative Quantization (Gong & Lazebnik, CVPR 2011): an orthogonal ``R`` (b x b)
    minimising ``||B - V R||_F^2`` over ``B`` in {-1, +1}^(n x b) for centred data ``V``.

    Starts from a random orthogonal matrix and alternates ``B = sign(V R)`` with the
    orthogonal Procrustes step ``R = U W^T`` where ``V^T B = U S W^T``. Each half-step can
    only lower the loss, so the returned history (the loss at each B-step, then the final
    loss) is non-increasing.
    """
    V = _features(V, "V")
    n_iter = _int_param(n_iter, "n_iter", 0)
    b = V.shape[1]
    rng = np.random.default_rng(seed)
    R, _ = np.linalg.qr(rng.standard_normal((b, b)))
    losses = []
    for _ in range(n_iter):
        VR = V @ R
        B = np.where(VR >= 0, 1.0, -1.0)
        losses.append(float(((B - VR) ** 2).sum()))
        U, _, Wt = np.linalg.svd(V.T @ B)
        R = U @ Wt
    VR = V @ R
    losses.append(float(((np.where(VR >= 0, 1.0, -1.0) - VR) ** 2).sum()))
    return R, losses


# --------------------------------------------------------------------------- baselines

def lsh(X_train, bits: int, seed: int = 0) -> LinearHash:
    """Sign random projections: ``sign((x - mean) @ W)`` with ``W`` i.i.d. N(0, 1), d x bits
    (Charikar, STOC 2002; Andoni & Indyk, FOCS 2006). Centring on the training mean makes
    the bits roughly balanced."""
    X = _features(X_train, "X_train")
    bits = _int_param(bits, "bits", 1)
    W = np.random.default_rng(seed).standard_normal((X.shape[1], bits))
    return LinearHash(X.mean(0), W)


def pca_itq(X_train, bits: int, n_iter: int = 50, seed: int = 0) -> LinearHash:
    """PCA-ITQ (Gong & Lazebnik, CVPR 2011 / TPAMI 2013): project the centred features on
    their top ``bits`` principal directions, then learn the ITQ rotation
    (:func:`itq_rotation`). ``bits`` may not exceed ``min(n, d)``."""
    X = _features(X_train, "X_train")
    n, d = X.shape
    bits = _int_param(bits, "bits", 1, min(n, d),
                      f": PCA-ITQ needs bits <= min(n_samples, n_features) = min({n}, {d})")
    pca = PCA(n_components=bits, random_state=seed).fit(X)
    mean, P = pca.mean_, pca.components_.T
    R, losses = itq_rotation((X - mean) @ P, n_iter, seed)
    return LinearHash(mean, P @ R, R, losses)


def itq_cca(X_train, labels_train, bits: int, n_iter: int = 50, seed: int = 0,
            reg: float = 1e-4) -> LinearHash:
    """CCA-ITQ (Gong et al., TPAMI 2013, Sec. 5): CCA between features and labels, then ITQ.

    With centred features X and centred (one-/multi-hot) labels Y, the feature-side CCA
    directions solve the generalised symmetric eigenproblem

        Cxy Cyy^-1 Cyx w = rho^2 Cxx w,   w^T Cxx w = 1,

    where each covariance gets a ridge of ``reg`` times its mean diagonal (scale-invariant
    regularisation). The top ``bits`` directions are scaled by their canonical correlations
    ``rho`` ("CCA-ITQ scales projections by eigenvalues", as in the authors' code), and the
    ITQ rotation is learned on the result.

    Past the number of classes: Cxy has rank at most ``c - 1`` for c centred one-hot classes
    (at most c for multi-hot), so directions beyond that have correlation ~0. They are still
    taken (common practice when ``bits > c``), but their near-zero scale means they barely
    move the projected data; ITQ then rotates the effectively (c-1)-dimensional embedding
    across all ``bits`` bits, so the extra bits are largely redundant combinations of the
    meaningful ones rather than noise.
    """
    X = _features(X_train, "X_train")
    n, d = X.shape
    Y = _label_matrix(labels_train, n)
    bits = _int_param(bits, "bits", 1, d, f": CCA-ITQ needs bits <= n_features = {d}")
    reg = _pos_float(reg, "reg")
    mean = X.mean(0)
    Xc, Yc = X - mean, Y - Y.mean(0)
    Cxx = Xc.T @ Xc / n
    Cyy = Yc.T @ Yc / n
    Cxy = Xc.T @ Yc / n
    Cxx[np.diag_indices(d)] += reg * max(np.trace(Cxx) / d, 1e-12)
    Cyy[np.diag_indices(len(Cyy))] += reg * max(np.trace(Cyy) / len(Cyy), 1e-12)
    A = Cxy @ np.linalg.solve(Cyy, Cxy.T)
    A = (A + A.T) / 2
    evals, W = scipy.linalg.eigh(A, Cxx, subset_by_index=[d - bits, d - 1])
    order = np.argsort(evals)[::-1]                          # descending correlation
    rho = np.sqrt(np.clip(evals[order], 0.0, None))
    W = W[:, order] * rho
    R, losses = itq_rotation(Xc @ W, n_iter, seed)
    return LinearHash(mean, W @ R, R, losses)


def sdh(X_train, labels_train, bits: int, n_anchors: int = 1000, lam: float = 1.0,
        nu: float = 1e-5, f_reg: float = 1e-2, n_iter: int = 5, dcc_iter: int = 5,
        seed: int = 0) -> KernelHash:
    """Supervised Discrete Hashing (Shen et al., CVPR 2015).

    Solves ``min ||Y - B W||^2 + lam ||W||^2 + nu ||B - phi(X) P||^2`` over codes
    B in {-1, +1}^(n x bits), a linear classifier W and the hash projection P, where
    ``phi`` is an RBF kernel on ``n_anchors`` training points drawn at random (plus a bias
    column), with ``sigma`` the mean Euclidean distance from training points to anchors.
    From random codes, each of ``n_iter`` outer iterations does

    * G-step: ``W = (B^T B + lam I)^-1 B^T Y`` (ridge least squares classifier);
    * F-step: ``P = (phi^T phi + f_reg I)^-1 phi^T B`` (kernel regression of the codes);
    * B-step: discrete cyclic coordinate descent: with ``Q = Y W^T + nu phi P``, each bit
      column is set in closed form, ``z = sign(q - B' W' v)`` (B', W' without that bit,
      v its row of W), cycling over the bits ``dcc_iter`` times.

    Defaults follow the authors' code (lam = 1, nu = 1e-5, 5 outer iterations). The final
    P is refitted on the final codes.
    """
    X = _features(X_train, "X_train")
    n = len(X)
    Y = _label_matrix(labels_train, n)
    bits = _int_param(bits, "bits", 1)
    n_anchors = _int_param(n_anchors, "n_anchors", 1)
    n_iter = _int_param(n_iter, "n_iter", 1)
    dcc_iter = _int_param(dcc_iter, "dcc_iter", 1)
    lam, nu = _pos_float(lam, "lam"), _pos_float(nu, "nu", allow_zero=True)
    f_reg = _pos_float(f_reg, "f_reg")
    rng = np.random.default_rng(seed)
    anchors = X[np.sort(rng.choice(n, min(n_anchors, n), replace=False))]
    sigma = float(np.sqrt(_sq_dists(X, anchors)).mean())
    if sigma == 0:
        raise DataError("X_train: all training points coincide; cannot set the RBF width")
    phi = _rbf(X, anchors, sigma)
    G = phi.T @ phi
    G[np.diag_indices(len(G))] += f_reg
    cho = scipy.linalg.cho_factor(G)
    B = np.where(rng.standard_normal((n, bits)) >= 0, 1.0, -1.0)
    losses = []
    for _ in range(n_iter):
        W = np.linalg.solve(B.T @ B + lam * np.eye(bits), B.T @ Y)      # G-step
        P = scipy.linalg.cho_solve(cho, phi.T @ B)                        # F-step
        F = phi @ P
        Q = Y @ W.T + nu * F                                              # B-step (DCC)
        for _ in range(dcc_iter):
            changed = False
            for k in range(bits):
                rest = np.arange(bits) != k
                z = Q[:, k] - B[:, rest] @ (W[rest] @ W[k])
                z = np.where(z >= 0, 1.0, -1.0)
                changed |= bool(np.any(z != B[:, k]))
                B[:, k] = z
            if not changed:
                break
        losses.append(float(((Y - B @ W) ** 2).sum() + lam * (W ** 2).sum()
                            + nu * ((B - F) ** 2).sum()))
    P = scipy.linalg.cho_solve(cho, phi.T @ B)
    return KernelHash(anchors, sigma, P, losses)
