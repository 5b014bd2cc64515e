"""Atomic checkpoints: write to a temp file, fsync, rename; keep the last N; skip corrupt ones."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError

FORMAT = 1


def save_checkpoint(state: dict, directory: str | Path, global_step: int, keep: int = 3) -> Path:
    """Write ``ckpt-<step>.pt`` atomically; a failed write never replaces a good file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{global_step:09d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob("ckpt-*.pt")) if directory.is_dir() else []


def load_checkpoint(path: str | Path) -> dict:
    """Load one checkpoint safely (``weights_only=True``); a bad file gets a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a torch file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "hnet" not in state:
        raise CheckpointError(f"{path} is not an ssah checkpoint (format {FORMAT})")
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
