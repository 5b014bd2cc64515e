"""Explicit composition of a run from its config: data + split, H-Net, A-Net."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, DataConfig, ModelConfig
from ..data import build_cache, open_dataset
from ..data.protocols import Split, fine_grained_split, standard_split, unseen_class_split
from ..errors import CheckpointError, ConfigError
from ..models import MARN, MSMN, HashNet, RandomMask, RandomRotate, build_backbone
from ..models.anet import ANet
from .checkpoint import resolve_checkpoint

# variant -> (rotation, masks); "marn"/"msmn*" are learned, "random" the Table 4 baselines.
VARIANT_PARTS = {
    "baseline": (None, None),
    "random-rotate": ("random", None),
    "marn": ("marn", None),
    "random-mask": (None, "random"),
    "msmn-add": (None, "msmn-add"),
    "msmn-mul": (None, "msmn-mul"),
    "msmn": (None, "msmn"),
    "random-rotate-mask": ("random", "random"),
    "full": ("marn", "msmn"),
    "fixed-paced": ("marn", "msmn"),
}


@dataclass
class RunData:
    """Decoded images (N, H, W, C) uint8, labels, ids, the protocol split and a validation set."""
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    split: Split
    train_labeled: np.ndarray
    val: np.ndarray

    @property
    def channels(self) -> int:
        return self.images.shape[-1]


def load_images(cfg: DataConfig, progress: bool = True):
    """Open the dataset and return (images uint8 (N, H, W, C), labels, ids, official splits)."""
    kw = {"root": cfg.root} if cfg.dataset == "list" else {}
    ds = open_dataset(cfg.dataset, cfg.path, **kw)
    cache = build_cache(ds, cfg.image_size, cfg.cache_dir, channels=cfg.channels,
                        skip_bad=cfg.skip_bad, progress=progress)
    images, labels, ids, splits = cache.array, ds.labels, ds.ids, ds.splits
    keep = None
    if len(cache.skipped_indices):   # skip_bad dropped unreadable files (counted and reported)
        keep = np.flatnonzero(cache.keep)
    if cfg.max_items is not None and cfg.max_items < len(labels):
        pool = np.flatnonzero(cache.keep)
        keep = np.sort(np.random.default_rng(cfg.split_seed).permutation(pool)[:cfg.max_items])
    if keep is not None:
        images, labels, ids = images[keep], labels[keep], ids[keep]
        splits = None if splits is None else splits[keep]
    return images, np.asarray(labels), np.asarray(ids), splits


def make_split(cfg: DataConfig, labels: np.ndarray, splits) -> Split:
    if cfg.protocol == "standard":
        return standard_split(labels, cfg.queries_per_class, cfg.labeled_per_class, cfg.split_seed)
    if cfg.protocol == "fine-grained":
        if splits is None:
            raise ConfigError(f"data.protocol=fine-grained needs a dataset with an official "
                              f"train/test split; {cfg.dataset!r} has none")
        return fine_grained_split(labels, splits, cfg.labeled_fraction, cfg.split_seed)
    if cfg.protocol == "unseen":
        return unseen_class_split(labels, cfg.known_fraction, cfg.split_seed)
    raise ConfigError(f"data.protocol={cfg.protocol!r}: use standard, fine-grained or unseen")


def prepare_data(cfg: DataConfig, run_dir: str | Path | None = None, progress: bool = True,
                 split: Split | None = None) -> RunData:
    """Load images, make (or reload) the protocol split and carve the validation set.

    ``split`` (e.g. rank 0's split, sent to the other ranks) is used as given when passed.
    """
    images, labels, ids, splits = load_images(cfg, progress)
    split_path = Path(run_dir) / "split.json" if run_dir is not None else None
    if split is not None:
        split.check(len(labels))
    elif split_path is not None and split_path.is_file():
        split = Split.load(split_path)
        split.check(len(labels))
    else:
        split = make_split(cfg, labels, splits)
        if split_path is not None:
            split.save(split_path)
    if cfg.val_per_class > 0:
        train_labeled, val = split.validation(cfg.val_per_class, cfg.split_seed)
    else:
        train_labeled, val = split.labeled, np.empty(0, dtype=np.int64)
    return RunData(images, labels, ids, split, train_labeled, val)


def build_hnet(cfg: ModelConfig, in_channels: int) -> HashNet:
    backbone = build_backbone(cfg.backbone, in_channels=in_channels, weights=cfg.weights,
                              pretrained=cfg.pretrained)
    unknown = set(cfg.mask_features) - set(backbone.feature_names)
    if unknown:
        raise ConfigError(f"model.mask_features {sorted(unknown)} are not feature maps of "
                          f"{cfg.backbone}; choose from {list(backbone.feature_names)}")
    return HashNet(backbone, cfg.bits)


# Data settings that decide which images are queries, labeled, unlabeled or held out.
SPLIT_KEYS = ("dataset", "protocol", "queries_per_class", "labeled_per_class", "labeled_fraction",
              "known_fraction", "split_seed", "val_per_class", "max_items")


def warm_start(hnet: HashNet, cfg: Config, in_channels: int) -> Path:
    """Load ``train.init_from``'s H-Net weights into ``hnet`` (a two-stage schedule: e.g. the
    supervised baseline, then SSAH). Only the weights carry over; epochs, optimiser and A-Net
    start fresh. The source must share the bits, backbone and split, so that no query or
    validation image was ever trained on."""
    where = f"train.init_from={cfg.train.init_from!r}"
    try:
        path, state = resolve_checkpoint(cfg.train.init_from)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    src = Config.from_dict(state["config"], where=f"{path} config")
    wanted = [("model.bits", src.model.bits, cfg.model.bits),
              ("model.backbone", src.model.backbone, cfg.model.backbone),
              ("input channels", state["in_channels"], in_channels)]
    wanted += [(f"data.{k}", getattr(src.data, k), getattr(cfg.data, k)) for k in SPLIT_KEYS]
    bad = [f"{k}: {a!r} there, {b!r} here" for k, a, b in wanted if a != b]
    if bad:
        raise CheckpointError(f"{where}: {path} does not match this run ({'; '.join(bad)})")
    hnet.load_state_dict(state["hnet"])
    return path


def build_anet(cfg: Config, in_channels: int) -> ANet | None:
    """The A-Net of a variant (Table 4), or None for the baseline."""
    rotation, masks = VARIANT_PARTS[cfg.train.variant]
    if rotation is None and masks is None:
        return None
    m = cfg.model
    rotate = {None: None,
              "random": lambda: RandomRotate(max_scale=m.marn_max_scale),
              "marn": lambda: MARN(in_channels, max_scale=m.marn_max_scale)}[rotation]
    mask = {None: None,
            "random": lambda: RandomMask(m.mask_features),
            "msmn": lambda: MSMN(in_channels, m.mask_features, base_channels=m.msmn_channels),
            "msmn-add": lambda: MSMN(in_channels, m.mask_features, use_mul=False,
                                     base_channels=m.msmn_channels),
            "msmn-mul": lambda: MSMN(in_channels, m.mask_features, use_add=False,
                                     base_channels=m.msmn_channels)}[masks]
    return ANet(rotate() if rotate else None, mask() if mask else None, sample_band=m.sample_band)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available")
    return torch.device(name)


def to_tensor(batch: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1] on ``device``."""
    x = torch.from_numpy(np.require(batch, requirements=["C", "W"])).to(device).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
