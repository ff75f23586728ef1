"""Optimizers and learning-rate schedules for the training loop.

Schedules (multipliers of each group's base lr, ``t`` = optimizer steps done, ``w`` = warmup steps, ``T`` = total):
warmup ``(t+1)/w`` for ``t < w`` (then one of): constant ``1``; linear ``(T−t)/(T−w)``; cosine
``½(1 + cos(π·(t−w)/(T−w)))``.
"""

from __future__ import annotations

import importlib.util
import math

import torch

SCHEDULERS = ("constant", "cosine", "linear")


def optimizer_names() -> list[str]:
    """AdamW, Adam, SGD, and AdamW8bit when bitsandbytes is importable."""
    names = ["AdamW", "Adam", "SGD"]
    if importlib.util.find_spec("bitsandbytes") is not None:
        names.append("AdamW8bit")
    return names


def make_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The named optimizer over parameter ``groups`` (each may carry its own ``lr``)."""
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "Adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "AdamW8bit" and name in optimizer_names():
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown or unavailable optimizer {name!r}; available: {', '.join(optimizer_names())}")


def lr_multiplier(name: str, step: int, total: int, warmup: int) -> float:
    """The schedule's factor after ``step`` optimizer steps (see the module docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    if name == "linear":
        return 1.0 - progress
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total: int, warmup: int):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(name, step, total, warmup))
