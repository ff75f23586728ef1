"""Trainable BOFT, both variants, over the inference modules' own rotations.

PEFT (``boft_R (N, D, H, H)`` zeros, ``boft_s`` ones): ``N = boft_n_butterfly_factor`` factors of ``D`` blocks of
size ``H`` over the ``in·∏k`` input columns (``D·H`` = columns; give ``boft_block_size`` or ``boft_block_num``);
with N > 1, D and H even and ``H·2^(N−1)`` dividing the columns, as PEFT requires. ``boft_dropout`` sets
``int(p·D)`` random blocks of one random factor to I per forward (as PEFT).
LyCORIS (``oft_blocks (M, n, bs, bs)`` zeros, ``alpha`` = constraint, ``rescale`` ones): output rows,
``bs`` = the largest even size ≤ ``boft_block_size`` with ``out/bs`` a power of two, ``M = log2(out/bs) + 1``;
``boft_dropout`` skips the adapter per forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...algorithms.boft import BOFT
from ...algorithms.boft_peft import PeftBOFT
from ..config import AdapterConfig, Node, check_variant, dropout_option, option, variant_option
from .base import Trainable, trainable
from .oft import constraint_option, identity_blocks, identity_init_option, rescaled_option


@dataclass
class BOFTConfig(AdapterConfig):
    """BOFT: butterfly products of block-orthogonal factors.

    ``variant="peft"``: ``boft_n_butterfly_factor`` factors of ``boft_block_num`` blocks of ``boft_block_size``
    (give one of the two) over the input columns, ½-skew Cayley, a trained per-row scale ``boft_s``;
    ``boft_dropout`` replaces ``int(p·n)`` random blocks by I per forward. ``variant="lycoris"``: output rows,
    block size = the largest even ``bs ≤ boft_block_size`` with ``out/bs`` a power of two, ``log2(out/bs)+1``
    stages, ``constraint`` and ``rescaled`` as LyCORIS OFT; ``boft_dropout`` skips the adapter per forward.
    """

    method: ClassVar[str] = "boft"
    peft_type: ClassVar[str] = "BOFT"
    node: ClassVar[Node] = Node(
        "LyCOBOFTConfig",
        "BOFT Config",
        "Butterfly OFT, LyCORIS' or PEFT's variant.",
        (
            "variant",
            "boft_block_size",
            "boft_block_num",
            "boft_n_butterfly_factor",
            "boft_dropout",
            "init_weights",
            "constraint",
            "rescaled",
        ),
        position=50,
    )
    boft_block_size: int = option(
        4,
        min=0,
        max=4096,
        tooltip="Block size (0 = use boft_block_num); lycoris: the largest even size up to this that leaves a "
        "power-of-two block count.",
    )
    boft_block_num: int = option(0, min=0, max=4096, tooltip="peft: number of blocks.")
    boft_n_butterfly_factor: int = option(
        1, min=1, max=16, tooltip="peft: butterfly factors (lycoris derives its stages from the block count)."
    )
    boft_dropout: float = dropout_option("peft: blocks of one factor set to identity per forward; lycoris: skip.")
    init_weights: bool = identity_init_option()
    variant: str = variant_option()
    constraint: float = constraint_option()
    rescaled: bool = rescaled_option()

    def __post_init__(self):
        super().__post_init__()
        if (self.boft_block_size != 0) == (self.boft_block_num != 0):
            raise ValueError("give either boft_block_size or boft_block_num, the other 0")
        if self.boft_n_butterfly_factor < 1:
            raise ValueError("boft_n_butterfly_factor must be ≥ 1")
        check_variant(self, peft_only=(), lycoris_only=("constraint", "rescaled"))


def power2_blocks(dim: int, max_block: int) -> tuple[int, int]:
    """(bs, n): the largest even ``bs ≤ max_block`` dividing ``dim`` with ``n = dim/bs`` a power of two."""
    found = [bs for bs in range(2, min(max_block, dim) + 1, 2) if dim % bs == 0 and (dim // bs).bit_count() == 1]
    if not found:
        raise ValueError(f"no even block size ≤ {max_block} leaves a power-of-two block count for {dim} rows")
    return found[-1], dim // found[-1]


def peft_blocks(columns: int, size: int, count: int, factors: int) -> tuple[int, int]:
    """(D, H) for PEFT BOFT, with PEFT's own checks."""
    if count:
        if columns % count:
            raise ValueError(f"{columns} input columns are not divisible by boft_block_num {count}")
        size = columns // count
    elif columns % size:
        raise ValueError(f"{columns} input columns are not divisible by boft_block_size {size}")
    count = columns // size
    if factors > 1 and (count % 2 or size % 2 or columns % (size * 2 ** (factors - 1))):
        raise ValueError(
            f"{factors} butterfly factors need even blocks dividing {columns} columns (got {count} blocks of {size})"
        )
    return count, size


def _init(blocks: torch.Tensor, config) -> torch.Tensor:
    """Zero blocks (R = I), or N(0, 0.1) with ``init_weights=False``."""
    return blocks if config.init_weights else nn.init.normal_(blocks, std=0.1)


@trainable
class BOFTTrainable(Trainable):
    config_class = BOFTConfig
    recompute = True  # every butterfly stage would keep a weight-sized permuted copy for backward
    ranked = False

    def __init__(self, name, layer, config):
        super().__init__(name, layer, config)
        self.variant = config.variant
        self.module_dropout = float(config.boft_dropout)
        out, columns = self.weight_shape[0], math.prod(self.weight_shape[1:])
        if self.variant == "peft":
            self.algorithm = PeftBOFT
            self.block_dropout, self.module_dropout = self.module_dropout, 0.0
            count, size = peft_blocks(
                columns, config.boft_block_size, config.boft_block_num, config.boft_n_butterfly_factor
            )
            self.add("boft_R", _init(torch.zeros(config.boft_n_butterfly_factor, count, size, size), config))
            self.add("boft_s", torch.ones(out, 1))
        else:
            self.algorithm = BOFT
            size, count = power2_blocks(out, config.boft_block_size)
            self.add("oft_blocks", _init(torch.zeros(int(math.log2(count)) + 1, count, size, size), config))
            self.add("alpha", torch.tensor(float(config.constraint)), trainable=False)
            if config.rescaled:
                self.add("rescale", torch.ones(out, *[1] * (len(self.weight_shape) - 1)))

    def rebuild(self, weight):
        module = self.inference()
        rotation = module.rotation(weight)
        if self.variant == "peft" and self.training and self.block_dropout:
            factor = int(torch.randint(rotation.shape[0], ()))  # PEFT drops blocks of one random factor
            rotation = rotation.clone()
            rotation[factor] = identity_blocks(rotation[factor], self.block_dropout)
        return module.rotate(weight, rotation, 1.0)

    def lycoris_tensors(self):
        return dict(self.tensors())
