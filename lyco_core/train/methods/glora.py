"""Trainable GLoRA (LyCORIS ≥ 3.0 layout): ``ΔW = (alpha/r)·(W ×_in (a1@a2) + b1@b2)``.

``a1 (in,r)``, ``a2 (r,in)``, ``b1 (out,r)`` and ``b2 (r, in·∏k)`` (2-D while training; saved with LyCORIS'
conv shapes ``(…,1,1)`` and ``b2 (r,in,*k)``). a1, b1 kaiming, a2, b2 zero (``init_weights=False``: all kaiming).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...algorithms.glora import GLoRA
from ..config import MODULE_DROPOUT_HELP, Node, RankedConfig, dropout_option, option
from .base import Trainable, kaiming_, trainable


@dataclass
class GLoRAConfig(RankedConfig):
    """GLoRA (LyCORIS): ``ΔW = (alpha/r)·(W ×_in (a1@a2) + b1@b2)``; a1, b1 kaiming and a2, b2 zero
    (``init_weights=False``: all random). ``module_dropout`` skips the adapter per forward. Saved in LyCORIS layout
    (PEFT's own ``GloraConfig`` is a different parametrisation)."""

    method: ClassVar[str] = "glora"
    peft_type: ClassVar[str] = ""
    node: ClassVar[Node] = Node(
        "LyCOGLoRAConfig",
        "GLoRA Config",
        "GLoRA (LyCORIS): ΔW = (alpha/r)·(W·A + B) with low-rank A and B.",
        ("r", "alpha", "module_dropout", "init_weights", "rank_pattern", "alpha_pattern"),
        position=60,
    )
    module_dropout: float = dropout_option(MODULE_DROPOUT_HELP)
    init_weights: bool = option(True, tooltip="true: no change at start.")


@trainable
class GLoRATrainable(Trainable):
    config_class = GLoRAConfig
    algorithm = GLoRA
    scale_carriers = ("a2.weight", "b2.weight")
    needs_rank = True

    def __init__(self, name, layer, config, rank, alpha):
        super().__init__(name, layer, config, rank, alpha)
        out, cin, *kernel = self.weight_shape
        zero = nn.init.zeros_ if config.init_weights else kaiming_
        self.add("a1.weight", kaiming_(torch.empty(cin, rank)))
        self.add("a2.weight", zero(torch.empty(rank, cin)))
        self.add("b1.weight", kaiming_(torch.empty(out, rank)))
        self.add("b2.weight", zero(torch.empty(rank, cin * math.prod(kernel))))

    def lycoris_tensors(self):
        tensors = dict(self.tensors())
        kernel = self.weight_shape[2:]
        if kernel:
            ones = (1,) * len(kernel)
            for key in ("a1.weight", "a2.weight", "b1.weight"):
                tensors[key] = tensors[key].reshape(*tensors[key].shape, *ones)
            tensors["b2.weight"] = tensors["b2.weight"].reshape(self.rank, self.weight_shape[1], *kernel)
        tensors["alpha"] = torch.tensor(float(self.scaling) * self.rank)
        return tensors
