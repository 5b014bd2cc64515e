"""Run configuration: plain dataclasses, loaded from YAML or TOML, with ``key=value`` overrides."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .atomic import atomic_write
from .errors import ConfigError

VARIANTS = ("baseline", "random-rotate", "marn", "random-mask", "msmn-add", "msmn-mul", "msmn",
            "random-rotate-mask", "full", "fixed-paced")


@dataclass
class DataConfig:
    dataset: str = "digits"          # digits | fashion-mnist | cifar10 | folder | list | cub | dogs
    path: str | None = None          # dataset path (None: the loader's default)
    root: str | None = None          # image root for list files
    image_size: int | None = None    # resize to image_size x image_size (None: native size)
    channels: int = 3                # 1 for grayscale data, 3 for colour
    cache_dir: str = ".cache/ssah"   # decoded-image cache
    protocol: str = "standard"       # standard | fine-grained | unseen
    queries_per_class: int = 100
    labeled_per_class: int = 500
    labeled_fraction: float = 0.5    # fine-grained protocol
    known_fraction: float = 0.75     # unseen-class protocol
    split_seed: int = 0
    val_per_class: int = 0           # validation items carved from the labeled set (never queries)
    skip_bad: bool = False           # skip unreadable images (counted) instead of failing
    max_items: int | None = None     # use a random subset of this many items (quick runs)


@dataclass
class ModelConfig:
    backbone: str = "efficientnet-lite0"  # the default on CPU | alexnet (the paper's) | small-cnn
    bits: int = 16
    weights: str | None = None       # user-supplied backbone weights (alexnet)
    pretrained: bool = True          # efficientnet-lite0: load the shipped ImageNet weights
    mask_features: list[str] = field(default_factory=list)  # H-Net maps that MSMN masks (Eq 2)
    marn_max_scale: float = 1.25
    msmn_channels: int = 32
    sample_band: bool = False        # one rotation band per image per step, not all 3 (cheaper)


@dataclass
class LossConfig:
    lambda1: float = 1.0             # l_sem weight (Eq 11, 12)
    lambda2: float = 0.5             # l_con weight (Eq 12)
    alpha: float = 0.5               # l_sp weight (Eq 11)
    beta: float = 0.1                # l_quan weight (Eq 11, 12)
    semantic: str = "mse"            # mse | likelihood (Eq 8)
    pair_reduction: str = "row_sum"  # row_sum: paper's sums / batch size (NOTES item 10) | mean
    omega: float = 0.1               # margin, Eq 5
    omega_step: float = 0.02         # omega grows by this ...
    omega_every: int = 5             # ... every this many epochs
    self_paced: bool = True          # False: Table 6's fixed-paced loss
    sp_hinge: str = "pair"           # pair: Eq 5's hinge per pair | item: once per item (not in the paper)
    anet_losses: list[str] = field(default_factory=lambda: ["sem", "sph", "spc"])  # Table 5
    hnet_losses: list[str] = field(default_factory=lambda: ["sem", "con"])         # Table 5


@dataclass
class TrainConfig:
    variant: str = "full"
    epochs: int = 20
    steps_per_epoch: int | None = None   # None: one pass over the labeled training items
    batch_size: int = 32                 # labeled images per step
    unlabeled_batch_size: int = 32       # unlabeled images per step
    lr: float = 0.01                     # hash layer; backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 1.0
    anet_lr: float = 0.001
    anet_optimizer: str = "adam"         # adam | sgd
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"             # cosine | constant
    warmup_epochs: float = 0.0
    alternate: str = "batch"             # batch | epoch (Algorithm 1)
    flip: bool = False                   # random horizontal flips of the training images
    seed: int = 0
    init_from: str | None = None         # warm start: H-Net weights from this checkpoint or run dir
    device: str = "auto"                 # auto | cpu | cuda
    channels_last: bool = True
    num_threads: int | None = None
    eval_every: int = 1                  # validation mAP every this many epochs (0: never)
    checkpoint_every_steps: int = 0      # also checkpoint mid-epoch (0: at epoch ends only)
    keep_checkpoints: int = 3
    quiet: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "Config":
        return _build(cls, d or {}, where)

    def validate(self) -> "Config":
        if self.train.variant not in VARIANTS:
            raise ConfigError(f"train.variant={self.train.variant!r} is not one of: {', '.join(VARIANTS)}")
        for name, allowed, values in (("loss.anet_losses", {"sem", "sph", "spc"}, self.loss.anet_losses),
                                      ("loss.hnet_losses", {"sem", "con", "sp"}, self.loss.hnet_losses)):
            bad = set(values) - allowed
            if bad:
                raise ConfigError(f"{name} has unknown terms {sorted(bad)}; allowed: {sorted(allowed)}")
        if self.model.bits <= 0:
            raise ConfigError(f"model.bits must be positive, got {self.model.bits}")
        if self.train.batch_size < 2:
            raise ConfigError("train.batch_size must be at least 2 (the losses use pairs)")
        if self.loss.sp_hinge not in ("pair", "item"):
            raise ConfigError(f"loss.sp_hinge={self.loss.sp_hinge!r}: use 'pair' or 'item'")
        if self.train.alternate not in ("batch", "epoch"):
            raise ConfigError("train.alternate must be 'batch' or 'epoch'")
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML or TOML file (or the defaults when ``path`` is None), then apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text = p.read_text()
        try:
            data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{p}: cannot parse: {e}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    cfg = Config.from_dict(data or {}, where=str(path or "config"))
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg.validate()


def apply_override(cfg: Config, item: str) -> None:
    """Apply ``section.key=value``; the value is parsed as YAML (numbers, lists, null, bools)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    obj: Any = cfg
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            raise ConfigError(f"--set {item!r}: unknown section {part!r}")
        obj = getattr(obj, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"--set {item!r}: unknown key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    hint = get_type_hints(type(obj))[name]
    setattr(obj, name, _coerce(value, hint, f"--set {key}"))


# Settings that say where or how verbosely a run executes, not what it computes.
EXECUTION_KEYS = frozenset({"run_dir", "data.cache_dir", "data.path", "data.root", "train.device",
                            "train.num_threads", "train.quiet", "train.eval_every",
                            "train.checkpoint_every_steps", "train.keep_checkpoints"})


def config_differences(old: Config | dict, new: Config | dict, ignore=EXECUTION_KEYS) -> list[str]:
    """``["train.lr: 0.01 -> 0.02", ...]``: the dotted keys whose values differ, defaults filled in."""
    def flat(c) -> dict:
        out = {}
        for section, v in (c if isinstance(c, Config) else Config.from_dict(c)).to_dict().items():
            out.update({f"{section}.{k}": x for k, x in v.items()} if isinstance(v, dict) else {section: v})
        return out
    a, b = flat(old), flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in ignore and a.get(k) != b.get(k)]


def save_config(cfg: Config, path: str | Path) -> None:
    """Written atomically: a killed writer leaves the previous file, never half of one."""
    with atomic_write(path) as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {sorted(names)}")
    kwargs = {}
    for k, v in d.items():
        hint = hints[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = _build(hint, v, f"{where}.{k}")
        else:
            kwargs[k] = _coerce(v, hint, f"{where}.{k}")
    return cls(**kwargs)


def _coerce(value, hint, where: str):
    """Check ``value`` against a simple type hint (int, float, str, bool, list[str], X | None)."""
    args = get_args(hint)
    origin = get_origin(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        return str(value)
    return value


def config_hash(cfg: Config) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
