"""``ssah bench landscape``: the A-Net's losses as MARN's rotation sweeps each angle band.

For a trained run, labeled training images are rotated by fixed angles (each image keeps
one random sign), from the inner edge of each band (|angle| = band (n-1)) to its outer edge
(band n), and the H-Net codes the rotations. Per angle it prints the terms the A-Net
minimises (Eq 7: l_sph = l_adv(y, y, omega), l_spc = l_adv(x, y, omega / 2); Eq 8: l_sem
over (x, y) and (y, y) pairs; ``_item``: the same with the hinge taken once per item,
``loss.sp_hinge=item``), the mean "hardness" d' - d (Eq 4) of similar and of
dissimilar pairs, its spread, and the fraction of code bits the rotation flips. It shows
where on each band the A-Net's own loss is lowest, i.e. which rotations it is pushed to.
Only the training split's labeled images are used, never queries or validation images.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..losses import adversarial_loss, pair_distance, semantic_loss, similarity_matrix
from ..models.marn import rotate_scale
from ..train import load_model, prepare_data, run_dir_of
from ..train.build import to_tensor

COLUMNS = ("band", "angle", "l_sph", "l_spc", "l_sph_item", "l_spc_item", "l_sem", "hard_similar",
           "hard_dissimilar", "hard_sd", "bits_flipped")


@torch.no_grad()
def angle_landscape(hnet, batches, omega: float, band_degrees: float = 10.0, n_bands: int = 3,
                    steps: int = 4, reduction: str = "row_sum", seed: int = 0) -> list[dict]:
    """Rows of ``COLUMNS`` (means over ``batches`` of (images (B, C, H, W), labels (B,)));
    ``steps + 1`` angles per band, both edges included. ``hnet`` is used as given (eval it)."""
    g = torch.Generator().manual_seed(seed)
    sums: dict[tuple[int, float], np.ndarray] = {}
    for x, y in batches:
        b = x.shape[0]
        S = similarity_matrix(y, y)
        similar = S.bool() & ~torch.eye(b, dtype=torch.bool)
        u = hnet(x)
        d = pair_distance(u, u, S)
        sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
        for n in range(n_bands):
            for t in np.linspace(0.0, 1.0, steps + 1):
                angle = band_degrees * (n + float(t))
                v = hnet(rotate_scale(x, (sign * angle).view(1, b), torch.ones(1, b))[0])
                hard = pair_distance(v, v, S) - d
                row = {}
                for suffix, hinge in (("", "pair"), ("_item", "item")):
                    row["l_sph" + suffix] = adversarial_loss(u, u, v, v, S, omega, reduction=reduction,
                                                             hinge=hinge).item()
                    row["l_spc" + suffix] = adversarial_loss(u, u, u, v, S, omega / 2,
                                                             reduction=reduction, hinge=hinge).item()
                row["l_sem"] = (semantic_loss(u, v, S, reduction=reduction)
                                + semantic_loss(v, v, S, reduction=reduction)).item()
                row["hard_similar"] = hard[similar].mean().item() if similar.any() else float("nan")
                row["hard_dissimilar"] = hard[~S.bool()].mean().item() if (~S.bool()).any() else float("nan")
                row["hard_sd"] = hard.std().item()
                row["bits_flipped"] = (u.sign() != v.sign()).float().mean().item()
                key = (n + 1, angle)
                sums[key] = sums.get(key, 0) + np.asarray([row[c] for c in COLUMNS[2:]])
    return [dict(zip(COLUMNS, (n, a, *(s / len(batches)).tolist()))) for (n, a), s in sums.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ssah bench landscape", description=__doc__)
    p.add_argument("--run", required=True, help="run directory or checkpoint of a trained run")
    p.add_argument("--batches", type=int, default=4, help="labeled batches to average over")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="angles per band after the inner edge")
    p.add_argument("--omega", type=float, default=None, help="margin (default: the run's loss.omega)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hnet, cfg, path, _ = load_model(args.run, "cpu")
    hnet = hnet.to(memory_format=torch.channels_last)
    data = prepare_data(cfg.data, run_dir_of(path), progress=False)
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(args.batches):
        idx = np.sort(rng.choice(data.train_labeled, args.batch_size, replace=False))
        batches.append((to_tensor(data.images[idx], torch.device("cpu"), True),
                        torch.as_tensor(data.labels[idx])))
    omega = cfg.loss.omega if args.omega is None else args.omega
    rows = angle_landscape(hnet, batches, omega, steps=args.steps,
                           reduction=cfg.loss.pair_reduction, seed=args.seed)
    if args.json:
        print(json.dumps({"checkpoint": str(path), "omega": omega, "rows": rows}))
        return 0
    print(f"{path}: {cfg.model.backbone}, {cfg.model.bits} bits, omega {omega}, "
          f"{args.batches} x {args.batch_size} labeled training images")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        print(f"| {r['band']} | {r['angle']:.1f} | " + " | ".join(
            f"{r[c]:+.4f}" if c.startswith("hard") else f"{r[c]:.3f}" for c in COLUMNS[2:]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
