"""Trainable OFT, both variants, over the inference modules' own rotations.

PEFT (``oft_R.weight (n or 1, bs(bs−1)/2)``, zeros): blocks over the ``in·∏k`` input columns; ``R`` from the
packed skew ``Q`` by exact Cayley ``(I−Q)(I+Q)⁻¹`` or PEFT ≥0.18's Cayley–Neumann series; ``W' = flat(W)·Rᵀ``.
coft: before each forward the parameter is projected in place (no gradient) so each block's ``‖Q‖_F ≤ eps/√n``.
LyCORIS (``oft_blocks (n, bs, bs)``, zeros; ``alpha`` = constraint; ``rescale (out,1,…)`` ones): blocks over the
output rows, ``R = (I+Q)(I−Q)⁻¹``, ``Q = B−Bᵀ`` bounded jointly by ``constraint·out``; ``W'_k = R_kᵀ·W_k``.
Block counts: ``r`` blocks or blocks of ``oft_block_size`` (the other 0); a value that does not divide the dimension
moves to the nearest divisor (ties toward the smaller), as PEFT does. LyCORIS with ``oft_block_size = f`` uses
LyCORIS' rule, ``(bs, n) = sorted(factorization(out, f))`` (bs ≤ n; what its loader re-derives from bs).
Module dropout: PEFT sets ``int(p·n)`` random blocks to I per forward (none when one block is shared); LyCORIS
skips the adapter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...algorithms.factorization import factorization
from ...algorithms.oft import DiagOFT
from ...algorithms.oft_peft import PeftOFT, coft_bound, project_blocks, skew_from_packed
from ...algorithms.base import ScaleContext
from .base import Trainable, trainable

PEFT_VERSION = (0, 18)  # the Cayley–Neumann coefficients trained here (PEFT ≥ 0.18)


def nearest_divisor(dim: int, value: int) -> int:
    """``value`` if it divides ``dim``; else the nearest divisor of ``dim`` (the lower one on a tie); ``dim`` if
    ``value ≥ dim``."""
    if value >= dim:
        return dim
    if dim % value == 0:
        return value
    lower = next(v for v in range(value, 0, -1) if dim % v == 0)
    higher = next(v for v in range(value, dim + 1) if dim % v == 0)
    return lower if value - lower <= higher - value else higher


def block_layout(dim: int, blocks: int, block_size: int) -> tuple[int, int]:
    """(n blocks, block size) covering ``dim`` from ``r`` blocks or a block size (the other 0)."""
    if blocks:
        n = nearest_divisor(dim, blocks)
        return n, dim // n
    size = nearest_divisor(dim, block_size)
    return dim // size, size


def identity_blocks(rotation: torch.Tensor, p: float) -> torch.Tensor:
    """Multiplicative dropout: ``int(p·n)`` randomly chosen blocks of ``(…, n, bs, bs)`` replaced by I."""
    n = rotation.shape[-3]
    dropped = int(p * n)
    if n == 1 or dropped == 0:
        return rotation
    mask = torch.zeros(n, dtype=rotation.dtype, device=rotation.device)
    mask[torch.randperm(n, device=rotation.device)[:dropped]] = 1
    mask = mask.reshape(n, 1, 1)
    eye = torch.eye(rotation.shape[-1], dtype=rotation.dtype, device=rotation.device)
    return rotation * (1 - mask) + eye * mask


@trainable
class OFTTrainable(Trainable):
    method = "oft"
    ranked = False

    def __init__(self, name, layer, config):
        super().__init__(name, layer, config)
        self.variant = config.variant
        out, columns = self.weight_shape[0], math.prod(self.weight_shape[1:])
        if self.variant == "peft":
            self.algorithm = PeftOFT
            self.block_dropout, self.module_dropout = self.module_dropout, 0.0
            n, bs = block_layout(columns, config.r, config.oft_block_size)
            packed = torch.zeros(1 if config.block_share else n, bs * (bs - 1) // 2)
            if not config.init_weights:
                nn.init.normal_(packed, std=0.1)
            self.add("oft_R.weight", packed)
            self.peft_config = {
                k: getattr(config, k)
                for k in ("coft", "eps", "block_share", "use_cayley_neumann", "num_cayley_neumann_terms")
            }
        else:
            self.algorithm = DiagOFT
            if config.r:
                n, bs = block_layout(out, config.r, 0)
            else:  # LyCORIS' own rule, which its loader re-derives from the block size
                bs, n = factorization(out, config.oft_block_size)
            blocks = torch.zeros(n, bs, bs)
            if not config.init_weights:
                nn.init.normal_(blocks, std=0.1)
            self.add("oft_blocks", blocks)
            self.add("alpha", torch.tensor(float(config.constraint)), trainable=False)
            if config.rescaled:
                self.add("rescale", torch.ones(out, *[1] * (len(self.weight_shape) - 1)))
        self.n_blocks, self.block_size = n, bs

    def context(self):
        if self.variant == "peft":  # coft is applied to the parameter itself (project_), as PEFT does
            return ScaleContext(
                file=self.name,
                peft=True,
                config={**self.peft_config, "coft": False},
                peft_version=PEFT_VERSION,
                module_path=self.name,
            )
        return super().context()

    def rebuild(self, weight):
        module = self.inference()
        if self.variant == "lycoris":
            return module.apply(weight, 1.0)
        if self.peft_config["coft"]:
            self.project_()
        rotation = module.rotation(weight)
        if self.training and self.block_dropout:
            rotation = identity_blocks(rotation, self.block_dropout)
        return module.rotate(weight, rotation, 1.0)

    @torch.no_grad()
    def project_(self) -> None:
        """coft: scale each block's packed parameters so that ``‖Q‖_F ≤ eps/√n`` (in place, as PEFT)."""
        packed = self.oft_R_weight
        q = project_blocks(
            skew_from_packed(packed, self.block_size), coft_bound(self.peft_config["eps"], packed.shape[0])
        )
        rows, cols = torch.triu_indices(self.block_size, self.block_size, 1, device=packed.device)
        packed.copy_(q[:, rows, cols])

    def lycoris_tensors(self):
        return dict(self.tensors())
