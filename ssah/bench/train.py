"""``ssah bench train``: seconds per training step (Algorithm 1) of several variants, side by side.

Every row builds its own H-Net (and A-Net) from the same config plus its overrides and
trains on the same synthetic uint8 images (random pixels, 10 classes; speed does not
depend on the content). Rounds are interleaved (row 1, row 2, ..., row 1, ...), so that a
change of load hits every row alike, and each row reports its best round. The ratio is a
step's time over the first row's, and the epoch time is for the paper's CIFAR-10 protocol
(4,500 labeled training images at the configured batch size).
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import torch

from ..config import load_config
from ..data.protocols import standard_split
from ..train.build import RunData, build_anet, build_hnet
from ..train.trainer import Trainer
from .paper import machine, parse_row

DEFAULT_ROWS = ["baseline: train.variant=baseline", "full: train.variant=full",
                "full, sampled band: train.variant=full model.sample_band=true"]
CIFAR_LABELED = 4500   # 500 labeled per class minus the 50 held out for validation


def synthetic_data(size: int, channels: int, per_class: int, seed: int = 0) -> RunData:
    """Random images, 10 classes of ``per_class`` labeled and as many unlabeled items each."""
    labels = np.repeat(np.arange(10), 2 * per_class + 1)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), size, size, channels), dtype=np.uint8)
    split = standard_split(labels, queries_per_class=1, labeled_per_class=per_class, seed=seed)
    return RunData(images, labels, np.arange(len(labels)), split, split.labeled,
                   np.empty(0, dtype=np.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ssah bench train", description=__doc__)
    p.add_argument("--config", help="base config (default: the built-in defaults)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every row, e.g. model.backbone=small-cnn data.image_size=28")
    p.add_argument("--row", action="append", metavar="'LABEL: KEY=VALUE ...'",
                   help="a row and its own overrides (repeatable; default: baseline, full, "
                        "full with a sampled band)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--repeats", type=int, default=3, help="rounds per row")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [parse_row(r) for r in (args.row or DEFAULT_ROWS)]
    base = ["data.image_size=64", "model.mask_features=[block4]", "model.msmn_channels=16",
            "model.bits=12", "train.device=cpu", "train.quiet=true", *args.set]
    trainers, labels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in rows:
            cfg = load_config(args.config, [*base, *overrides, f"run_dir={tmp}"])
            per_class = max(cfg.train.batch_size, cfg.train.unlabeled_batch_size) // 10 + 2
            data = synthetic_data(cfg.data.image_size, cfg.data.channels, per_class)
            torch.manual_seed(0)
            hnet = build_hnet(cfg.model, data.channels)
            tr = Trainer(cfg, hnet, build_anet(cfg, data.channels), data, tmp, torch.device("cpu"))
            tr.train_step(0, 0)   # warm-up
            trainers.append(tr)
            labels.append(label)
        best = [math.inf] * len(rows)
        for _ in range(args.repeats):
            for j, tr in enumerate(trainers):
                start = time.perf_counter()
                for i in range(args.steps):
                    tr.train_step(0, i % tr.steps_per_epoch)
                best[j] = min(best[j], (time.perf_counter() - start) / args.steps)
    cfg0 = trainers[0].cfg
    print(f"machine: {machine()}, torch threads {torch.get_num_threads()}")
    print(f"{cfg0.model.backbone} at {cfg0.data.image_size} px, {cfg0.model.bits} bits, batch "
          f"{cfg0.train.batch_size} labeled + {cfg0.train.unlabeled_batch_size} unlabeled, "
          f"best of {args.repeats} rounds of {args.steps} steps")
    print("| row | s / step | x first row | s / epoch (CIFAR-10, 4,500 labeled) |\n|---|---|---|---|")
    for label, tr, s in zip(labels, trainers, best):
        steps = math.ceil(CIFAR_LABELED / tr.batch_size) * (2 if tr.cfg.train.alternate == "epoch" else 1)
        print(f"| {label} | {s:.3f} | {s / best[0]:.2f} | {s * steps:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
