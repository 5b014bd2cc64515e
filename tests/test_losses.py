"""Closed forms of every SSAH loss on hand-made 2-4 item cases."""
import math

import pytest
import torch

from ssah.losses import (adversarial_loss, consistency_loss, pair_distance, quantization_loss,
                         semantic_loss, similarity, similarity_matrix)

U = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
V = torch.tensor([[1.0, 1.0], [-0.5, 0.5]])
S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_similarity_closed_form():
    # k = 2: u.v = [[2, 0], [0, -1]] -> (u.v + 2) / 4
    expected = torch.tensor([[1.0, 0.5], [0.5, 0.25]])
    assert torch.allclose(similarity(U, V), expected)


def test_pair_distance_is_one_minus_sim_for_similar_and_sim_for_dissimilar():
    expected = torch.tensor([[0.0, 0.5], [0.5, 0.75]])
    assert torch.allclose(pair_distance(U, V, S), expected)


def test_semantic_loss_mse_and_likelihood():
    # (sim - S)^2 = [[0, .25], [.25, .5625]]
    assert semantic_loss(U, V, S).item() == pytest.approx((0 + 0.25 + 0.25 + 0.5625) / 4)
    assert semantic_loss(U, V, S, reduction="row_sum").item() == pytest.approx((0.25 + 0.8125) / 2)
    # theta = u.v / 2 = [[1, 0], [0, -0.5]]; softplus(theta) - S theta
    terms = [math.log1p(math.e) - 1, math.log(2), math.log(2), math.log1p(math.exp(-0.5)) + 0.5]
    assert semantic_loss(U, V, S, kind="likelihood").item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    with pytest.raises(ValueError):
        semantic_loss(U, V, S, kind="nope")


def test_adversarial_loss_self_paced_and_fixed():
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    S2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # d = [[0, .5], [.5, 0]]. Generated codes make the similar pairs harder:
    u_gen = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # sim(u_gen, u_gen) = (1 + 2) / 4 = .75 everywhere; d' = [[.25, .75], [.75, .25]]
    # hard = d' - d = [[.25, .25], [.25, .25]]
    omega = 0.4
    # self-paced margin omega (1 - d) = [[.4, .2], [.2, .4]] -> max(margin - .25, 0) = [[.15, 0], [0, .15]]
    assert adversarial_loss(u, u, u_gen, u_gen, S2, omega).item() == pytest.approx(0.3 / 4)
    # fixed margin .4 -> .15 everywhere
    assert adversarial_loss(u, u, u_gen, u_gen, S2, omega, self_paced=False).item() == pytest.approx(0.15)
    # no hardness at all: the loss is the mean margin
    assert adversarial_loss(u, u, u, u, S2, omega).item() == pytest.approx((0.4 + 0.2 + 0.2 + 0.4) / 4)


def test_adversarial_loss_item_hinge_nets_partners_before_the_max():
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    S2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    u_gen = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # as above: margin - hard = [[.15, -.05], [-.05, .15]]; per pair the -.05 are clamped to 0,
    # per item they offset the .15: row means .05, row sums .1
    assert adversarial_loss(u, u, u_gen, u_gen, S2, 0.4, hinge="item").item() == pytest.approx(0.05)
    assert adversarial_loss(u, u, u_gen, u_gen, S2, 0.4, reduction="row_sum").item() == pytest.approx(0.15)
    assert adversarial_loss(u, u, u_gen, u_gen, S2, 0.4, reduction="row_sum",
                            hinge="item").item() == pytest.approx(0.1)
    assert adversarial_loss(u, u, u_gen, u_gen, S2, 0.4, reduction="none",
                            hinge="item").tolist() == pytest.approx([0.05, 0.05])
    # omega .3: margin - hard = [[.05, -.1], [-.1, .05]]: hard enough on average, so zero per
    # item, though not per pair
    assert adversarial_loss(u, u, u_gen, u_gen, S2, 0.3).item() == pytest.approx(0.025)
    assert adversarial_loss(u, u, u_gen, u_gen, S2, 0.3, hinge="item").item() == 0.0
    with pytest.raises(ValueError, match="hinge"):
        adversarial_loss(u, u, u_gen, u_gen, S2, 0.4, hinge="nope")


def test_adversarial_loss_is_zero_when_generations_are_hard_enough():
    u = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    S2 = torch.eye(2)
    # d = 0 everywhere (similar pairs agree, dissimilar pairs are opposite)
    u_gen = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    # cross-domain pairs (x_i, y_j): sim = .5 everywhere, so d' = .5 and hard = .5 > margin .1
    assert adversarial_loss(u, u, u, u_gen, S2, 0.1).item() == 0.0
    # with a margin of 1 the loss is 1 - .5 = .5 everywhere
    assert adversarial_loss(u, u, u, u_gen, S2, 1.0).item() == pytest.approx(0.5)


def test_consistency_loss_closed_form():
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    u_gen = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    # item 1: (2 - 0) / 4 = .5 ; item 2: (2 - 2) / 4 = 0
    assert consistency_loss(u, u_gen).item() == pytest.approx(0.25)


def test_quantization_loss_closed_form():
    u = torch.tensor([[0.5, -0.5], [1.0, -0.2]])
    assert quantization_loss(u).item() == pytest.approx((1.0 + 0.8) / 2)


def test_similarity_matrix_int_and_multihot():
    assert torch.equal(similarity_matrix([0, 1, 0], [0, 1]),
                       torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    a = torch.tensor([[1, 0, 1], [0, 1, 0]])
    b = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 0, 0]])
    assert torch.equal(similarity_matrix(a, b), torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError):
        similarity_matrix([0, 1], a)
