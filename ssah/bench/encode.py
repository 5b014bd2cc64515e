"""``ssah bench encode``: images/s of ``encode_images`` against the bare backbone forward pass.

Both run side by side in one process, at the same batch size and input size, on the same
uint8 images; the backbone pass gets its input already converted to float tensors, so the
ratio shows what encoding adds (uint8 conversion, hash layer, sign, copy to numpy).
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from ..models import HashNet, build_backbone
from ..train.build import to_tensor
from ..train.encode import encode_images


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ssah bench encode", description=__doc__)
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--size", type=int, default=64, help="input size in pixels")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bits", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-channels-last", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cl = not args.no_channels_last
    fmt = torch.channels_last if cl else torch.contiguous_format
    device = torch.device("cpu")
    backbone = build_backbone(args.backbone, pretrained=False)
    hnet = HashNet(backbone, args.bits).to(memory_format=fmt).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, args.size, args.size, 3), dtype=np.uint8)
    batches = [to_tensor(images[i:i + args.batch_size], device, cl)
               for i in range(0, args.images, args.batch_size)]

    @torch.no_grad()
    def bare():
        for x in batches:
            backbone(x)

    def encode():
        encode_images(hnet, images, device, batch_size=args.batch_size, channels_last=cl)

    bare(), encode()  # warm-up
    t_bare, t_enc = [], []
    for _ in range(args.repeats):   # interleaved, so that load changes hit both alike
        t_bare.append(_seconds(bare))
        t_enc.append(_seconds(encode))
    ips_bare = args.images / min(t_bare)
    ips_enc = args.images / min(t_enc)
    ratio = ips_enc / ips_bare
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch threads {torch.get_num_threads()}")
    print(f"{args.backbone} at {args.size} px, batch {args.batch_size}, {args.images} images, "
          f"{'channels-last' if cl else 'NCHW'}, best of {args.repeats}")
    print(f"| pass | images/s |\n|---|---|\n| bare backbone forward | {ips_bare:.0f} |\n"
          f"| ssah encode ({args.bits} bits) | {ips_enc:.0f} |")
    print(f"encode / backbone = {ratio:.3f} (target >= 0.90: {'met' if ratio >= 0.9 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
