"""Trainable LoHa: ``ΔW = (alpha/r)·(w1_a@w1_b) ⊙ (w2_a@w2_b)`` (conv: the products are ``(out, in·∏k)``), or
with Tucker cores for k×k convs when ``use_effective_conv2d``: ``T_j = t_j ×₁ w_j_aᵀ ×₂ w_j_bᵀ``, ΔW ∝ T_1 ⊙ T_2.

Shapes and init as PEFT: plain ``w?_a (out,r)``, ``w?_b (r, in·∏k)``; Tucker ``w?_a (r,out)``, ``w?_b (r,in)``,
``t? (r,r,*k)`` (Conv1d ``(r,r,k,1)``). ``init_weights`` True: w2_b 0, the rest kaiming; ``"lycoris"``: w1_b,
w2_b ~ N(0,1), w1_a ~ N(0,0.1), w2_a 0, t ~ N(0,0.1); False: all kaiming. Rank dropout always rescales.

Training runs the weight form ``W' = W + ΔW`` (the bypass form would also build ΔW, then run the layer's op twice),
each factor as the rank-r product ``L_j @ R_j`` of the algorithm (Tucker: ``L_j = w_j_aᵀ``, ``R_j = t_j ×_q w_j_b``)
through ``hadamard_update``, whose backward recomputes the two products instead of keeping them; rank dropout
masks the rows of ``L_1``, which masks the same rows of ΔW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
from torch import nn

from ...algorithms.base import compute_dtype
from ...algorithms.loha import LoHa
from ..config import MODULE_DROPOUT_HELP, RANK_DROPOUT_HELP, Node, RankedConfig, dropout_option, option
from .base import AdditiveTrainable, Trainable, kaiming_, row_mask, trainable
from .fused import hadamard_update


@dataclass
class LoHaConfig(RankedConfig):
    """LoHa: ``ΔW = (alpha/r)·(w1_a@w1_b) ⊙ (w2_a@w2_b)``; Tucker cores for k×k convs with
    ``use_effective_conv2d``. ``rank_dropout`` masks rows of ΔW (rescaled by the mask mean, as PEFT LoHa);
    ``module_dropout`` skips the adapter per forward. ``init_weights`` True: w2_b 0, the rest kaiming (PEFT);
    ``"lycoris"``: LyCORIS' normal init with w2_a 0; False: all random."""

    method: ClassVar[str] = "loha"
    peft_type: ClassVar[str] = "LOHA"
    node: ClassVar[Node] = Node(
        "LyCOLoHaConfig",
        "LoHa Config",
        "LoHa (Hadamard product of two low-rank products) with PEFT's LoHaConfig fields.",
        (
            "r",
            "alpha",
            "rank_dropout",
            "module_dropout",
            "use_effective_conv2d",
            "init_weights",
            "rank_pattern",
            "alpha_pattern",
        ),
        position=20,
    )
    rank_dropout: float = dropout_option(RANK_DROPOUT_HELP + " Kept rows are rescaled by the kept fraction.")
    module_dropout: float = dropout_option(MODULE_DROPOUT_HELP)
    use_effective_conv2d: bool = option(
        False, tooltip="Tucker cores for k×k convolutions (fewer values than flattened factors)."
    )
    init_weights: Union[bool, str] = option(
        True,
        kind="flag",
        choices=["true", "lycoris", "false"],
        tooltip="true: w2_b 0 (PEFT); lycoris: LyCORIS' normal init, w2_a 0; false: random.",
    )


@trainable
class LoHaTrainable(AdditiveTrainable):
    config_class = LoHaConfig
    algorithm = LoHa
    scale_carriers = ("hada_w1_a",)
    layer_forward = Trainable.layer_forward  # the weight form (see the module docstring)
    factor_pairs, needs_rank, grouped_convs = 2, True, True

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

    def rebuild(self, weight):
        module = self.inference()  # the scaling folded into hada_w1_a: scale_value() is 1
        dtype = compute_dtype(weight)
        left1, right1 = module.factor_pair(1, weight.device, dtype)
        left2, right2 = module.factor_pair(2, weight.device, dtype)
        if self.training and self.rank_dropout:
            left1 = left1 * row_mask(left1.shape[0], self.rank_dropout, self.rank_dropout_rescales, left1)
        base = weight.to(dtype)
        return hadamard_update(
            base.reshape(base.shape[0], -1), left1, right1, left2, right2, module.scale_value()
        ).reshape(weight.shape)

    def lycoris_tensors(self):
        return {**self.tensors(), "alpha": self.lycoris_alpha()}
