"""Resize: change the rank of any adapter under a rank policy.

LoRA/LoCon modules are re-factored on their factors alone (QR of up and downᵀ, SVD of the r×r core; ΔW is never
formed) and keep their DoRA magnitude, so a resized DoRA keeps its norms and approximates its direction (the error
reported is that of the directional ΔW). Every other method becomes a LoRA through its rebuilt delta, exactly as
``to_lora`` does (weight-dependent methods need the base weights).
"""

from __future__ import annotations

from ..adapter import Adapter
from .deltas import BaseLike
from .report import Progress, Report
from .svd import RankPolicy
from .to_lora import rank_reduce


def resize(
    adapter: Adapter,
    policy: RankPolicy,
    *,
    base: BaseLike | None = None,
    progress: Progress | None = None,
    device: str = "cpu",
) -> tuple[Adapter, Report]:
    return rank_reduce(adapter, policy, base=base, progress=progress, keep_dora=True, operation="resize", device=device)
