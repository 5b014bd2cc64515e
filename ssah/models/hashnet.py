"""The hashing network (H-Net): a backbone whose output layer is replaced by a hashing
layer, mu = tanh(W f + b) in (-1, 1)^k (paper, "H-Net": "the output layer of AlexNet is
replaced by a hashing layer"; binary codes b = sign(mu)).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

Edit = Callable[[str, torch.Tensor], torch.Tensor]


class HashNet(nn.Module):
    """``forward(x, edit=None) -> mu = tanh(hash_layer(backbone(x, edit)))``, shape (B, bits).

    ``edit`` is passed to the backbone: MSMN's masks enter the coding of generated images
    y through it (Eq 1); original images x are coded with ``edit=None``.
    """

    def __init__(self, backbone: nn.Module, bits: int):
        super().__init__()
        if int(bits) < 1:
            raise ValueError(f"bits must be positive, got {bits}")
        self.backbone = backbone
        self.bits = int(bits)
        self.hash_layer = nn.Linear(backbone.out_dim, self.bits)

    def forward(self, x: torch.Tensor, edit: Edit | None = None) -> torch.Tensor:
        return torch.tanh(self.hash_layer(self.backbone(x, edit)))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes b = sign(mu) in {-1, +1} (a zero maps to +1)."""
        mu = self.forward(x)
        return torch.where(mu >= 0, 1.0, -1.0).to(mu.dtype)
