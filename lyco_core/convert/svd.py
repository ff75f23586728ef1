"""Truncated SVD of a weight delta under a rank policy.

``ΔW ≈ up·down`` with ``up = U_r·√Σ_r``, ``down = √Σ_r·V_rᵀ`` (balanced factors) on the ``(out, in·∏k)`` matrix;
by Eckart–Young the error ``‖ΔW − ΔW_r‖_F² = Σ_{i>r} σ_i²`` is the least any rank-r factorisation reaches.
Policies (``RankPolicy``): a fixed rank; the smallest r keeping a fraction E of the energy
(``Σ_{i≤r} σ_i² ≥ E·‖ΔW‖_F²``); or every ``σ_i ≥ ratio·σ_1``; a separate fixed rank for convolutions; a cap.
A rank ``r ≤ min(dims)/4`` is found by a randomized SVD (``torch.svd_lowrank``: r + oversampling columns, power
iterations, fixed seed) — for energy/ratio policies on 16, 32, 64, … leading values until they settle the rank
(the kept energy ``Σ_{i≤r} σ̂_i²`` of the projection ``U_r·U_rᵀ·ΔW`` is exact, so "keeps ≥ E" holds); every error
reported is measured on the factors, never assumed.

LoRA fast path (``refactor``): for ``ΔW = s·U·D`` (U ``(out,r)``, D ``(r,in·∏k)``) take ``U = Q_u·R_u``,
``Dᵀ = Q_d·R_d``; the SVD of the small core ``s·R_u·R_dᵀ = Û·Σ·V̂ᵀ`` gives ΔW's singular values Σ and vectors
``Q_u·Û``, ``Q_d·V̂`` without forming ΔW; the error is then exactly ``Σ_{i>r} σ_i²``.

Tucker (conv with a kernel larger than 1×1, ``tucker=True``): a truncated HOSVD — ``U`` the leading r left singular
vectors of the mode-0 unfolding ``(out, in·∏k)``, ``V`` those of the mode-1 unfolding ``(in, out·∏k)``, core
``C[p,q,…] = Σ_{o,i} ΔW[o,i,…]·U[o,p]·V[i,q]``, so ``ΔW_r[o,i,…] = Σ_{p,q} C[p,q,…]·U[o,p]·V[i,q]`` (LoRA's
``lora_mid`` layout: up = U, down = Vᵀ, mid = C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..algorithms.base import tucker_rebuild
from ..errors import AdapterError

_OVERSAMPLE = 8
_POWER_ITERATIONS = 4
_SEED = 20240601


@dataclass(frozen=True)
class RankPolicy:
    """Exactly one of ``rank`` / ``energy`` / ``ratio``; ``conv_rank`` fixes conv modules' rank; ``max_rank`` caps."""

    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    conv_rank: int | None = None
    max_rank: int | None = None
    tucker: bool = False
    exact: bool = False  # never use the randomized SVD

    def __post_init__(self):
        chosen = [x for x in (self.rank, self.energy, self.ratio) if x is not None]
        if len(chosen) != 1:
            raise AdapterError("give exactly one rank policy: a rank, an energy fraction or a singular-value ratio")
        for label, value in (("rank", self.rank), ("conv rank", self.conv_rank), ("max rank", self.max_rank)):
            if value is not None and value < 1:
                raise AdapterError(f"{label} {value} is below 1", expected="a positive integer")
        for label, value in (("energy", self.energy), ("ratio", self.ratio)):
            if value is not None and not 0 < value <= 1:
                raise AdapterError(f"{label} {value} is outside (0, 1]", expected="a fraction such as 0.99")

    def describe(self) -> str:
        text = (
            f"rank {self.rank}"
            if self.rank is not None
            else f"energy {self.energy:g}"
            if self.energy is not None
            else f"σ ratio {self.ratio:g}"
        )
        if self.conv_rank is not None:
            text += f", conv rank {self.conv_rank}"
        if self.max_rank is not None:
            text += f", at most {self.max_rank}"
        return text + (", Tucker conv" if self.tucker else "")

    def fixed(self, conv: bool) -> int | None:
        """The fixed rank this policy asks of a (conv) module, or None when the spectrum decides."""
        if conv and self.conv_rank is not None:
            return self.conv_rank
        return self.rank

    def choose(self, singular_values: torch.Tensor, conv: bool, total_sq: float | None = None) -> int | None:
        """How many of the (descending) singular values to keep; at least 1, at most all.

        With ``total_sq`` (‖ΔW‖_F²) the values are only the leading part of the spectrum: None then means the
        policy needs more of it (the energy is not reached, or every value given still passes the ratio)."""
        count = singular_values.numel()
        fixed = self.fixed(conv)
        if fixed is not None:
            return self.cap(fixed, count)
        if self.energy is not None:
            power = singular_values.double().square()
            reached = power.cumsum(0) / (power.sum() if total_sq is None else total_sq) >= self.energy * (1 - 1e-12)
            keep = int(reached.int().argmax()) + 1 if bool(reached.any()) else None
        else:
            passing = int((singular_values >= self.ratio * singular_values[0]).sum())
            keep = None if total_sq is not None and passing == count else passing
        if keep is None:  # the leading values do not settle it, unless the cap does
            return self.cap(count, count) if self.max_rank is not None and self.max_rank <= count else None
        return self.cap(keep, count)

    def cap(self, keep: int, count: int) -> int:
        """``keep`` bounded by ``max_rank`` and by the ``count`` singular values there are, and at least 1."""
        if self.max_rank is not None:
            keep = min(keep, self.max_rank)
        return max(1, min(keep, count))


@dataclass
class LowRank:
    """A factorised delta: LoRA factors shaped for the weight (``mid`` for Tucker), the rank, and the squared
    Frobenius norms of the error and of the delta itself."""

    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor | None
    rank: int
    err_sq: float
    ref_sq: float


def _randomized(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    columns = min(rank + _OVERSAMPLE, min(matrix.shape))
    devices = [matrix.device] if matrix.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_SEED)
        u, s, v = torch.svd_lowrank(matrix, q=columns, niter=_POWER_ITERATIONS)
    return u[:, :rank], s[:rank], v[:, :rank]


def _truncated(matrix: torch.Tensor, policy: RankPolicy, conv: bool, ref_sq: float):
    """(U_r, σ_r, V_r): randomized while the rank sought is ≤ min(dims)/4 — a fixed rank directly, an energy or
    ratio policy on a doubling number of leading values until they settle it — else the full SVD."""
    smallest = min(matrix.shape)
    fixed = policy.fixed(conv)
    sample = policy.cap(fixed, smallest) if fixed is not None else 16
    while not policy.exact and 4 * sample <= smallest:
        u, s, v = _randomized(matrix, sample)
        keep = policy.choose(s, conv, ref_sq)
        if keep is not None:
            return u[:, :keep], s[:keep], v[:, :keep]
        sample *= 2
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    keep = policy.choose(s, conv)
    return u[:, :keep], s[:keep], vh[:keep].mT


def factorize(delta: torch.Tensor, policy: RankPolicy) -> LowRank:
    """The policy's truncated factorisation of ``delta`` (a weight-shaped tensor, at least 2-D)."""
    conv = delta.ndim > 2
    if policy.tucker and conv and math.prod(delta.shape[2:]) > 1:
        return _tucker(delta, policy)
    matrix = delta.reshape(delta.shape[0], -1)
    ref_sq = float(matrix.double().square().sum())
    u, s, v = _truncated(matrix, policy, conv, ref_sq)
    root = s.sqrt()
    up, down = u * root, (v * root).mT
    err_sq = float((matrix - up @ down).double().square().sum())
    up, down = _shaped(up, down, delta.shape)
    return LowRank(up, down, None, s.numel(), err_sq, ref_sq)


def _shaped(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    rank = up.shape[1]
    return up.reshape(shape[0], rank, *[1] * (len(shape) - 2)), down.reshape(rank, *shape[1:])


def refactor(up: torch.Tensor, down: torch.Tensor, scale: float, policy: RankPolicy, shape: torch.Size) -> LowRank:
    """The policy's truncation of ``scale·flat(up)·flat(down)`` from the factors alone, shaped for ``shape``."""
    q_up, r_up = torch.linalg.qr(up.reshape(up.shape[0], -1))
    q_down, r_down = torch.linalg.qr(down.reshape(down.shape[0], -1).mT)
    u, s, vh = torch.linalg.svd(scale * r_up @ r_down.mT)
    keep = policy.choose(s, len(shape) > 2)
    root = s[:keep].sqrt()
    power = s.double().square()
    new_up, new_down = _shaped((q_up @ u[:, :keep]) * root, root[:, None] * (vh[:keep] @ q_down.mT), shape)
    return LowRank(new_up, new_down, None, keep, float(power[keep:].sum()), float(power.sum()))


def _tucker(delta: torch.Tensor, policy: RankPolicy) -> LowRank:
    out, inp = delta.shape[:2]
    u0, s0, _ = torch.linalg.svd(delta.reshape(out, -1), full_matrices=False)
    u1, _, _ = torch.linalg.svd(delta.transpose(0, 1).reshape(inp, -1), full_matrices=False)
    rank = min(policy.choose(s0, True), out, inp)
    left, right = u0[:, :rank], u1[:, :rank]
    core = torch.einsum("oi...,op,iq->pq...", delta, left, right).contiguous()
    rebuilt = tucker_rebuild(core, left.t(), right.t())
    ones = [1] * (delta.ndim - 2)
    return LowRank(
        left.reshape(out, rank, *ones).contiguous(),
        right.t().reshape(rank, inp, *ones).contiguous(),
        core,
        rank,
        float((delta - rebuilt).double().square().sum()),
        float(delta.double().square().sum()),
    )
