"""A dense trainable delta: ``W' = W + diff`` (and ``b' = b + diff_b`` when the bias trains too), zero at start.

Used where a low-rank factorisation would hold at least as many values as the weight itself, and for
``modules_to_save`` (their weights and biases train in full). Saved as LyCORIS ``diff``/``diff_b`` (``w_norm``/
``b_norm`` for a norm layer), which the PEFT layout cannot hold.
"""

from __future__ import annotations

import torch
from torch import nn

from ...algorithms.full import Full
from ...algorithms.norm import Norm
from .base import AdditiveTrainable

NORMS = (nn.LayerNorm, nn.GroupNorm)


class DenseTrainable(AdditiveTrainable):
    method = "full"
    algorithm = Full

    def __init__(self, name, layer, config, *, with_bias: bool = False, saved: bool = False):
        super().__init__(name, layer, config)
        self.rank_dropout = 0.0
        self.saved = saved
        self.norm = isinstance(layer, NORMS)
        if self.norm:
            self.algorithm = Norm
        weight_key, bias_key = ("w_norm", "b_norm") if self.norm else ("diff", "diff_b")
        self.add(weight_key, torch.zeros(self.weight_shape))
        if with_bias and self.has_bias:
            self.add(bias_key, torch.zeros(tuple(layer.bias.shape)))

    def changes_bias(self):
        return len(self.canonical) > 1

    @property
    def scaling(self):
        return 1.0

    def lycoris_tensors(self):
        return dict(self.tensors())
