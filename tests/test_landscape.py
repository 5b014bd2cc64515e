"""``ssah bench landscape``: closed forms at the inner edge of band 1 (no rotation)."""
import pytest
import torch

from ssah.bench.landscape import COLUMNS, angle_landscape
from ssah.losses import pair_distance, similarity_matrix
from ssah.models import HashNet, build_backbone


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    hnet = HashNet(build_backbone("small-cnn", in_channels=1, pretrained=False), 8).eval()
    x = torch.rand(6, 1, 16, 16)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    return hnet, [(x, y)]


def test_zero_angle_is_no_harder_and_costs_the_whole_margin(setup):
    hnet, batches = setup
    rows = angle_landscape(hnet, batches, omega=0.1, steps=2)
    assert [r["angle"] for r in rows] == [0.0, 5.0, 10.0, 10.0, 15.0, 20.0, 20.0, 25.0, 30.0]
    assert [r["band"] for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(set(r) == set(COLUMNS) for r in rows)
    first = rows[0]
    x, y = batches[0]
    with torch.no_grad():
        u = hnet(x)
    S = similarity_matrix(y, y)
    d = pair_distance(u, u, S)
    # hard = 0 for every pair, so Eq 5's hinge is its whole margin omega (1 - d), row-summed
    assert first["hard_similar"] == first["hard_dissimilar"] == first["hard_sd"] == 0.0
    assert first["bits_flipped"] == 0.0
    assert first["l_sph"] == pytest.approx((0.1 * (1 - d)).sum(1).mean().item(), rel=1e-5)
    assert first["l_spc"] == pytest.approx((0.05 * (1 - d)).sum(1).mean().item(), rel=1e-5)


def test_shared_band_edges_agree_and_rotation_moves_codes(setup):
    hnet, batches = setup
    rows = angle_landscape(hnet, batches, omega=0.1, steps=2)
    for a, b in ((2, 3), (5, 6)):   # band n's outer edge is band n+1's inner edge
        assert rows[a]["angle"] == rows[b]["angle"]
        assert rows[a]["l_sph"] == pytest.approx(rows[b]["l_sph"], rel=1e-5)
    assert rows[-1]["hard_sd"] > 0.0
