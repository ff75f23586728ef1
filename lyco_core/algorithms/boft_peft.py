"""PEFT BOFT on the input columns.

``boft_R (N, D, H, H)``; per block ``S = ½(A − Aᵀ)``, ``R = (I−S)(I+S)⁻¹``. Factor i applies
``B_i = P_i·blockdiag(R_i)·P_iᵀ`` where ``P_i`` gathers, inside consecutive groups of ``H·2^i`` columns, the
sub-chunks of ``H/2`` in the order ``[0,2,4,…,1,3,5,…]`` (``P_0 = I``). ``M = B_{N−1}⋯B_0``;
``W' = (flat(W)·Mᵀ) ⊙ s_row`` with ``boft_s`` ((out,1) Linear, (1,out) Conv2d) per row. ``boft_P`` is ignored.
Strength (PEFT has none; ours): every ``R_i → m·R_i + (1−m)·I`` and ``s → 1 + m·(s − 1)``.
Reference: docs/methods.md, PEFT BOFT.
"""

from __future__ import annotations

import math

import torch

from .base import AdapterModule, check_ndim, require
from .boft import BOFT
from .oft import OFT_LOADER
from .peft_fields import one_of
from .registry import register
from .rotation import cayley, toward_identity


def butterfly_gather(columns: int, block: int, factor: int, device) -> torch.Tensor:
    """Index ``idx`` of ``P_factor`` (``(P x)[j] = x[idx[j]]``)."""
    group, chunk = block * 2**factor, block // 2
    steps = group // chunk
    chunk_order = torch.cat([torch.arange(0, steps, 2), torch.arange(1, steps, 2)])
    within = (chunk_order[:, None] * chunk + torch.arange(chunk)[None, :]).reshape(-1)
    starts = torch.arange(0, columns, group)[:, None]
    return (starts + within[None, :]).reshape(-1).to(device)


@register
class PeftBOFT(AdapterModule):
    detect_order = 110
    algo = "boft"
    label = BOFT.label
    suffixes = ("boft_R", "boft_s", "boft_P")

    @classmethod
    def claims(cls, params):
        return "boft_R" in params

    peft_type = "BOFT"
    peft_fan_in_fan_out = True
    loader = OFT_LOADER

    @classmethod
    def peft_config_fields(cls, modules, tensors, folder):
        """One factor count, and one block size (else one block count), for every layer."""
        shapes = [m.params["boft_R"].shape for m in modules.values()]
        fields = {
            "boft_n_butterfly_factor": one_of({int(s[0]) for s in shapes}, "butterfly factor count"),
            "boft_dropout": 0.0,
            "init_weights": True,
            "bias": "none",
        }
        sizes, counts = {int(s[2]) for s in shapes}, {int(s[1]) for s in shapes}
        if len(sizes) == 1:
            return {**fields, "boft_block_size": sizes.pop(), "boft_block_num": 0}, []
        return {**fields, "boft_block_size": 0, "boft_block_num": one_of(counts, "BOFT block size or block count")}, []

    def to_lycoris(self, has_bias):
        raise ValueError("PEFT BOFT rotates input columns; LyCORIS BOFT rotates output rows")

    def to_peft(self, has_bias, folder):
        return {"boft_R": self.params["boft_R"], "boft_s": self.params["boft_s"]}, None, None

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        require(self, ("boft_R", "boft_s"))
        blocks = check_ndim(self, "boft_R", (4,))
        if blocks.shape[2] != blocks.shape[3]:
            raise self.fail(f"shape {list(blocks.shape)}", key="boft_R", expected="(factors, blocks, bs, bs)")

    def rank(self):
        return int(self.params["boft_R"].shape[2])

    def summary(self):
        info = super().summary()
        factors, n, bs, _ = self.params["boft_R"].shape
        info.update(block_size=int(bs), blocks=int(n), factors=int(factors))
        return info

    def check_target(self, weight_shape, has_bias):
        factors, n, bs, _ = self.params["boft_R"].shape
        columns = math.prod(weight_shape[1:])
        if n * bs != columns:
            raise self.fail(
                f"{n} blocks of {bs} do not cover {columns} input columns",
                key="boft_R",
                expected="an adapter made for this layer",
            )
        if self.params["boft_s"].numel() != weight_shape[0]:
            raise self.fail(
                f"boft_s has {self.params['boft_s'].numel()} values",
                key="boft_s",
                expected=f"{weight_shape[0]} (one per output row)",
            )

    def rotation(self, weight: torch.Tensor) -> torch.Tensor:
        """The factor rotations ``(N, D, H, H)``: ½-skew Cayley of ``boft_R``."""
        blocks = self.tensor("boft_R", weight)
        return cayley(0.5 * (blocks - blocks.transpose(-1, -2)), plus_first=False)

    def apply(self, weight, strength):
        return self.rotate(weight, self.rotation(weight), strength)

    def rotate(self, weight: torch.Tensor, rotations: torch.Tensor, strength: float) -> torch.Tensor:
        """W' for factor rotations ``(N, D, H, H)`` (from ``rotation``, possibly altered by the caller)."""
        factors, n, bs, _ = rotations.shape
        # Columns of W are the vectors M acts on: work on Wᵀ, whose rows they are.
        x = weight.to(rotations.dtype).reshape(weight.shape[0], -1).t().clone()
        for factor in range(factors):
            rotation = toward_identity(rotations[factor], strength)
            idx = butterfly_gather(x.shape[0], bs, factor, x.device) if factor else None
            scattered = x if idx is None else torch.empty_like(x).index_copy_(0, idx, x)
            turned = torch.bmm(rotation, scattered.reshape(n, bs, -1)).reshape(x.shape)
            x = turned if idx is None else turned[idx]
        scale = self.tensor("boft_s", weight).reshape(-1, 1)
        new_weight = x.t() * (1 + strength * (scale - 1))
        return new_weight.reshape(weight.shape)
