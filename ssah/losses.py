"""SSAH loss functions (Jin et al., AAAI 2020), as ``../paper/NOTES.md`` reads them.

Codes ``u`` (n, k) and ``v`` (m, k) are binary-like, in [-1, 1]; ``S`` is an (n, m) 0/1
pairwise label matrix. Every function takes and returns torch tensors, and reduces by means
so that weights do not depend on the batch size (the trainer rescales; see
``ssah.train.trainer``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Similarity degree (u_i . v_j + k) / (2k), in [0, 1]; (n, m). NOTES item 1."""
    k = u.shape[1]
    return (u @ v.t() + k) / (2 * k)


def pair_distance(u: torch.Tensor, v: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Eq 3: d_ij = S_ij - (2 S_ij - 1) sim(u_i, v_j): 1 - sim for similar pairs, sim otherwise."""
    S = S.to(u.dtype)
    return S - (2 * S - 1) * similarity(u, v)


def adversarial_loss(u, v, u_gen, v_gen, S, omega, self_paced: bool = True,
                     reduction: str = "mean", hinge: str = "pair") -> torch.Tensor:
    """Eq 5 (self-paced) or Table 6's fixed-paced loss, over all n x m pairs.

    hard = d'_ij - d_ij (Eq 4 / Eq 6, NOTES item 3) where d' is Eq 3 on (u_gen, v_gen);
    loss = max(margin - hard, 0), margin = omega (1 - d_ij) when self-paced, else omega.
    ``reduction="row_sum"`` sums over each item's partners, then averages over items.
    ``hinge="item"`` (not in the paper) takes the max once per item, over its partners'
    summed (row_sum) or averaged (mean, none: per item) margin - hard, so that only a shift
    of the item's hardness counts and its spread over partners does not.
    """
    d = pair_distance(u, v, S)
    hard = pair_distance(u_gen, v_gen, S) - d
    margin = omega * (1 - d) if self_paced else torch.full_like(d, float(omega))
    slack = margin - hard
    if hinge == "pair":
        return _reduce(torch.clamp(slack, min=0), reduction)
    if hinge != "item":
        raise ValueError(f"unknown hinge {hinge!r}; use 'pair' or 'item'")
    loss = torch.clamp(slack.sum(dim=1) if reduction == "row_sum" else slack.mean(dim=1), min=0)
    return loss if reduction == "none" else loss.mean()


def semantic_loss(u: torch.Tensor, v: torch.Tensor, S: torch.Tensor, kind: str = "mse",
                  reduction: str = "mean") -> torch.Tensor:
    """Eq 8 pair term l_pair (NOTES item 6).

    ``kind="mse"``: (sim(u_i, v_j) - S_ij)^2; ``kind="likelihood"``: the DPSH pairwise
    negative log-likelihood log(1 + e^theta) - S theta with theta = u_i . v_j / 2.
    """
    S = S.to(u.dtype)
    if kind == "mse":
        loss = (similarity(u, v) - S) ** 2
    elif kind == "likelihood":
        theta = (u @ v.t()) / 2
        loss = F.softplus(theta) - S * theta
    else:
        raise ValueError(f"unknown semantic loss kind {kind!r}; use 'mse' or 'likelihood'")
    return _reduce(loss, reduction)


def consistency_loss(u: torch.Tensor, u_gen: torch.Tensor) -> torch.Tensor:
    """Eq 9 (NOTES item 7): mean over i of (k - u_i . u'_i) / (2k)."""
    k = u.shape[1]
    return ((k - (u * u_gen).sum(dim=1)) / (2 * k)).mean()


def quantization_loss(u: torch.Tensor) -> torch.Tensor:
    """Eq 10 for one set of codes: mean over items of sum_bits |u - sign(u)|."""
    return (u - torch.sign(u).detach()).abs().sum(dim=1).mean()


def similarity_matrix(labels_a, labels_b) -> torch.Tensor:
    """S_ij = 1 when items share a label: equal int labels, or any common multi-hot label."""
    a = torch.as_tensor(labels_a)
    b = torch.as_tensor(labels_b)
    if a.dim() != b.dim():
        raise ValueError("labels_a and labels_b must both be int vectors or both multi-hot")
    if a.dim() == 1:
        return (a[:, None] == b[None, :]).float()
    return ((a.float() @ b.float().t()) > 0).float()


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``mean`` over all entries, ``row_sum`` = per-item sum over partners then mean over items."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "row_sum":
        return loss.sum(dim=1).mean()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")
