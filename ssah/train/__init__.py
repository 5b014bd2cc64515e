"""Training (Algorithm 1), encoding and evaluation of SSAH models."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from . import distributed
from .build import build_anet, build_hnet, prepare_data, resolve_device
from .checkpoint import resolve_checkpoint
from .encode import encode_images, retrieval_report
from .trainer import Trainer, check_compatible

__all__ = ["train", "load_model", "evaluate_checkpoint", "encode_split", "Trainer", "encode_images", "retrieval_report",
           "build_hnet", "build_anet", "prepare_data", "resolve_device", "check_compatible"]


def train(cfg: Config, resume: bool = False) -> Trainer:
    """Build data, H-Net and A-Net from ``cfg`` and run Algorithm 1; returns the trainer.

    Under ``torchrun`` (``WORLD_SIZE > 1``) this process joins the process group (gloo on
    CPU, NCCL on CUDA) and trains its share of every batch; see :mod:`.distributed`.
    """
    t = cfg.train
    device = resolve_device(t.device)
    info, device = distributed.setup(device)
    try:
        torch.manual_seed(t.seed)
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        if info.world_size > 1:
            # rank 0 decodes the cache and makes (or reloads) the split; the others then read
            # the cache and take rank 0's split
            data = None

            def first():
                nonlocal data
                data = prepare_data(cfg.data, cfg.run_dir, progress=not t.quiet)
                return data.split
            split = distributed.on_main(first)
            if data is None:
                data = prepare_data(cfg.data, None, progress=False, split=split)
        else:
            data = prepare_data(cfg.data, cfg.run_dir, progress=not t.quiet)
        hnet = build_hnet(cfg.model, data.channels)
        anet = build_anet(cfg, data.channels)
        trainer = Trainer(cfg, hnet, anet, data, cfg.run_dir, device)
        trainer.fit(resume=resume)
    except BaseException:
        distributed.teardown(info, ok=False)
        raise
    distributed.teardown(info)
    return trainer


def load_model(checkpoint: str | Path, device: str = "auto"):
    """(H-Net in eval mode, Config, checkpoint path, state) from a checkpoint file or run directory."""
    path, state = resolve_checkpoint(checkpoint)
    cfg = Config.from_dict(state["config"], where=f"{path} config")
    cfg.model.pretrained = False   # the checkpoint holds every weight
    cfg.model.weights = None
    hnet = build_hnet(cfg.model, state["in_channels"])
    hnet.load_state_dict(state["hnet"])
    dev = resolve_device(device)
    hnet.to(dev).eval()
    return hnet, cfg, path, state


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run directory of a checkpoint file (``<run>/checkpoints/ckpt-*.pt`` or a file in it)."""
    p = Path(checkpoint_path)
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def encode_split(checkpoint: str | Path, device: str = "auto", progress=False):
    """Codes of the run's queries and database from a checkpoint:
    ``(codes_q, labels_q, codes_d, labels_d, cfg, path, state)``."""
    hnet, cfg, path, state = load_model(checkpoint, device)
    data = prepare_data(cfg.data, run_dir_of(path), progress=progress)
    dev = next(hnet.parameters()).device
    cl = cfg.train.channels_last and dev.type == "cpu"
    if cl:
        hnet.to(memory_format=torch.channels_last)
    q, db = data.split.query, data.split.database
    codes_q = encode_images(hnet, data.images, dev, channels_last=cl, progress=progress, rows=q)
    codes_d = encode_images(hnet, data.images, dev, channels_last=cl, progress=progress, rows=db)
    return codes_q, data.labels[q], codes_d, data.labels[db], cfg, path, state


def evaluate_checkpoint(checkpoint: str | Path, device: str = "auto", top_k=(5000,), progress=False,
                        tie_aware: bool = True) -> dict:
    """Encode the run's queries and database and report mAP@all, mAP@K, P@N, precision@r2
    (ties ranked as in :func:`retrieval_report`)."""
    codes_q, labels_q, codes_d, labels_d, cfg, path, state = encode_split(checkpoint, device, progress)
    report = retrieval_report(codes_q, labels_q, codes_d, labels_d, top_k=top_k, tie_aware=tie_aware)
    report.update({"checkpoint": str(path), "bits": cfg.model.bits, "backbone": cfg.model.backbone,
                   "variant": cfg.train.variant, "dataset": cfg.data.dataset, "epoch": state["epoch"]})
    return report
