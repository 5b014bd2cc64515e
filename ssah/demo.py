"""The main job on the embedded default: full SSAH on digits; train, evaluate, index, query."""
from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .config import load_config


def demo_config_path() -> Path:
    return Path(str(resources.files("ssah") / "configs" / "digits.yaml"))


def run_demo(run_dir: str = "runs/demo", quiet: bool = False, fresh: bool = True,
             overrides: list[str] | None = None) -> dict:
    """Train (Algorithm 1), evaluate on the held-out queries, index the database, run queries."""
    from .index import HammingIndex
    from .train import encode_images, retrieval_report, train

    cfg = load_config(demo_config_path(), [f"run_dir={run_dir}", f"train.quiet={str(quiet).lower()}",
                                           *(overrides or [])])
    if fresh and Path(run_dir).exists():
        shutil.rmtree(run_dir)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.time()
    trainer = train(cfg, resume=not fresh)
    train_s = time.time() - start
    data, hnet = trainer.data, trainer.hnet
    q, db = data.split.query, data.split.database
    codes_q = encode_images(hnet, data.images, trainer.device, channels_last=trainer.channels_last, rows=q)
    codes_d = encode_images(hnet, data.images, trainer.device, channels_last=trainer.channels_last, rows=db)
    report = retrieval_report(codes_q, data.labels[q], codes_d, data.labels[db], top_k=(100,))
    index = HammingIndex(cfg.model.bits)
    index.add(codes_d, ids=db.astype(np.int64))
    dist, ids = index.search(codes_q[:5], 5)
    print(f"\nSSAH demo: digits, {cfg.model.bits} bits, {cfg.train.epochs} epochs, "
          f"{len(data.train_labeled)} labeled + {len(data.split.unlabeled)} unlabeled training images, "
          f"trained in {train_s:.0f} s")
    print(f"mAP@all over {len(db)} database images ({len(q)} queries): {report['map_all']:.4f}")
    print(f"mAP@100: {report['map_at_100']:.4f}  P@10: {report['p_at_10']:.4f}  "
          f"precision within Hamming radius 2: {report['precision_r2']:.4f}")
    print(f"index: {len(index)} codes, engine {index.engine}")
    for row in range(len(ids)):
        labels = [int(data.labels[i]) for i in ids[row]]
        print(f"query {int(q[row])} (label {int(data.labels[q[row]])}): top-5 labels {labels}, "
              f"ids {ids[row].tolist()}, distances {dist[row].tolist()}")
    return report
