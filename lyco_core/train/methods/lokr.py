"""Trainable LoKr: ``ΔW = (alpha/r)·kron(W1, W2)`` with the shapes PEFT builds, so PEFT loads what we save.

``(a, b) = factorization(out, f)``, ``(c, d) = factorization(in/groups, f)`` (PEFT's order: a dividing ``f`` comes
first, unsorted), ``f = decompose_factor``;
W1 ``(a,c)`` is split into ``w1_a (a,r) @ w1_b (r,c)`` iff ``decompose_both`` and ``r < max(a,c)/2``; W2 is
``(b, d, *k)`` whole, or split iff ``r < max(b,d)/2``: ``w2_a (b,r) @ w2_b (r, d·∏k)``, or for k×k convs with
``use_effective_conv2d`` Tucker ``t2 (r,r,*k)``, ``w2_a (r,b)``, ``w2_b (r,d)``.
``init_weights`` True: W1 (or w1_a) 0, the rest kaiming (PEFT); ``"lycoris"``: W2 (or w2_b) 0, the rest kaiming;
False: all kaiming. Rank dropout divides by the mask mean iff ``rank_dropout_scale``.
Saved in LyCORIS layout, a whole/whole module (read there with scale 1) carries its scale folded into ``lokr_w1``.
Training builds ``W' = W + s·kron(W1, W2)`` through ``kronecker_update`` (one pass, no Kronecker temporary, a
backward of two matrix-vector products); with rank dropout at work the masked ΔW is formed instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
from torch import nn

from ...algorithms.base import compute_dtype
from ...algorithms.factorization import factorization
from ...algorithms.lokr import LoKr
from ..config import RANK_DROPOUT_HELP, Node, dropout_option, option
from .base import AdditiveTrainable, kaiming_, trainable
from .fused import kronecker_update
from .loha import LoHaConfig


@dataclass
class LoKrConfig(LoHaConfig):
    """LoKr: ``ΔW = (alpha/r)·kron(W1, W2)``. Shapes as PEFT builds them: ``(a,b) = factorization(out, f)``,
    ``(c,d) = factorization(in, f)`` with ``f = decompose_factor``; W1 ``(a,c)`` is split into ``w1_a@w1_b`` iff
    ``decompose_both`` and ``r < max(a,c)/2``; W2 is split iff ``r < max(b,d)/2`` (Tucker ``t2`` for k×k convs with
    ``use_effective_conv2d``). ``rank_dropout`` masks rows, divided by the mask mean iff ``rank_dropout_scale``.
    ``init_weights`` True: W1 0 (PEFT); ``"lycoris"``: W2 (or w2_b) 0; False: all random."""

    method: ClassVar[str] = "lokr"
    peft_type: ClassVar[str] = "LOKR"
    node: ClassVar[Node] = Node(
        "LyCOLoKrConfig",
        "LoKr Config",
        "LoKr (Kronecker product) with PEFT's LoKrConfig fields.",
        (*LoHaConfig.node.inputs, "rank_dropout_scale", "decompose_both", "decompose_factor"),
        position=30,
    )
    # LoHa's fields, with what they mean here
    rank_dropout: float = dropout_option(RANK_DROPOUT_HELP)
    use_effective_conv2d: bool = option(False, tooltip="Tucker core for the second factor of k×k convolutions.")
    init_weights: Union[bool, str] = option(
        True,
        kind="flag",
        choices=["true", "lycoris", "false"],
        tooltip="true: first factor 0 (PEFT); lycoris: second factor 0; false: random.",
    )
    decompose_both: bool = option(
        False, tooltip="Also split the first (left) Kronecker factor into two rank-r factors."
    )
    decompose_factor: int = option(
        -1,
        min=-1,
        max=8192,
        tooltip="Kronecker split: a factor that divides the dimension is used as is; -1 = the split closest to "
        "the square root.",
    )
    rank_dropout_scale: bool = option(False, tooltip="Rescale kept rows by the kept fraction when rank dropout is on.")


@trainable
class LoKrTrainable(AdditiveTrainable):
    config_class = LoKrConfig
    algorithm = LoKr
    grouped_convs = True

    def __init__(self, name, layer, config, rank, alpha):
        super().__init__(name, layer, config, rank, alpha)
        self.rank_dropout_rescales = bool(config.rank_dropout_scale)
        out, cin, *kernel = self.weight_shape
        factor = config.decompose_factor
        (a, b) = factorization(out, factor, sort_divisor=False)
        (c, d) = factorization(cin, factor, sort_divisor=False)
        whole_1 = not (config.decompose_both and rank < max(a, c) / 2)
        whole_2 = rank >= max(b, d) / 2
        tucker = config.use_effective_conv2d and kernel and math.prod(kernel) > 1 and not whole_2
        init = config.init_weights
        zero_1, zero_2 = init is True, init == "lycoris"
        self.scale_carriers = ("lokr_w1",) if whole_1 else ("lokr_w1_a",)
        if whole_1:
            self.add("lokr_w1", self._init(torch.empty(a, c), zero_1))
        else:
            self.add("lokr_w1_a", self._init(torch.empty(a, rank), zero_1))
            self.add("lokr_w1_b", kaiming_(torch.empty(rank, c)))
        if whole_2:
            self.add("lokr_w2", self._init(torch.empty(b, d, *kernel), zero_2))
        elif tucker:
            core = (rank, rank, *kernel) if len(kernel) > 1 else (rank, rank, kernel[0], 1)
            self.add("lokr_t2", kaiming_(torch.empty(core)))
            self.add("lokr_w2_a", kaiming_(torch.empty(rank, b)))
            self.add("lokr_w2_b", self._init(torch.empty(rank, d), zero_2))
        else:
            self.add("lokr_w2_a", kaiming_(torch.empty(b, rank)))
            self.add("lokr_w2_b", self._init(torch.empty(rank, d * math.prod(kernel)), zero_2))

    def rebuild(self, weight):
        if self.training and self.rank_dropout:
            return super().rebuild(weight)
        module = self.inference()  # the scaling folded into the first factor
        dtype = compute_dtype(weight)
        first, second = module.factors(weight.shape, weight.device, dtype)
        return kronecker_update(weight.to(dtype), first, second, module.scale_value())

    @staticmethod
    def _init(tensor: torch.Tensor, zero: bool) -> torch.Tensor:
        return nn.init.zeros_(tensor) if zero else kaiming_(tensor)

    def lycoris_tensors(self):
        tensors = dict(self.tensors())
        if "lokr_w1" in tensors and "lokr_w2" in tensors:  # LyCORIS reads whole/whole at scale 1
            tensors["lokr_w1"] = tensors["lokr_w1"] * self.scaling
            tensors["alpha"] = torch.tensor(float(self.rank))
        else:
            tensors["alpha"] = self.lycoris_alpha()
        return tensors
