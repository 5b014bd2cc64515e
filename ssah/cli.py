"""The ``ssah`` command line: train, encode, evaluate, demo, index, search, bench."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

from .errors import SSAHError

BENCHMARKS = ("metrics", "encode", "search", "paper")


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train
    overrides = list(args.set or [])
    if args.quiet:
        overrides.append("train.quiet=true")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    trainer = train(cfg, resume=args.resume)
    last = trainer.history[-1] if trainer.history else {}
    print(json.dumps({"run_dir": cfg.run_dir, "epochs": trainer.epoch, **{k: last[k] for k in ("val_map",) if k in last}}))
    return 0


def cmd_encode(args) -> int:
    import torch
    from .data import build_cache, open_dataset
    from .index.packing import pack_codes
    from .train import encode_images, load_model
    hnet, cfg, path, state = load_model(args.checkpoint, args.device)
    name = args.dataset or cfg.data.dataset
    data_path = args.path if args.dataset else (args.path or cfg.data.path)
    kw = {"root": args.root or cfg.data.root} if name == "list" else {}
    ds = open_dataset(name, data_path, **kw)
    size = state["input_size"]
    cache = build_cache(ds, size, args.cache_dir or cfg.data.cache_dir, channels=state["in_channels"],
                        skip_bad=args.skip_bad, progress=not args.quiet)
    keep = np.flatnonzero(cache.keep)
    labels, ids = ds.labels[keep], ds.ids[keep]
    dev = next(hnet.parameters()).device
    cl = dev.type == "cpu"
    if cl:
        hnet.to(memory_format=torch.channels_last)
    codes = encode_images(hnet, cache.array, dev, batch_size=args.batch_size, channels_last=cl,
                          progress=not args.quiet, rows=keep)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, codes=pack_codes(codes), bits=np.int64(codes.shape[1]),
             ids=np.arange(len(codes), dtype=np.int64), names=np.asarray(ids, dtype=str),
             labels=np.asarray(labels))
    tmp.replace(out)
    print(f"wrote {len(codes)} codes of {codes.shape[1]} bits to {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .train import evaluate_checkpoint
    report = evaluate_checkpoint(args.checkpoint, args.device, top_k=tuple(args.top_k),
                                 progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.run_dir, quiet=args.quiet, fresh=not args.resume)
    return 0


def cmd_bench(args) -> int:
    module = importlib.import_module(f"ssah.bench.{args.name}")
    return module.main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssah", description="Semi-supervised adversarial deep hashing.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML/TOML config")
    t.add_argument("config", nargs="?", help="config file (defaults when omitted)")
    t.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="overrides, e.g. --set train.epochs=5 model.bits=32")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    t.add_argument("--run-dir", help="where checkpoints and logs go (overrides run_dir)")
    t.add_argument("--device", help="auto, cpu or cuda")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="write packed binary codes of a dataset")
    e.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    e.add_argument("--dataset", help="dataset name (default: the run's)")
    e.add_argument("--path", help="dataset path")
    e.add_argument("--root", help="image root for list files")
    e.add_argument("--out", required=True, help="output .npz")
    e.add_argument("--cache-dir", help="decoded-image cache directory")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--skip-bad", action="store_true", help="skip unreadable images, counting them")
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_encode)

    v = sub.add_parser("evaluate", help="mAP@all, mAP@K, P@N, precision@r2 on the run's protocol")
    v.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    v.add_argument("--top-k", type=int, nargs="+", default=[5000], help="K of mAP@K")
    v.add_argument("--device", default="auto")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train full SSAH on the embedded digits data, evaluate, index, query")
    d.add_argument("--run-dir", default="runs/demo")
    d.add_argument("--resume", action="store_true", help="reuse the demo's checkpoints")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS))
    b.add_argument("name", choices=BENCHMARKS)
    b.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    b.set_defaults(func=cmd_bench)

    from .index import commands   # ssah index ..., ssah search
    commands.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SSAHError as e:
        print(f"ssah: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssah: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
