"""Trainable LoHa: ``ΔW = (alpha/r)·(w1_a@w1_b) ⊙ (w2_a@w2_b)`` (conv: the products are ``(out, in·∏k)``), or
with Tucker cores for k×k convs when ``use_effective_conv2d``: ``T_j = t_j ×₁ w_j_aᵀ ×₂ w_j_bᵀ``, ΔW ∝ T_1 ⊙ T_2.

Shapes and init as PEFT: plain ``w?_a (out,r)``, ``w?_b (r, in·∏k)``; Tucker ``w?_a (r,out)``, ``w?_b (r,in)``,
``t? (r,r,*k)`` (Conv1d ``(r,r,k,1)``). ``init_weights`` True: w2_b 0, the rest kaiming; ``"lycoris"``: w1_b,
w2_b ~ N(0,1), w1_a ~ N(0,0.1), w2_a 0, t ~ N(0,0.1); False: all kaiming. Rank dropout always rescales.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...algorithms.loha import LoHa
from .base import AdditiveTrainable, kaiming_


class LoHaTrainable(AdditiveTrainable):
    method = "loha"
    algorithm = LoHa
    scale_carriers = ("hada_w1_a",)
    recompute = True  # the two factor products are weight-sized; keep only the factors for backward

    def __init__(self, name, layer, config, rank, alpha):
        super().__init__(name, layer, config, rank, alpha)
        out, cin, *kernel = self.weight_shape
        tucker = config.use_effective_conv2d and kernel and math.prod(kernel) > 1
        if tucker:
            core = (rank, rank, *kernel) if len(kernel) > 1 else (rank, rank, kernel[0], 1)
            shapes = {"a": (rank, out), "b": (rank, cin), "t": core}
        else:
            shapes = {"a": (out, rank), "b": (rank, cin * math.prod(kernel))}
        init = config.init_weights
        for j in (1, 2):
            a, b = torch.empty(shapes["a"]), torch.empty(shapes["b"])
            if init == "lycoris":
                nn.init.normal_(a, std=0.1) if j == 1 else nn.init.zeros_(a)
                nn.init.normal_(b, std=1.0)
            else:
                kaiming_(a)
                nn.init.zeros_(b) if (init is True and j == 2) else kaiming_(b)
            self.add(f"hada_w{j}_a", a)
            self.add(f"hada_w{j}_b", b)
            if tucker:
                core = torch.empty(shapes["t"])
                nn.init.normal_(core, std=0.1) if init == "lycoris" else kaiming_(core)
                self.add(f"hada_t{j}", core)

    def lycoris_tensors(self):
        return {**self.tensors(), "alpha": self.lycoris_alpha()}
