"""Atomic, checksummed checkpoints: write to a temp file, fsync, rename; keep the last N;
skip corrupt ones.

Each checkpoint holds ``sha256``, a digest of everything else in it (tensor bytes, dtypes,
shapes and every other value). ``torch.load`` notices a truncated file, but a flipped byte
inside tensor data loads silently; the digest catches that. Checkpoints written before the
digest existed load without the check.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError

FORMAT = 1
TEMP_PREFIX = ".tmp-"


def state_digest(state: dict) -> str:
    """SHA-256 over a checkpoint's contents (keys sorted; tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()
    _update(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def _update(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{type(k).__name__}:{k!s}".encode("utf-8", "surrogateescape"))
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _update(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}".encode("utf-8", "surrogateescape"))


def save_checkpoint(state: dict, directory: str | Path, global_step: int, keep: int = 3) -> Path:
    """Write ``ckpt-<step>.pt`` atomically; a failed write never replaces a good file.

    The state goes to a temp file in the same folder, which is flushed and fsynced, then
    renamed over the target. Any failure (a full disk, an I/O error, an interrupt) removes
    the temp file, leaves the earlier checkpoints as they were and raises CheckpointError.
    """
    directory = Path(directory)
    path = directory / f"ckpt-{global_step:09d}.pt"
    state = {"format": FORMAT, **state}
    state["sha256"] = state_digest(state)
    try:
        with atomic_write(path, prefix=TEMP_PREFIX, suffix=".pt") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:   # torch's zip writer reports a full disk as RuntimeError
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CheckpointError(f"cannot write checkpoint {path}: {why}; the previous "
                              f"checkpoints are unchanged") from None
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete temp files left in ``directory`` by a writer that was killed mid-write."""
    directory = Path(directory)
    stale = sorted(directory.glob(f"{TEMP_PREFIX}*.pt")) if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def list_checkpoints(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob("ckpt-*.pt")) if directory.is_dir() else []


def load_checkpoint(path: str | Path) -> dict:
    """Load one checkpoint safely (``weights_only=True``) and check its digest; a bad file
    gets a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a torch file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "hnet" not in state:
        raise CheckpointError(f"{path} is not an ssah checkpoint (format {FORMAT})")
    if "sha256" in state and state_digest(state) != state["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the "
                              f"checksum written with it")
    return state


def latest_checkpoint(directory: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in ``directory`` that loads; corrupt newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}")
    return None


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """Accept a checkpoint file, a run directory, or its ``checkpoints/`` folder."""
    p = Path(path)
    if p.is_file():
        return p, load_checkpoint(p)
    for d in (p / "checkpoints", p):
        found = latest_checkpoint(d)
        if found is not None:
            return found
    raise CheckpointError(f"no checkpoint found at {p} (expected a .pt file or a run directory "
                          f"with checkpoints/ckpt-*.pt)")
