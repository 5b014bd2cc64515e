"""The ``ssah`` command line: train, encode, evaluate, demo, index, search, bench."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

from .errors import SSAHError

BENCHMARKS = ("metrics", "encode", "train", "search", "paper", "serve", "robustness", "landscape")


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
    if not trainer.is_main:   # under torchrun rank 0 reports
        return 0
    last = trainer.history[-1] if trainer.history else {}
    print(json.dumps({"run_dir": cfg.run_dir, "epochs": trainer.epoch, **{k: last[k] for k in ("val_map",) if k in last}}))
    return 0


def shard_of(args) -> tuple[int, int, bool]:
    """(shard index, shard count, whether torchrun chose them) of ``ssah encode``."""
    import os
    if args.shard_index is not None and args.shards is None:
        raise SSAHError("--shard-index needs --shards")
    if args.shards is not None:
        index = 0 if args.shard_index is None else args.shard_index
        if args.shards < 1:
            raise SSAHError(f"--shards must be at least 1, got {args.shards}")
        if not 0 <= index < args.shards:
            raise SSAHError(f"--shard-index must be in 0..{args.shards - 1} for --shards "
                            f"{args.shards}, got {index}")
        if args.shards > 1 and args.shard_index is None:
            raise SSAHError("--shards needs --shard-index (or run under torchrun: shard = rank)")
        return index, args.shards, False
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:   # under torchrun: one shard per process
        return int(os.environ.get("RANK", "0")), world, True
    return 0, 1, False


def shard_path(out: str, index: int, shards: int, implicit: bool) -> Path:
    """``{shard}`` in ``out`` becomes the zero-padded shard index; under torchrun without the
    placeholder ``-<index>-of-<shards>`` goes before the suffix."""
    if "{shard}" in out:
        return Path(out.replace("{shard}", f"{index:05d}"))
    p = Path(out)
    if implicit and shards > 1:
        suffix = p.suffix or ".npz"
        return p.with_name(f"{p.stem}-{index:05d}-of-{shards:05d}{suffix}")
    return p


def cmd_encode(args) -> int:
    import os
    import torch
    from .data import build_cache, open_dataset
    from .data.cache import cache_fields
    from .index.packing import pack_codes
    from .train import encode_images, load_model
    from .train.checkpoint import state_digest
    from .train.encode import complete_codes_file, dataset_slice, shard_bounds, write_codes_file
    index, shards, implicit = shard_of(args)
    out = shard_path(args.out, index, shards, implicit)
    if out.is_dir():
        raise SSAHError(f"--out {out} is a folder; give a file name ending in .npz")
    device = args.device
    if implicit and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"   # one GPU per process
    hnet, cfg, path, state = load_model(args.checkpoint, device)
    name = args.dataset or cfg.data.dataset
    data_path = args.path if args.dataset else (args.path or cfg.data.path)
    kw = {"root": args.root or cfg.data.root} if name == "list" else {}
    ds = open_dataset(name, data_path, **kw)
    size, channels = state["input_size"], state["in_channels"]
    n_total = len(ds)
    lo, hi = shard_bounds(n_total, shards, index)
    meta = json.dumps({"model": state.get("sha256") or state_digest(state),
                       "data": cache_fields(ds, size, channels), "rows": [lo, hi],
                       "shard": [index, shards], "skip_bad": bool(args.skip_bad)}, sort_keys=True)
    if not args.force and complete_codes_file(out, meta):
        print(f"{out} is complete (checksum verified): shard {index + 1} of {shards}, rows "
              f"{lo}..{hi - 1}, skipped")
        return 0
    sub = ds if (lo, hi) == (0, n_total) else dataset_slice(ds, lo, hi)
    if len(sub) == 0:
        raise SSAHError(f"shard {index} of {shards} holds no images ({n_total} in the dataset); "
                        f"use fewer shards")
    cache = build_cache(sub, size, args.cache_dir or cfg.data.cache_dir, channels=channels,
                        skip_bad=args.skip_bad, progress=not args.quiet)
    keep = np.flatnonzero(cache.keep)
    labels, names = sub.labels[keep], sub.ids[keep]
    dev = next(hnet.parameters()).device
    cl = dev.type == "cpu"
    if cl:
        hnet.to(memory_format=torch.channels_last)
    codes = encode_images(hnet, cache.array, dev, batch_size=args.batch_size, channels_last=cl,
                          progress=not args.quiet, rows=keep)
    # ids are rows of the whole dataset, so that shards merge into the unsharded index
    write_codes_file(out, {"codes": pack_codes(codes), "bits": np.int64(hnet.bits),
                           "ids": (lo + keep).astype(np.int64), "names": np.asarray(names, dtype=str),
                           "labels": np.asarray(labels),
                           "skipped": np.asarray(cache.skipped_ids, dtype=str),
                           "meta": np.asarray(meta)})
    where = f" (shard {index + 1} of {shards}, rows {lo}..{hi - 1})" if shards > 1 else ""
    skipped = (f"; skipped {len(cache.skipped_ids)} unreadable image(s), listed in the file's "
               f"'skipped' array" if len(cache.skipped_ids) else "")
    print(f"wrote {len(codes)} codes of {hnet.bits} bits to {out}{where}{skipped}")
    return 0


def cmd_evaluate(args) -> int:
    from .train import evaluate_checkpoint
    report = evaluate_checkpoint(args.checkpoint, args.device, top_k=tuple(args.top_k),
                                 progress=not args.json, tie_aware=args.ties == "expected")
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
    e.add_argument("--out", required=True, help="output .npz; '{shard}' in it becomes the shard "
                                                "index")
    e.add_argument("--cache-dir", help="decoded-image cache directory")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--skip-bad", action="store_true", help="skip unreadable images, counting them")
    e.add_argument("--shards", type=int, help="split the dataset into this many contiguous shards "
                                              "(default 1; under torchrun the number of processes)")
    e.add_argument("--shard-index", type=int, help="which shard this run encodes (0-based; "
                                                   "under torchrun the rank)")
    e.add_argument("--force", action="store_true",
                   help="encode even when --out already holds this shard, complete and verified")
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_encode)

    v = sub.add_parser("evaluate", help="mAP@all, mAP@K, P@N, precision@r2 on the run's protocol")
    v.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    v.add_argument("--top-k", type=int, nargs="+", default=[5000], help="K of mAP@K")
    v.add_argument("--ties", choices=["expected", "database-order"], default="expected",
                   help="rank equal-distance items in random order, taking the expectation "
                        "(default), or in database order")
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
    from .serve import cli as serve_cli   # ssah serve
    serve_cli.register(sub)
    return p


def main(argv=None) -> int:
    for stream in (sys.stdout, sys.stderr):   # a non-UTF-8 file name never breaks printing
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
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
