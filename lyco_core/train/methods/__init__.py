"""Trainable adapter modules, one file per method; ``make_trainable`` picks the class for a layer and config.

A low-rank module (LoRA, LoHa) whose factors would hold at least as many values as the weight
(``r·(out + in·∏k) ≥ out·in·∏k``, doubled for LoHa's two pairs; ``r·(out·kh + in·kw)`` for a balanced conv)
trains a dense ``diff`` instead.
"""

from __future__ import annotations

import math

from torch import nn

from ..config import AdapterConfig
from ..targets import rank_and_alpha
from .base import Trainable
from .boft import BOFTTrainable
from .dense import DenseTrainable
from .glora import GLoRATrainable
from .ia3 import IA3Trainable
from .lokr import LoKrTrainable
from .loha import LoHaTrainable
from .lora import BalancedConvLoRA, LoRATrainable
from .oft import OFTTrainable

__all__ = ["Trainable", "DenseTrainable", "make_trainable"]


def _factor_count(method: str, rank: int, shape: tuple[int, ...], balanced: bool) -> int | None:
    """Values held by the low-rank factors of ``method`` at ``rank`` (None for methods that are not low-rank)."""
    if balanced:
        return rank * (shape[0] * shape[2] + shape[1] * shape[3])
    pairs = {"lora": 1, "loha": 2}.get(method)
    if pairs is None:
        return None
    return pairs * rank * (shape[0] + math.prod(shape[1:]))


def make_trainable(name: str, layer: nn.Module, config: AdapterConfig) -> Trainable:
    """The trainable adapter of ``config``'s method for ``layer`` (r/alpha after rank/alpha patterns)."""
    rank, alpha = rank_and_alpha(config, name)
    method = config.method
    if method in ("lora", "loha", "glora") and rank <= 0:
        raise ValueError(f"{name}: r must be positive, got {rank}")
    shape = tuple(layer.weight.shape)
    balanced = (
        method == "lora"
        and config.conv_decomposition == "balanced"
        and isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and math.prod(layer.kernel_size) > 1
    )
    count = _factor_count(method, rank, shape, balanced)
    if count is not None and count >= math.prod(shape) and not isinstance(layer, nn.Embedding):
        return DenseTrainable(name, layer, config)
    if method == "lora":
        return (BalancedConvLoRA if balanced else LoRATrainable)(name, layer, config, rank, alpha)
    if method == "loha":
        return LoHaTrainable(name, layer, config, rank, alpha)
    if method == "lokr":
        return LoKrTrainable(name, layer, config, rank, alpha)
    if method == "glora":
        return GLoRATrainable(name, layer, config, rank, alpha)
    if method == "oft":
        return OFTTrainable(name, layer, config)
    if method == "boft":
        return BOFTTrainable(name, layer, config)
    if method == "ia3":
        return IA3Trainable(name, layer, config)
    raise ValueError(f"unknown method {method!r}")
