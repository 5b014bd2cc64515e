"""Tests of the networks: backbones, hashing layer, MARN, MSMN and the random baselines."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from ssah.errors import CheckpointError, ConfigError
from ssah.models import (MARN, MSMN, HashNet, RandomMask, RandomRotate, apply_mask,
                         build_backbone, mask_edit)
from ssah.models.marn import bounded_angles, rotate_scale


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return build_backbone("efficientnet-lite0").eval()


def _imagenet_input(array: np.ndarray) -> torch.Tensor:
    """Resize the shorter side to 256 (bicubic), centre-crop 224, scale to [0, 1]."""
    from PIL import Image
    im = Image.fromarray(array)
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255


# ----------------------------------------------------------------- EfficientNet-Lite0

def test_lite0_pretrained_classifies_imagenet_samples(lite0):
    skdata = pytest.importorskip("skimage.data")
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    x = torch.stack([_imagenet_input(skdata.chelsea()), _imagenet_input(skdata.coffee())])
    with torch.no_grad():
        prob = lite0.logits(x).softmax(1)
    top5 = prob.topk(5).indices
    assert set(top5[0].tolist()) & set(range(281, 288)), top5[0]
    assert int(top5[0, 0]) in range(281, 288)
    assert int(top5[1, 0]) == 967
    # Reference (measured on this setup): chelsea 282 0.383, 285 0.358, 281 0.168;
    # coffee 967 0.951. Wrong normalisation or symmetric padding moves these by > 0.02.
    assert top5[0].tolist() == [282, 285, 281, 287, 904], top5[0]
    for i, cls, p in [(0, 282, 0.383), (0, 285, 0.358), (0, 281, 0.168), (1, 967, 0.951)]:
        assert abs(float(prob[i, cls]) - p) < 0.02, (cls, float(prob[i, cls]))


def test_lite0_state_dict_is_strict_and_shapes(lite0):
    from ssah.models.efficientnet import read_state_dict, shipped_weights_path
    sd = read_state_dict(shipped_weights_path())
    assert set(sd) == set(lite0.state_dict())
    assert lite0._blocks[1]._bn0.eps == 1e-3 and abs(lite0._bn0.momentum - 0.01) < 1e-12
    assert not hasattr(lite0._blocks[0], "_expand_conv")


@pytest.mark.parametrize("size", [64, 96, 33])
def test_lite0_small_sizes_and_channels_last(lite0, size):
    torch.manual_seed(1)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        ref = lite0(x)
        cl = lite0.to(memory_format=torch.channels_last)
        try:
            out = cl(x.contiguous(memory_format=torch.channels_last))
        finally:
            lite0.to(memory_format=torch.contiguous_format)
    assert ref.shape == (2, 1280) and torch.isfinite(ref).all()
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    shapes = lite0.feature_shapes(size)
    last = math.ceil(size / 32)
    assert shapes["head"] == (1280, last, last)
    assert shapes["block4"][1] == math.ceil(size / 8)


def test_same_padding_is_asymmetric_on_stride2():
    from ssah.models.efficientnet import Conv2dSame, _same_pad
    assert _same_pad(224, 3, 2) == (0, 1)
    assert _same_pad(224, 5, 2) == (1, 2)
    assert _same_pad(7, 5, 2) == (2, 2)
    conv = Conv2dSame(1, 1, 3, 2)
    nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)
    y = conv(x)
    # TF "same": the padded row/column is at the end, so the first output sees no padding.
    assert y.shape == (1, 1, 2, 2) and y[0, 0, 0, 0] == 9 and y[0, 0, 1, 1] == 4


def test_lite0_grayscale_and_random_init():
    m = build_backbone("efficientnet-lite0", in_channels=1, pretrained=False).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 1, 64, 64)).shape == (2, 1280)


# ----------------------------------------------------------------- AlexNet

def _torchvision_named_alexnet_state(seed: int = 0) -> dict:
    """A random AlexNet state dict with torchvision's key names, fc8 head included."""
    torch.manual_seed(seed)
    m = build_backbone("alexnet", pretrained=False)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["classifier.6.weight"] = torch.randn(1000, 4096) * 0.01
    sd["classifier.6.bias"] = torch.zeros(1000)
    return sd


def test_alexnet_loads_torchvision_keys(tmp_path):
    sd = _torchvision_named_alexnet_state()
    expected = {"features.0.weight", "features.3.weight", "features.6.weight", "features.8.weight",
                "features.10.weight", "classifier.1.weight", "classifier.4.weight"}
    assert expected <= set(sd)
    path = tmp_path / "alexnet.pth"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = build_backbone("alexnet", weights=path)
    assert torch.equal(m.features[0].weight, sd["features.0.weight"])
    assert torch.equal(m.classifier[4].bias, sd["classifier.4.bias"])
    assert m.out_dim == 4096
    with torch.no_grad():
        assert m.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 4096)


def test_alexnet_warns_without_weights():
    with pytest.warns(UserWarning, match="(?i)random"):
        build_backbone("alexnet")


def test_alexnet_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        build_backbone("alexnet", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        build_backbone("alexnet", weights=junk)
    sd = _torchvision_named_alexnet_state()
    del sd["features.3.weight"]
    sd["features.99.weight"] = torch.zeros(1)
    bad = tmp_path / "mismatch.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=r"mismatch\.pth.*features\.3\.weight"):
        build_backbone("alexnet", weights=bad)
    sd = _torchvision_named_alexnet_state()
    sd["classifier.4.weight"] = torch.zeros(10, 10)
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="shape"):
        build_backbone("alexnet", weights=bad)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="efficientnet-lite0.*small-cnn|alexnet"):
        build_backbone("resnet50")


# ----------------------------------------------------------------- edit hook, all backbones

_BACKBONES = [("small-cnn", 1, 8), ("small-cnn", 3, 28), ("alexnet", 3, 67),
              ("efficientnet-lite0", 3, 64)]


@pytest.mark.parametrize("name,channels,size", _BACKBONES)
def test_edit_hook(name, channels, size):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_backbone(name, in_channels=channels, pretrained=(name == "efficientnet-lite0"))
    m.eval()
    x = torch.rand(2, channels, size, size)
    calls = []

    def record(fname, f):
        calls.append((fname, tuple(f.shape)))
        return f

    with torch.no_grad():
        ref = m(x)
        out = m(x, edit=record)
    assert ref.shape == (2, m.out_dim)
    assert [c[0] for c in calls] == list(m.feature_names)
    assert len(set(m.feature_names)) == len(m.feature_names)
    shapes = m.feature_shapes(size)
    assert list(shapes) == list(m.feature_names)
    for fname, shape in calls:
        assert shape == (2,) + shapes[fname]
    assert torch.equal(out, ref)
    # a non-identity edit of one map changes the output
    with torch.no_grad():
        changed = m(x, edit=lambda n, f: f * 0 if n == m.feature_names[0] else f)
    assert not torch.allclose(changed, ref)


# ----------------------------------------------------------------- H-Net

def test_hashnet_shape_range_and_grad():
    torch.manual_seed(0)
    net = HashNet(build_backbone("small-cnn", in_channels=1), bits=12)
    assert net.bits == 12 and net.hash_layer.out_features == 12 and net.backbone.out_dim == 128
    x = torch.rand(4, 1, 8, 8)
    mu = net(x)
    assert mu.shape == (4, 12) and (mu.abs() < 1).all()
    mu.sum().backward()
    assert net.backbone.conv1[0].weight.grad.abs().sum() > 0
    assert set(net.codes(x).unique().tolist()) <= {-1.0, 1.0}


# ----------------------------------------------------------------- MARN

def _check_bounds(angles, scales, band=10.0, max_scale=1.25):
    for n in range(angles.shape[0]):
        a = angles[n].abs()
        assert (a >= band * n - 1e-4).all() and (a <= band * (n + 1) + 1e-4).all(), (n, angles[n])
    assert (scales >= 1 / max_scale - 1e-6).all() and (scales <= max_scale + 1e-6).all()


@pytest.mark.parametrize("size", [8, 28, 64])
def test_marn_bounds_random_inputs(size):
    torch.manual_seed(0)
    marn = MARN(in_channels=3)
    y, angles, scales = marn(torch.rand(5, 3, size, size))
    assert y.shape == (3, 5, 3, size, size)
    assert angles.shape == (3, 5) and scales.shape == (3, 5)
    _check_bounds(angles, scales)


def test_marn_bounds_extreme_outputs():
    torch.manual_seed(0)
    marn = MARN(in_channels=1)
    for sign in (1.0, -1.0):
        with torch.no_grad():
            marn.fc_out.weight.fill_(1e4 * sign)
            marn.fc_out.weight[::2] *= -1  # mixed signs across transforms
            marn.fc_out.bias.fill_(-1e4 * sign)
        y, angles, scales = marn(torch.rand(6, 1, 16, 16) * 100)
        assert torch.isfinite(angles).all() and torch.isfinite(y).all()
        _check_bounds(angles, scales)
    raw = torch.tensor([[-1e30, -3.0, -1e-8, 0.0, 1e-8, 3.0, 1e30]]).repeat(3, 1)
    a = bounded_angles(raw, 10.0)
    _check_bounds(a, torch.ones(1))


def test_marn_identity_and_gradients():
    torch.manual_seed(0)
    marn = MARN(in_channels=3)
    x = torch.rand(2, 3, 17, 23)
    y = rotate_scale(x, torch.zeros(1, 2), torch.ones(1, 2))
    assert torch.allclose(y[0], x, atol=1e-5)
    with torch.no_grad():  # raw = 0 -> angle 0 for n = 1, scale 1
        marn.fc_out.weight.zero_()
    y, angles, scales = marn(x)
    assert torch.allclose(y[0], x, atol=1e-5)
    assert torch.allclose(angles[1].abs(), torch.full((2,), 10.0))
    # gradients reach the localisation net
    marn.reset_output()
    y, angles, scales = marn(x)
    (y.square().mean() + angles.sum() + scales.sum()).backward()
    assert marn.loc[0].weight.grad.abs().sum() > 0
    assert marn.fc_out.weight.grad.abs().sum() > 0


def test_marn_rotation_moves_content():
    img = torch.zeros(1, 1, 21, 21)
    img[0, 0, 10, 16] = 1
    y = rotate_scale(img, torch.tensor([[90.0]]), torch.tensor([[1.0]]))[0, 0, 0]
    r, c = divmod(int(y.argmax()), 21)
    assert (r, c) == (4, 10)  # positive angle: counter-clockwise as displayed
    img = torch.zeros(1, 1, 21, 21)
    img[0, 0, 10, 13] = 1  # 3 px right of the centre
    z = rotate_scale(img, torch.tensor([[0.0]]), torch.tensor([[2.0]]))[0, 0, 0]
    r, c = divmod(int(z.argmax()), 21)
    assert r == 10 and c in (15, 16, 17)  # scale 2 zooms in: 3 px -> about 6 px


def test_random_rotate_bands():
    torch.manual_seed(0)
    rr = RandomRotate(n_transforms=3, band_degrees=10.0, max_scale=1.2)
    assert len(list(rr.parameters())) == 0
    y, angles, scales = rr(torch.rand(200, 1, 8, 8))
    assert y.shape == (3, 200, 1, 8, 8)
    _check_bounds(angles, scales, max_scale=1.2)
    assert (angles > 0).any() and (angles < 0).any()
    assert float(angles[2].abs().min()) < 22 and float(angles[2].abs().max()) > 28


# ----------------------------------------------------------------- MSMN

@pytest.mark.parametrize("size", [8, 28, 33, 64])
def test_msmn_shapes_and_ranges(size):
    torch.manual_seed(0)
    msmn = MSMN(in_channels=3, feature_names=["conv1", "conv2"], base_channels=8)
    masks = msmn(torch.rand(2, 3, size, size))
    assert list(masks) == ["image", "conv1", "conv2"]
    for am, pm in masks.values():
        assert am.shape == (2, 1, size, size) and pm.shape == (2, 1, size, size)
        assert (torch.tanh(am).abs() <= 1).all()
        s = torch.sigmoid(pm)
        assert ((s >= 0) & (s <= 1)).all()
        # initialised near neutral
        assert torch.tanh(am).abs().max() < 0.05 and s.max() < 0.05
    assert list(MSMN(1, [])(torch.rand(1, 1, 9, 9))) == ["image"]


def test_apply_mask_neutral_and_closed_form():
    torch.manual_seed(0)
    f = torch.randn(2, 4, 3, 3)
    zero = torch.zeros(2, 1, 12, 12)
    ninf = torch.full((2, 1, 12, 12), -math.inf)
    assert torch.equal(apply_mask(f, zero, ninf), f)
    assert torch.equal(apply_mask(f, None, None), f)
    assert torch.equal(apply_mask(f, zero, None), f)
    # closed form, masks at the feature's resolution
    f = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]]).repeat(1, 2, 1, 1)
    am = torch.tensor([[[[0.0, 0.5], [-1.0, 2.0]]]])
    pm = torch.tensor([[[[0.0, -1.0], [1.0, 3.0]]]])
    got = apply_mask(f, am, pm)
    want = (1 - 1 / (1 + torch.exp(-pm))) * f + torch.tanh(am)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got[0, 0, 0, 0], torch.tensor(0.5))  # (1 - 0.5) * 1 + 0
    # masks at twice the resolution are area-averaged after activation
    am2 = am.repeat_interleave(2, -1).repeat_interleave(2, -2)
    pm2 = pm.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(apply_mask(f, am2, pm2), want, atol=1e-6)
    # masks smaller than the feature map are enlarged (nearest)
    assert apply_mask(torch.ones(1, 3, 4, 4), am, pm).shape == (1, 3, 4, 4)


def test_msmn_switches_and_edit():
    torch.manual_seed(0)
    names = ["block4", "head"]
    y = torch.rand(2, 3, 16, 16)
    full = MSMN(3, names, base_channels=8)
    masks = full(y)
    assert not torch.all(masks["head"][0] == 0)
    no_add = MSMN(3, names, use_add=False, base_channels=8)(y)
    no_mul = MSMN(3, names, use_mul=False, base_channels=8)(y)
    f = torch.randn(2, 5, 4, 4)
    for name in ["image"] + names:
        assert torch.equal(no_add[name][0], torch.zeros_like(no_add[name][0]))
        assert torch.isneginf(no_mul[name][1]).all()
        am, pm = no_add[name]
        assert torch.allclose(apply_mask(f, am, pm), apply_mask(f, None, pm))
        am, pm = no_mul[name]
        assert torch.allclose(apply_mask(f, am, pm), apply_mask(f, am, None))
    both_off = MSMN(3, names, use_add=False, use_mul=False, base_channels=8)(y)
    assert torch.equal(apply_mask(f, *both_off["head"]), f)
    # the edit callable applies the right masks and skips the image entry
    edit = mask_edit(masks)
    assert torch.equal(edit("image", f), f) and torch.equal(edit("other", f), f)
    assert torch.allclose(edit("head", f), apply_mask(f, *masks["head"]))
    # gradients reach the generator through Eq 1
    out = apply_mask(f, *masks["head"]).sum() + apply_mask(y, *masks["image"]).sum()
    out.backward()
    assert full.down[0].weight.grad.abs().sum() > 0


def test_random_mask_statistics():
    g = torch.Generator().manual_seed(0)
    rm = RandomMask(["conv2"], generator=g)
    assert len(list(rm.parameters())) == 0
    masks = rm(torch.rand(8, 3, 64, 64))
    assert list(masks) == ["image", "conv2"]
    for am, pm in masks.values():
        a, p = torch.tanh(am), torch.sigmoid(pm)
        assert am.shape == (8, 1, 64, 64) and torch.isfinite(am).all() and torch.isfinite(pm).all()
        assert (a.abs() <= 1).all() and ((p >= 0) & (p <= 1)).all()
        frac_a = float((a.abs() <= 0.1).float().mean())
        frac_p = float((p <= 0.1).float().mean())
        assert 0.88 < frac_a < 0.92, frac_a
        assert 0.88 < frac_p < 0.92, frac_p
        assert float(a.mean().abs()) < 0.01  # symmetric additive noise
    off = RandomMask([], use_add=False, use_mul=False)(torch.rand(1, 3, 8, 8))
    f = torch.randn(1, 3, 8, 8)
    assert torch.equal(apply_mask(f, *off["image"]), f)


def test_train_step_through_hnet_with_masks():
    """One A-Net/H-Net style pass in training mode: MARN -> MSMN masks -> H-Net (Lite0,
    channels-last) with Eq 1 on the image and two feature maps; gradients reach all parts."""
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet-lite0", pretrained=False)
    net = HashNet(backbone, bits=16).train().to(memory_format=torch.channels_last)
    marn = MARN(3)
    msmn = MSMN(3, ["block4", "head"], base_channels=8)
    x = torch.rand(3, 3, 64, 64)
    y, _, _ = marn(x)
    y = y.flatten(0, 1)
    masks = msmn(y)
    y = apply_mask(y, *masks["image"]).contiguous(memory_format=torch.channels_last)
    mu = net(y, edit=mask_edit(masks))
    assert mu.shape == (9, 16)
    mu.square().sum().backward()
    for p in (net.hash_layer.weight, backbone._conv_stem.weight, msmn.out.weight,
              marn.fc_out.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_anet_sample_band_keeps_one_rotation_per_image():
    """sample_band: image b of the generation is band k_b of the full generation, every band
    is drawn, and the Eq 7 sum weight is n / 1."""
    from ssah.models.anet import ANet
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    rotate = RandomRotate(generator=torch.Generator().manual_seed(1))
    full = ANet(rotate, None)(x)
    assert (full.n, full.bands, full.sum_weight) == (3, 3, 1.0)
    rotate.generator.manual_seed(1)                     # the same angles again
    anet = ANet(rotate, None, sample_band=True, generator=torch.Generator().manual_seed(2))
    gen = anet(x)
    assert gen.images.shape == x.shape and (gen.n, gen.bands, gen.sum_weight) == (1, 3, 3.0)
    bands = full.images.view(3, 64, 3, 16, 16)
    picks = [[k for k in range(3) if torch.equal(gen.images[b], bands[k, b])] for b in range(64)]
    assert all(len(p) == 1 for p in picks)
    assert sorted({p[0] for p in picks}) == [0, 1, 2]
    assert gen.angles.shape == (3, 64)                   # all bands' parameters stay visible


def test_anet_sample_band_warps_only_the_picked_band(monkeypatch):
    """sample_band resamples B images, not n B, and equals the picked band of the full warp."""
    from ssah.models import anet as anet_module
    from ssah.models.anet import ANet
    seen = []
    warp = anet_module.rotate_scale
    monkeypatch.setattr(anet_module, "rotate_scale",
                        lambda x, a, s: seen.append(tuple(a.shape)) or warp(x, a, s))
    torch.manual_seed(0)
    marn, x = MARN(3), torch.rand(5, 3, 16, 16)
    gen = ANet(marn, None, sample_band=True, generator=torch.Generator().manual_seed(3))(x)
    assert seen == [(1, 5)] and gen.images.shape == x.shape
    full = marn(x)[0]
    pick = torch.randint(3, (5,), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(gen.images, full[pick, torch.arange(5)], atol=1e-6)


def test_anet_sample_band_learns_through_the_picked_band():
    from ssah.models.anet import ANet
    torch.manual_seed(0)
    marn, msmn = MARN(3), MSMN(3, [], base_channels=8)
    gen = ANet(marn, msmn, sample_band=True)(torch.rand(4, 3, 16, 16))
    assert gen.images.shape == (4, 3, 16, 16) and gen.image_mask[0].shape[0] == 4
    gen.images.square().sum().backward()
    for p in (marn.fc_out.weight, msmn.out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [MARN, RandomRotate])
@pytest.mark.parametrize("kwargs, word", [({"max_scale": 0.5}, "max_scale"), ({"n_transforms": 0}, "n_transforms")])
def test_rotations_refuse_bad_band_arguments(cls, kwargs, word):
    with pytest.raises(ValueError, match=word):
        cls(**kwargs)
