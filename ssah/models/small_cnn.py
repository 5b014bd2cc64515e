"""A small CNN backbone for 8x8 and 28x28 inputs (scikit-learn digits, Fashion-MNIST).

Four 3x3 conv + BatchNorm + ReLU layers (widths w, 2w, 4w, 4w; strides 1, 2, 1, 2),
global average pooling, ``out_dim = 4w``. Random initialisation; works for any input
of at least 8 px. Inputs in [0, 1] are normalised as ``x * 2 - 1``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..errors import ConfigError
from .efficientnet import _feature_shapes, load_checked, read_state_dict

Edit = Callable[[str, torch.Tensor], torch.Tensor]

SMALL_CNN_FEATURES = ("conv1", "conv2", "conv3", "conv4")
MIN_SIZE = 8


def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """``forward(x, edit) -> (B, 4 * width)``; ``edit(name, f)`` is applied after each layer.

    Feature maps: conv1 (w, stride 1), conv2 (2w, stride 2), conv3 (4w, stride 2),
    conv4 (4w, stride 4).
    """

    feature_names = SMALL_CNN_FEATURES

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        if in_channels < 1:
            raise ConfigError(f"small-cnn needs at least 1 input channel, not {in_channels}")
        self.in_channels = in_channels
        self.out_dim = 4 * width
        self.conv1 = _layer(in_channels, width, 1)
        self.conv2 = _layer(width, 2 * width, 2)
        self.conv3 = _layer(2 * width, 4 * width, 1)
        self.conv4 = _layer(4 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, edit: Edit | None = None) -> torch.Tensor:
        if x.shape[-1] < MIN_SIZE or x.shape[-2] < MIN_SIZE:
            raise ValueError(f"small-cnn needs inputs of at least {MIN_SIZE} px, got "
                             f"{tuple(x.shape[-2:])}")
        x = x * 2 - 1
        for name in self.feature_names:
            x = getattr(self, name)(x)
            if edit is not None:
                x = edit(name, x)
        return self.pool(x).flatten(1)

    def feature_shapes(self, input_size: int, in_channels: int | None = None) -> dict:
        return _feature_shapes(self, input_size, in_channels)


def small_cnn(in_channels: int = 3, weights=None, pretrained: bool = True, **kwargs) -> SmallCNN:
    """Build the small CNN (random init; ``pretrained`` is ignored, ``weights`` a state dict file)."""
    model = SmallCNN(in_channels=in_channels, **kwargs)
    if weights is not None:
        load_checked(model, read_state_dict(weights, "small-cnn weights"), weights,
                     "small-cnn weights")
    return model
