"""Trainable adapter modules, one file per method, each registering its class with ``@trainable``;
``make_trainable`` picks the class for a layer and config.

A low-rank module (LoRA, LoHa) whose factors would hold at least as many values as the weight
(``r·(out + in·∏k) ≥ out·in·∏k``, doubled for LoHa's two pairs; ``r·(out·kh + in·kw)`` for a balanced conv)
trains a dense ``diff`` instead.
"""

from __future__ import annotations

import importlib
import math
import pkgutil

from torch import nn

from ..config import AdapterConfig
from ..matching import rank_and_alpha
from .base import TRAINABLES, Trainable
from .dense import DenseTrainable

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Trainable", "DenseTrainable", "TRAINABLES", "can_adapt", "make_trainable"]


def can_adapt(module: nn.Module, method: str) -> bool:
    """Whether ``method`` has a trainable form for this layer (its class's ``adapts``)."""
    cls = TRAINABLES.get(method)
    return cls is not None and cls.adapts(module)


def make_trainable(name: str, layer: nn.Module, config: AdapterConfig) -> Trainable:
    """The trainable adapter of ``config``'s method for ``layer`` (r/alpha after rank/alpha patterns)."""
    cls = TRAINABLES.get(config.method)
    if cls is None:
        raise ValueError(f"unknown method {config.method!r}; expected one of {', '.join(TRAINABLES)}")
    rank, alpha = rank_and_alpha(config, name)
    if cls.needs_rank and rank <= 0:
        raise ValueError(f"{name}: r must be positive, got {rank}")
    count = cls.factor_count(layer, config, rank)
    if count is not None and count >= math.prod(layer.weight.shape) and not isinstance(layer, nn.Embedding):
        return DenseTrainable(name, layer, config)
    return cls.create(name, layer, config, rank, alpha)
