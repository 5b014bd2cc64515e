"""AlexNet in plain torch, the paper's H-Net encoder ("Network Design": AlexNet, all
layers but the last copied from the pre-trained model; the hashing layer replaces fc8).

Layout and parameter names follow torchvision's AlexNet (``features.0`` ... ``features.10``
conv stack, ``avgpool`` adaptive 6x6, ``classifier.1`` = fc6, ``classifier.4`` = fc7), so a
torchvision AlexNet state dict loads directly; its 1000-way head ``classifier.6.*`` is
ignored. No pretrained weights ship with the project: pass a file, or the network starts
from random initialisation (with a warning).

Inputs in [0, 1] are normalised with the ImageNet mean/std; a 1-channel input is repeated
to 3 channels. Inputs must be at least 63 px (three 3x3/2 max-pools after a stride-4 conv).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ConfigError
from .efficientnet import _feature_shapes, load_checked, read_state_dict

Edit = Callable[[str, torch.Tensor], torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# feature name -> index of the ReLU in ``features`` after which it is taken.
# conv1 64 ch stride 4, conv2 192 ch stride 8, conv3 384, conv4 256, conv5 256 ch stride 16
# (all before the following max-pool).
_FEATURE_AT = {1: "conv1", 4: "conv2", 7: "conv3", 9: "conv4", 11: "conv5"}
ALEXNET_FEATURES = ("conv1", "conv2", "conv3", "conv4", "conv5")
MIN_SIZE = 63


class AlexNet(nn.Module):
    """AlexNet backbone: ``forward(x, edit) -> (B, 4096)``, the fc7 output after ReLU.

    ``edit(name, f) -> f'`` is applied to each conv feature map (after its ReLU, before
    pooling) named in ``feature_names`` (MSMN's feature masks, Eq 1).
    """

    feature_names = ALEXNET_FEATURES
    out_dim = 4096

    def __init__(self, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"alexnet takes 1 or 3 input channels, not {in_channels}")
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        # classifier.0 dropout, .1 fc6, .2 ReLU, .3 dropout, .4 fc7, .5 ReLU (fc8 dropped).
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_weights(self, path) -> None:
        """Load torchvision-named AlexNet weights (``classifier.6.*`` ignored), strict otherwise."""
        state = read_state_dict(path, "AlexNet weights")
        state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        load_checked(self, state, path, "AlexNet weights")

    def forward(self, x: torch.Tensor, edit: Edit | None = None) -> torch.Tensor:
        if x.shape[-1] < MIN_SIZE or x.shape[-2] < MIN_SIZE:
            raise ValueError(f"alexnet needs inputs of at least {MIN_SIZE} px, got "
                             f"{tuple(x.shape[-2:])}")
        if x.shape[1] == 1 and self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            x = layer(x)
            if edit is not None and i in _FEATURE_AT:
                x = edit(_FEATURE_AT[i], x)
        x = self.avgpool(x).flatten(1)
        return self.classifier(x)

    def feature_shapes(self, input_size: int, in_channels: int | None = None) -> dict:
        return _feature_shapes(self, input_size, in_channels)


def alexnet(in_channels: int = 3, weights=None, pretrained: bool = True, **kwargs) -> AlexNet:
    """Build AlexNet; ``weights`` is a user-supplied (torchvision-named) state dict file."""
    model = AlexNet(in_channels=in_channels, **kwargs)
    if weights is not None:
        model.load_weights(weights)
    elif pretrained:
        warnings.warn("alexnet: no weights file given (no pretrained AlexNet ships with ssah); "
                      "the network is RANDOMLY initialised. Pass a torchvision AlexNet state "
                      "dict file to start from ImageNet weights.", stacklevel=2)
    return model

