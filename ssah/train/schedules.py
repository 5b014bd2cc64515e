"""Learning-rate and margin schedules, as pure functions of the training position."""
from __future__ import annotations

import math


def omega_at(epoch: int, omega: float, step: float, every: int) -> float:
    """The paper's margin schedule: omega starts at 0.1 and grows by 0.02 every 5 epochs."""
    if every <= 0:
        return omega
    return omega + step * (epoch // every)


def lr_factor(global_step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate: linear warm-up, then constant or cosine decay to 0."""
    if warmup_steps > 0 and global_step < warmup_steps:
        return (global_step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        t = min(max(global_step - warmup_steps, 0) / span, 1.0)
        return 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
