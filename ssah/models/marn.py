"""MARN, the multi-angle rotation network of the A-Net (paper, "Multi-Angle Rotation
Network"; NOTES item 12), and the "random rotate" ablation baseline (Table 4).

An STN whose localisation network predicts n affine transforms (rotation + isotropic
scale, no translation, so the location correspondence of pixels is kept). The rotation of
transform n (1-based) lies in +/-[band (n-1), band n] degrees (band = 10 in the paper) and
the scale in [1 / max_scale, max_scale]; both bounds hold by parametrisation:

    u = tanh(r_angle),   angle_n = band (n-1) sgn(u) + band u      (sgn(0) = +1)
    scale_n = max_scale ** tanh(r_scale)

so |angle_n| = band (n-1) + band |u|. The sign of the angle flips when u crosses 0.

Resampling: ``F.affine_grid`` + ``F.grid_sample`` (bilinear, ``align_corners=False``,
zero padding: corners rotated in from outside the image are black, as in ordinary rotation
augmentation). The rotation is done in pixel space, so non-square images are not sheared.
A scale > 1 enlarges the content (zoom in); a positive angle rotates the content
counter-clockwise as displayed (row index growing downwards).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LOC_SIZE = 32  # the localisation net sees the image average-pooled / resized to 32x32


def rotation_theta(angles: torch.Tensor, scales: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Affine matrices (..., 2, 3) for ``F.affine_grid``: rotate by ``angles`` (degrees) and
    scale by ``scales`` about the image centre, in pixel space (correct for H != W)."""
    a = angles * (math.pi / 180.0)
    c, s = torch.cos(a) / scales, torch.sin(a) / scales
    zero = torch.zeros_like(c)
    hw, wh = height / width, width / height
    row0 = torch.stack([c, -s * hw, zero], dim=-1)
    row1 = torch.stack([s * wh, c, zero], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def rotate_scale(x: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (B, C, H, W) with ``angles``/``scales`` of shape (n, B) -> (n, B, C, H, W)."""
    n = angles.shape[0]
    b, c, h, w = x.shape
    theta = rotation_theta(angles.float(), scales.float(), h, w).reshape(n * b, 2, 3).to(x.dtype)
    xs = x.unsqueeze(0).expand(n, b, c, h, w).reshape(n * b, c, h, w)
    grid = F.affine_grid(theta, [n * b, c, h, w], align_corners=False)
    y = F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return y.reshape(n, b, c, h, w)


def bounded_angles(raw: torch.Tensor, band_degrees: float) -> torch.Tensor:
    """Map raw outputs (n, B) to angles with |angle_n| in [band (n-1), band n] (n 1-based)."""
    u = torch.tanh(raw)
    k = torch.arange(raw.shape[0], device=raw.device, dtype=raw.dtype).view(-1, *([1] * (raw.dim() - 1)))
    sign = torch.where(u >= 0, 1.0, -1.0).to(raw.dtype)
    return band_degrees * k * sign + band_degrees * u


def band_arguments(n_transforms, band_degrees, max_scale) -> tuple[int, float, float]:
    """Checked (n, band, max_scale) of MARN and its random counterpart."""
    if int(n_transforms) < 1:
        raise ValueError(f"n_transforms must be >= 1, got {n_transforms}")
    if max_scale < 1:
        raise ValueError(f"max_scale must be >= 1, got {max_scale}")
    return int(n_transforms), float(band_degrees), float(max_scale)


class MARN(nn.Module):
    """Multi-angle rotation network: ``forward(x) -> (y, angles, scales)``.

    x: (B, C, H, W), any size from 8 px up; y: (n, B, C, H, W) = the n hard generations
    y^(n); angles: (n, B) degrees; scales: (n, B).
    """

    def __init__(self, in_channels: int = 3, n_transforms: int = 3, band_degrees: float = 10.0,
                 max_scale: float = 1.25, hidden: int = 32):
        super().__init__()
        self.n_transforms, self.band_degrees, self.max_scale = band_arguments(
            n_transforms, band_degrees, max_scale)
        h = int(hidden)
        # Localisation network: the image is brought to 32x32 by adaptive average pooling
        # (which also upsamples small inputs), then 3 conv layers and 2 linear layers.
        self.loc = nn.Sequential(
            nn.Conv2d(in_channels, h // 2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(h // 2, h, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(4 * h, h), nn.ReLU(inplace=True),
        )
        # Output: per transform one raw angle and one raw scale.
        self.fc_out = nn.Linear(h, 2 * self.n_transforms)
        self.reset_output()

    def reset_output(self) -> None:
        """Small weights, zero bias: raw ~ 0, so angles start at the small end of each band
        (near 0 for n = 1, near +/-band (n-1) otherwise, sign depending on the image) and
        scales at ~1."""
        nn.init.normal_(self.fc_out.weight, std=1e-2)
        nn.init.zeros_(self.fc_out.bias)

    def parameters_from_raw(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """raw (B, 2n) -> angles (n, B) in degrees, scales (n, B)."""
        raw = raw.view(raw.shape[0], self.n_transforms, 2).permute(2, 1, 0)
        angles = bounded_angles(raw[0], self.band_degrees)
        scales = torch.pow(torch.as_tensor(self.max_scale, dtype=raw.dtype, device=raw.device),
                           torch.tanh(raw[1]))
        return angles, scales

    def transforms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The n predicted transforms of each image: angles (n, B) in degrees, scales (n, B)."""
        small = F.adaptive_avg_pool2d(x, LOC_SIZE)
        return self.parameters_from_raw(self.fc_out(self.loc(small)))

    def forward(self, x: torch.Tensor):
        angles, scales = self.transforms(x)
        return rotate_scale(x, angles, scales), angles, scales


class RandomRotate(nn.Module):
    """The "random rotate" baseline (Table 4): n rotations with angles drawn uniformly in
    +/-[band (n-1), band n] (random sign) and scales log-uniform in [1/max_scale, max_scale]
    (default max_scale = 1: rotation only, as in the paper). Same interface as MARN; no
    parameters. Uses torch's global RNG unless a ``generator`` is given."""

    def __init__(self, n_transforms: int = 3, band_degrees: float = 10.0, max_scale: float = 1.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.n_transforms, self.band_degrees, self.max_scale = band_arguments(
            n_transforms, band_degrees, max_scale)
        self.generator = generator

    def transforms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """n random transforms per image: angles (n, B) in degrees, scales (n, B)."""
        n, b = self.n_transforms, x.shape[0]
        g = self.generator
        u = torch.rand(n, b, generator=g) * 2 - 1                     # magnitude in band, signed
        k = torch.arange(n, dtype=torch.float32).view(n, 1)
        angles = self.band_degrees * k * torch.where(u >= 0, 1.0, -1.0) + self.band_degrees * u
        log_s = (torch.rand(n, b, generator=g) * 2 - 1) * math.log(self.max_scale)
        scales = torch.exp(log_s)
        return angles.to(x.device), scales.to(x.device)

    def forward(self, x: torch.Tensor):
        angles, scales = self.transforms(x)
        return rotate_scale(x, angles, scales), angles, scales
