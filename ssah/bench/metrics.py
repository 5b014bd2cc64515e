"""Benchmark of the exact retrieval metrics on random clustered codes.

``python -m ssah.bench.metrics [--queries 1000] [--db 59000] [--bits 48] [--seed 0]``
times :func:`ssah.metrics.mean_average_precision` (mAP@all, mAP@5000, tie-aware mAP@all
and mAP@5000) and reports the peak extra memory of one mAP@all call.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from ssah.metrics import mean_average_precision

TARGET_S = 5.0


def make_data(n_queries: int, n_db: int, bits: int, seed: int, classes: int = 10,
              flip: float = 0.2):
    """Class-clustered {-1,+1} codes: each class has a random centre; bits flip with ``flip``."""
    rng = np.random.default_rng(seed)
    centres = rng.choice(np.array([-1, 1], np.int8), size=(classes, bits))

    def draw(n):
        labels = rng.integers(0, classes, n)
        codes = centres[labels].copy()
        codes[rng.random((n, bits)) < flip] *= -1
        return codes, labels

    qc, ql = draw(n_queries)
    dc, dl = draw(n_db)
    return qc, ql, dc, dl


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ssah bench metrics", description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--db", type=int, default=59000)
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if min(args.queries, args.db, args.bits) < 1:
        ap.error("--queries, --db and --bits must be positive")

    qc, ql, dc, dl = make_data(args.queries, args.db, args.bits, args.seed)
    k = min(5000, args.db)
    runs = [("mAP@all", dict()), (f"mAP@{k}", dict(top_k=k)),
            ("tie-aware mAP@all", dict(tie_aware=True)),
            (f"tie-aware mAP@{k}", dict(top_k=k, tie_aware=True))]
    print(f"{args.queries} queries x {args.db} database items, {args.bits} bits, "
          f"seed {args.seed}; target {TARGET_S:.0f} s per call")
    print(f"{'metric':<22}{'value':>9}{'seconds':>10}{'x target':>10}")
    for name, kw in runs:
        t0 = time.perf_counter()
        value = mean_average_precision(qc, ql, dc, dl, **kw)
        dt = time.perf_counter() - t0
        print(f"{name:<22}{value:>9.4f}{dt:>10.3f}{dt / TARGET_S:>10.3f}")
    peak = _peak_bytes(lambda: mean_average_precision(qc, ql, dc, dl))
    inputs = qc.nbytes + ql.nbytes + dc.nbytes + dl.nbytes
    print(f"peak extra memory (mAP@all): {peak / 2**20:.1f} MiB "
          f"(inputs {inputs / 2**20:.1f} MiB; full distance matrix would be "
          f"{args.queries * args.db / 2**20:.1f} MiB as uint8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
