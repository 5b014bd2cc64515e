"""A-Net: MARN rotations followed by MSMN masks on the image and on H-Net feature maps."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .marn import rotate_scale
from .msmn import apply_mask


@dataclass
class Generation:
    """Hard images y^(n) for a batch, flattened to (n * B, C, H, W), with their feature masks."""
    images: torch.Tensor
    n: int
    feature_masks: dict = field(default_factory=dict)   # name -> (AM, PM), (n * B, 1, H, W)
    image_mask: tuple | None = None                      # (AM_0, PM_0) of Eq 1, m = 0
    angles: torch.Tensor | None = None                   # (n, B) degrees
    scales: torch.Tensor | None = None                   # (n, B)
    bands: int = 1                                       # rotation bands these n stand for

    @property
    def sum_weight(self) -> float:
        """Weight that keeps a sum over the bands (Eq 7) unbiased when one band is sampled."""
        return self.bands / self.n

    def edit(self, name: str, f: torch.Tensor) -> torch.Tensor:
        """Eq 2: H-Net feature maps of generated images are masked by Eq 1, m > 0."""
        if name in self.feature_masks:
            return apply_mask(f, *self.feature_masks[name])
        return f


class ANet(nn.Module):
    """Generates n hard versions of each image: rotate (MARN or random), then mask (MSMN or random).

    Either part may be None (the Table 4 ablations); with no rotation, n = 1.
    With ``sample_band`` each image keeps one of its n rotations, drawn uniformly (torch's
    global RNG unless a ``generator`` is given): all n transforms are predicted
    (``rotate.transforms``) but only the picked one is warped, so the warp, the masks and the
    H-Net see B images instead of n B: an unbiased, n times cheaper estimate of the averages
    over n.
    """

    def __init__(self, rotate: nn.Module | None, mask: nn.Module | None, sample_band: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.rotate = rotate
        self.mask = mask
        self.sample_band = bool(sample_band)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> Generation:
        angles = scales = None
        bands = 1
        if self.rotate is not None and self.sample_band and self.rotate.n_transforms > 1:
            angles, scales = self.rotate.transforms(x)    # (n, B): all bands predicted ...
            bands, b = angles.shape[0], x.shape[0]
            pick = torch.randint(bands, (b,), generator=self.generator).to(x.device)
            every = torch.arange(b, device=x.device)
            y = rotate_scale(x, angles[pick, every][None], scales[pick, every][None])[0]
            n = 1                                         # ... but only the picked one is warped
        elif self.rotate is not None:
            y, angles, scales = self.rotate(x)            # (n, B, C, H, W)
            n = bands = y.shape[0]
            y = y.reshape(n * x.shape[0], *x.shape[1:])
        else:
            y, n = x, 1
        feature_masks, image_mask = {}, None
        if self.mask is not None:
            masks = self.mask(y)
            image_mask = masks.pop("image")
            y = apply_mask(y, *image_mask)                # Eq 1, m = 0
            feature_masks = masks
        if y.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return Generation(images=y, n=n, feature_masks=feature_masks, image_mask=image_mask,
                          angles=angles, scales=scales, bands=bands)

    def has_parameters(self) -> bool:
        return any(p.requires_grad for p in self.parameters())
