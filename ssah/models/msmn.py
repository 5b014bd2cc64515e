"""MSMN, the multi-scale mask network of the A-Net (paper, "Multi-Scale Mask Network",
Fig. 3, "Network Design"; NOTES items 9 and 13), Eq 1, and the "random mask" ablation
baseline (Table 4).

Eq 1, as the project reads it (NOTES item 9; the equation wins over the text):

    F_m = (1 - sigmoid(PM_m)) * f_m + tanh(AM_m)

m = 0 is the image itself ("image"), m >= 1 the selected H-Net feature maps. Masks are
(B, 1, H, W) pre-activations at image resolution, broadcast over channels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE = "image"


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, 1, h, w) mask to ``size``: area averaging down, nearest up (exact on
    constants, so neutral masks stay exactly neutral)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if t.shape[-2] >= size[0] and t.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(t, size)
    return F.interpolate(t, size=size, mode="nearest")


def apply_mask(f: torch.Tensor, am: torch.Tensor | None, pm: torch.Tensor | None) -> torch.Tensor:
    """Eq 1: ``F = (1 - sigmoid(PM)) * f + tanh(AM)``.

    f: (B, C, h, w); am, pm: (B, 1, H, W) pre-activations (any resolution). The effective
    masks ``1 - sigmoid(PM)`` and ``tanh(AM)`` are computed first and then resized to
    (h, w) (area average when shrinking, nearest when enlarging), and broadcast over
    channels. ``pm = -inf`` or ``None`` means no multiplication and ``am = 0`` or ``None``
    no addition: both leave ``f`` exactly unchanged.
    """
    size = tuple(f.shape[-2:])
    if pm is not None:
        keep = _resize(1 - torch.sigmoid(pm), size).to(f.dtype)
        f = f * keep
    if am is not None:
        f = f + _resize(torch.tanh(am), size).to(f.dtype)
    return f


def mask_edit(masks: dict, skip_image: bool = True):
    """An ``edit(name, f)`` callable for a backbone that applies Eq 1 with ``masks[name]``
    to each named feature map it has masks for (the image entry is skipped by default:
    apply it to the input yourself with ``apply_mask``)."""
    def edit(name: str, f: torch.Tensor) -> torch.Tensor:
        if (skip_image and name == IMAGE) or name not in masks:
            return f
        am, pm = masks[name]
        return apply_mask(f, am, pm)
    return edit


class ResidualBlock(nn.Module):
    """conv3x3 - InstanceNorm - ReLU - conv3x3 - InstanceNorm, plus the identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.InstanceNorm2d(ch, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.InstanceNorm2d(ch, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MSMN(nn.Module):
    """Multi-scale mask network, a lightweight GANimation generator:

    stride-2 conv 4x4 (C -> base) + IN + ReLU, 3 residual blocks with instance norm,
    1/2-strided (transposed) conv 4x4 (base -> base/2) + IN + ReLU back to exactly
    (H, W) (odd sizes via the transposed conv's output padding), then a 3x3 conv
    producing 2 maps (AM_m, PM_m) for each of the M = 1 + len(feature_names) scales.

    ``forward(y) -> {"image": (AM_0, PM_0), name: (AM_m, PM_m), ...}``, each (B, 1, H, W),
    pre-activations for :func:`apply_mask`. The output layer is initialised so that Eq 1
    starts near identity: AM ~ 0 (bias 0, small weights) and PM ~ -4 (sigmoid 0.018).
    ``use_add=False``: AM is exactly 0; ``use_mul=False``: PM is -inf (no multiplication).
    """

    def __init__(self, in_channels: int = 3, feature_names: Sequence[str] = (),
                 use_add: bool = True, use_mul: bool = True, base_channels: int = 32,
                 pm_bias: float = -4.0):
        super().__init__()
        self.feature_names = tuple(feature_names)
        if IMAGE in self.feature_names:
            raise ValueError(f"'{IMAGE}' is reserved for the image mask (m = 0)")
        self.names = (IMAGE,) + self.feature_names
        self.use_add, self.use_mul = bool(use_add), bool(use_mul)
        c = int(base_channels)
        self.down = nn.Sequential(
            nn.Conv2d(in_channels, c, 4, stride=2, padding=1, bias=False),
            nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True))
        self.res = nn.Sequential(*[ResidualBlock(c) for _ in range(3)])
        self.up = nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False)
        self.up_norm = nn.Sequential(nn.InstanceNorm2d(c // 2, affine=True), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(c // 2, 2 * len(self.names), 3, padding=1)
        nn.init.normal_(self.out.weight, std=1e-3)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[1::2] = pm_bias  # channel 2m = AM_m, channel 2m+1 = PM_m

    def forward(self, y: torch.Tensor) -> dict:
        b, _, h, w = y.shape
        z = self.res(self.down(y))
        z = self.up_norm(self.up(z, output_size=(h, w)))
        out = self.out(z)
        masks = {}
        for m, name in enumerate(self.names):
            am = out[:, 2 * m:2 * m + 1]
            pm = out[:, 2 * m + 1:2 * m + 2]
            if not self.use_add:
                am = torch.zeros_like(am)
            if not self.use_mul:
                pm = torch.full_like(pm, -math.inf)
            masks[name] = (am, pm)
        return masks


class RandomMask(nn.Module):
    """The "random mask" baseline (Table 4): data-independent masks, same interface as MSMN.

    Per pixel, i.i.d. at image resolution:
      additive term       a = tanh(AM) = clamp(N(0, s^2), -1, 1)
      multiplicative mask p = sigmoid(PM) = min(|N(0, s^2)|, 1)
    with s = 0.1 / 1.6449 (1.6449 = the 95% normal quantile), so P(|a| <= 0.1) = 0.9 and
    P(p <= 0.1) = 0.9, matching the paper's "90% of the values ... in [-0.1, 0.1]" with
    p in [0, 1] and a in [-1, 1]. They are returned as pre-activations
    AM = atanh(clamp(a, -1+eps, 1-eps)), PM = logit(clamp(p, eps, 1-eps)), eps = 1e-6,
    so :func:`apply_mask` applies them exactly like MSMN's masks. No parameters.
    """

    Q90 = 1.6448536269514722  # Phi^-1(0.95)

    def __init__(self, feature_names: Sequence[str] = (), use_add: bool = True,
                 use_mul: bool = True, bound: float = 0.1, eps: float = 1e-6,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.feature_names = tuple(feature_names)
        self.names = (IMAGE,) + self.feature_names
        self.use_add, self.use_mul = bool(use_add), bool(use_mul)
        self.sigma = float(bound) / self.Q90
        self.eps = float(eps)
        self.generator = generator

    def forward(self, y: torch.Tensor) -> dict:
        b, _, h, w = y.shape
        masks = {}
        for name in self.names:
            shape = (b, 1, h, w)
            if self.use_add:
                a = (torch.randn(shape, generator=self.generator) * self.sigma).clamp(-1 + self.eps, 1 - self.eps)
                am = torch.atanh(a)
            else:
                am = torch.zeros(shape)
            if self.use_mul:
                p = (torch.randn(shape, generator=self.generator) * self.sigma).abs().clamp(self.eps, 1 - self.eps)
                pm = torch.logit(p)
            else:
                pm = torch.full(shape, -math.inf)
            masks[name] = (am.to(y.device, y.dtype), pm.to(y.device, y.dtype))
        return masks
