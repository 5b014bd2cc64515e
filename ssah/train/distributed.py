"""Data-parallel training across processes and machines (``torchrun ... -m ssah train``).

How a step is split (see ``Trainer``):

- Every rank knows the whole step plan (it is a pure function of (seed, epoch)); rank r
  takes the r-th contiguous slice of each global labeled and unlabeled batch
  (:func:`shard_sizes`), so the global batch equals the single-process batch and the
  union over ranks is the single-process plan.
- The pair losses need the whole batch: each rank gathers the codes of all ranks with
  :func:`gather_rows`, whose backward sums the incoming gradients over ranks, and computes
  the single-process loss of the global batch (the labels, hence S, are known everywhere).
  Each rank then holds W times its own items' share of the gradient, and
  :func:`average_gradients` divides the summed gradients by W: the update equals the
  single-process one.
- BatchNorm normalises with the statistics of the global batch: :class:`GlobalBatchNorm2d`
  (what SyncBatchNorm does, which has no CPU implementation) gathers each rank's count,
  mean and sum of squared deviations and combines them, differentiably. A step therefore
  equals the single-process step up to float rounding (tested), also with BatchNorm. The
  running statistics come out the same on every rank; :func:`average_buffers` keeps them so.
  Only the torch RNG streams differ per rank (random flips, random rotations and masks,
  drop-connect), which changes which random numbers an image gets, not their distribution.
- Gradients are averaged with one flat all-reduce per step and network
  (:func:`average_gradients`) rather than a DDP wrapper: the A-Net step backpropagates
  through the frozen H-Net (whose parameters then get no gradient), and the H-Net step runs
  it twice (originals, then generations with frozen running statistics); one explicit
  all-reduce after each backward is simpler to keep right there than DDP's per-forward hooks.
- Rank 0 writes the split, run info, log and checkpoints; the others wait at a barrier.

Outside ``torchrun`` (no process group) every helper is a no-op for one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn



def _timeout() -> timedelta:
    """How long a collective waits for a slow rank (e.g. rank 0 decoding the image cache):
    ``SSAH_DIST_TIMEOUT_MIN`` minutes, default 60."""
    try:
        minutes = float(os.environ.get("SSAH_DIST_TIMEOUT_MIN", "60"))
    except ValueError:
        minutes = 60.0
    return timedelta(minutes=minutes if minutes > 0 else 60.0)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False   # True when setup() created the process group (and should end it)


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's environment when ``WORLD_SIZE > 1``.

    NCCL for a CUDA device (each process takes ``cuda:LOCAL_RANK``), gloo on CPU. Returns the
    rank information and the device this process trains on.
    """
    if is_distributed():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0"))), device
    if env_world_size() <= 1:
        return DistInfo(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", timeout=_timeout())
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, created=True), device


def teardown(info: DistInfo, ok: bool = True) -> None:
    """End the process group that :func:`setup` created. After a normal run (``ok``) every
    rank first meets at a barrier, so that no rank shuts its connections down while another
    still uses them; after an error it ends at once (a barrier could wait for a rank that
    has died)."""
    if info.created and is_distributed():
        try:
            if ok:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled; ranks trust each other)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn):
    """``fn()`` on rank 0, its result on every rank; an ``SSAHError`` it raises is raised on
    every rank (so that all processes stop with the same clear message)."""
    from ..errors import SSAHError
    if not is_distributed() or world_size() == 1:
        return fn()
    payload = None
    if is_main():
        try:
            payload = ("ok", fn())
        except SSAHError as e:
            payload = ("error", e)
    status, value = broadcast_object(payload)
    if status == "error":
        raise value
    return value


def shard_sizes(n: int, world: int) -> list[int]:
    """Sizes of the contiguous slices of ``n`` items over ``world`` ranks (np.array_split)."""
    return [len(a) for a in np.array_split(np.arange(n), world)]


def local_slice(batch: np.ndarray, world: int, r: int) -> np.ndarray:
    """Rank ``r``'s contiguous slice of a global batch."""
    return np.array_split(np.asarray(batch), world)[r]


class _GatherRows(torch.autograd.Function):
    """All ranks' rows along ``dim``; backward: the summed gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x, dim, sizes):
        r, world = dist.get_rank(), dist.get_world_size()
        ctx.dim, ctx.sizes, ctx.rank = dim, sizes, r
        most = max(sizes)
        if x.shape[dim] < most:   # all_gather needs equal shapes: pad, then cut
            pad = list(x.shape)
            pad[dim] = most - x.shape[dim]
            x = torch.cat([x, x.new_zeros(pad)], dim=dim)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)   # autograd may share it
        dist.all_reduce(grad)   # every rank's loss depends on this rank's rows
        start = sum(ctx.sizes[:ctx.rank])
        return grad.narrow(ctx.dim, start, ctx.sizes[ctx.rank]), None, None


def gather_rows(x: torch.Tensor, sizes: list[int], dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in rank order (``sizes[r]`` rows from rank r).

    Differentiable: gradients flow back to each rank's own rows, summed over the ranks'
    losses. With one process it returns ``x``.
    """
    if not is_distributed() or world_size() == 1:
        return x
    if x.shape[dim] != sizes[rank()]:
        raise ValueError(f"rank {rank()} holds {x.shape[dim]} rows, the plan says {sizes[rank()]}")
    if x.requires_grad:
        return _GatherRows.apply(x, dim, list(sizes))
    with torch.no_grad():
        return _GatherRows.forward(_Ctx(), x, dim, list(sizes))


class _Ctx:
    """A stand-in for autograd's ctx when gathering without gradients."""


def _flat_all_reduce(tensors: list[torch.Tensor], scale: float) -> None:
    """Sum ``tensors`` over ranks in one flat buffer per dtype, then multiply by ``scale``."""
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        if scale != 1.0:
            flat.mul_(scale)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def average_gradients(params) -> None:
    """Average ``.grad`` over ranks (parameters without a gradient are left alone).

    Every rank has the same parameters with or without a gradient (the same step runs
    everywhere), so the flat buffers line up.
    """
    if not is_distributed() or world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        _flat_all_reduce(grads, 1.0 / world_size())


def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks."""
    if not is_distributed() or world_size() == 1:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if bufs:
        with torch.no_grad():
            _flat_all_reduce(bufs, 1.0 / world_size())


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank."""
    if not is_distributed() or world_size() == 1:
        return
    tensors = [t.data for t in list(module.parameters()) + list(module.buffers())]
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for group in by_dtype.values():   # one flat buffer per dtype (also channels-last weights)
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src=src)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def rank_seed(seed: int, r: int) -> int:
    """Per-rank seed of the torch RNG (random flips, random rotations and masks)."""
    return seed if r == 0 else seed + 7_919 * r


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the batch over all ranks.

    Outside a process group, or in eval mode, it is plain BatchNorm2d (same state dict). The
    per-rank (count, mean, sum of squared deviations) are gathered with :func:`gather_rows`
    and merged (Chan et al.), so the gradient also flows through the other ranks' items.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = (0, 2, 3)
        count = x.numel() // c
        mean_l = x.mean(dims)
        m2_l = (x - mean_l.view(1, c, 1, 1)).pow(2).sum(dims)
        local = torch.cat([x.new_full((1,), float(count)), mean_l, m2_l])[None]
        g = gather_rows(local, [1] * world_size())          # (W, 1 + 2C)
        n_r, mean_r, m2_r = g[:, :1], g[:, 1:c + 1], g[:, c + 1:]
        n = n_r.sum()
        mean = (n_r * mean_r).sum(0) / n
        var = (m2_r.sum(0) + (n_r * (mean_r - mean).pow(2)).sum(0)) / n   # biased, normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        y = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def use_global_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm2d of ``module`` into :class:`GlobalBatchNorm2d`, in place."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return module
