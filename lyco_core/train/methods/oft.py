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
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...algorithms.factorization import factorization
from ...algorithms.oft import DiagOFT
from ...algorithms.oft_peft import PeftOFT, PeftOFTOptions, coft_bound, project_blocks, skew_from_packed
from ...algorithms.base import ScaleContext
from ..config import AdapterConfig, Node, check_variant, dropout_option, option, variant_option
from .base import Trainable, trainable

PEFT_VERSION = (0, 18)  # the Cayley–Neumann coefficients trained here (PEFT ≥ 0.18)


def identity_init_option():
    """``init_weights`` of the rotations (True: they start at I)."""
    return option(True, tooltip="true: rotations start at identity.")


def constraint_option():
    """LyCORIS' ``constraint`` (0 = none)."""
    return option(
        0.0,
        min=0.0,
        max=10.0,
        step=1e-4,
        ours=True,
        tooltip="lycoris: bound on the rotation (‖Q‖ ≤ constraint·out); 0 = none.",
    )


def rescaled_option():
    """LyCORIS' ``rescaled`` (a trained per-row scale)."""
    return option(False, ours=True, tooltip="lycoris: also learn a per-row scale.")


@dataclass
class OFTConfig(AdapterConfig):
    """OFT: a block-diagonal orthogonal ``R`` (``r`` blocks, or blocks of ``oft_block_size``; give one, the other 0;
    a size that does not divide is moved to the nearest divisor, as PEFT does).

    ``variant="peft"``: rotates the input columns, ``W' = W·Rᵀ``, from packed skew parameters ``oft_R``; Cayley
    exact or Cayley–Neumann (``use_cayley_neumann``, ``num_cayley_neumann_terms``); ``coft`` keeps each block's
    skew matrix within ``eps/√n`` (projected in place every forward); ``block_share`` one block for all.
    ``variant="lycoris"``: rotates the output rows, ``W'_k = R_kᵀ·W_k``, ``R = (I+Q)(I−Q)⁻¹``, ``Q = B−Bᵀ``
    bounded jointly by ``constraint·out`` (0 = none); ``rescaled`` adds a trained per-row scale; a block size
    follows LyCORIS' rule ``(bs, n) = sorted(factorization(out, oft_block_size))``.
    ``module_dropout``: PEFT replaces ``int(p·n)`` random blocks by I per forward; LyCORIS skips the adapter.
    """

    method: ClassVar[str] = "oft"
    peft_type: ClassVar[str] = "OFT"
    node: ClassVar[Node] = Node(
        "LyCOOFTConfig",
        "OFT Config",
        "Orthogonal fine-tuning (block-diagonal rotations), LyCORIS' or PEFT's variant.",
        (
            "variant",
            "r",
            "oft_block_size",
            "module_dropout",
            "init_weights",
            "constraint",
            "rescaled",
            "coft",
            "eps",
            "block_share",
            "use_cayley_neumann",
            "num_cayley_neumann_terms",
        ),
        position=40,
    )
    r: int = option(0, min=0, max=4096, tooltip="Number of blocks (0 = use oft_block_size).")
    oft_block_size: int = option(
        32, min=0, max=4096, tooltip="Block size (0 = use r); moved to a divisor of the dimension if needed."
    )
    module_dropout: float = dropout_option(
        "peft: this share of blocks becomes identity per forward; lycoris: the adapter is skipped with this "
        "probability."
    )
    init_weights: bool = identity_init_option()
    coft: bool = option(PeftOFTOptions.coft, tooltip="peft: constrained OFT (blocks stay near I).")
    eps: float = option(PeftOFTOptions.eps, min=0.0, max=1.0, step=1e-5, tooltip="peft: coft radius.")
    block_share: bool = option(PeftOFTOptions.block_share, tooltip="peft: one rotation shared by all blocks.")
    use_cayley_neumann: bool = option(
        PeftOFTOptions.use_cayley_neumann, tooltip="peft: Cayley–Neumann series instead of the exact inverse."
    )
    num_cayley_neumann_terms: int = option(
        PeftOFTOptions.num_cayley_neumann_terms, min=1, max=32, tooltip="peft: terms of the Cayley–Neumann series."
    )
    variant: str = variant_option()
    constraint: float = constraint_option()
    rescaled: bool = rescaled_option()

    def __post_init__(self):
        super().__post_init__()
        if (self.r != 0) == (self.oft_block_size != 0):
            raise ValueError(f"give either r ({self.r}) or oft_block_size ({self.oft_block_size}), the other 0")
        check_variant(self, peft_only=("coft", "block_share"), lycoris_only=("constraint", "rescaled"))


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
    config_class = OFTConfig
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
