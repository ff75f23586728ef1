"""PEFT LoRA on an ``nn.Embedding`` table ``(num, dim)``: ``lora_embedding_A (r, num)``, ``lora_embedding_B (dim, r)``,
``ΔW = scale·(B @ A)ᵀ = scale·Aᵀ @ Bᵀ``. It is the LoRA with ``up = Aᵀ (num, r)`` and ``down = Bᵀ (r, dim)``, read
as such (all of LoRA's math, scale and strength law); ``embedding`` tells writers to store PEFT's spelling again.
Reference: docs/methods.md, LoRA / LoCon.
"""

from __future__ import annotations

from .base import AdapterModule, check_ndim, require
from .lora import LoRA
from .registry import register

EMBEDDING_KEYS = ("lora_embedding_A", "lora_embedding_B")


@register
class EmbeddingLoRA(LoRA):
    detect_order = 120
    suffixes = EMBEDDING_KEYS
    embedding = True

    @classmethod
    def claims(cls, params):
        return any(key in params for key in EMBEDDING_KEYS)

    def to_peft(self, has_bias, folder):
        if self.dora or "lora_up.bias" in self.params:
            raise ValueError("PEFT's embedding LoRA has no DoRA and no bias")
        params = {
            "lora_embedding_A": self.params["lora_up.weight"].t().contiguous(),
            "lora_embedding_B": self.params["lora_down.weight"].t().contiguous(),
        }
        rank = self.rank()
        return params, rank, self.scale_value() * rank

    def __init__(self, name, params, ctx):
        AdapterModule.__init__(self, name, params, ctx)
        require(self, EMBEDDING_KEYS)
        up, down = (check_ndim(self, key, (2,)).t().contiguous() for key in EMBEDDING_KEYS)
        rest = {k: v for k, v in params.items() if k not in EMBEDDING_KEYS}
        super().__init__(name, {**rest, "lora_up.weight": up, "lora_down.weight": down}, ctx)
