"""Networks of SSAH: H-Net backbones and hashing layer, and the A-Net (MARN + MSMN).

``build_backbone(name, in_channels=3, weights=None, pretrained=True, **kwargs)`` with
``name`` in :data:`BACKBONES`. Every backbone takes (B, C, H, W) inputs in [0, 1],
normalises internally, and has ``feature_names``, ``out_dim``, ``forward(x, edit=None)``
and ``feature_shapes(input_size, in_channels=None)``.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError
from .alexnet import AlexNet, alexnet
from .efficientnet import EfficientNetLite0, efficientnet_lite0
from .hashnet import HashNet
from .marn import MARN, RandomRotate
from .msmn import MSMN, RandomMask, apply_mask, mask_edit
from .small_cnn import SmallCNN, small_cnn

_BUILDERS = {
    "alexnet": alexnet,
    "efficientnet-lite0": efficientnet_lite0,
    "small-cnn": small_cnn,
}
BACKBONES = tuple(_BUILDERS)


def build_backbone(name: str, in_channels: int = 3, weights=None, pretrained: bool = True,
                   **kwargs) -> nn.Module:
    """Build a backbone by name ("alexnet", "efficientnet-lite0", "small-cnn").

    ``weights``: a state dict file to load (torchvision names for alexnet, lukemelas names
    for efficientnet-lite0). ``pretrained``: efficientnet-lite0 loads the shipped ImageNet
    weights; alexnet has none and warns that it is random. Extra keyword arguments go to
    the backbone class (e.g. ``drop_connect_rate``, ``width``).
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in _BUILDERS:
        raise ConfigError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    try:
        return _BUILDERS[key](in_channels=in_channels, weights=weights, pretrained=pretrained,
                              **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad option for backbone {key!r}: {exc}") from None


__all__ = [
    "BACKBONES", "build_backbone", "HashNet", "MARN", "RandomRotate", "MSMN", "RandomMask",
    "apply_mask", "mask_edit", "AlexNet", "EfficientNetLite0", "SmallCNN",
]
