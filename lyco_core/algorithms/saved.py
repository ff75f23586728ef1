"""PEFT ``modules_to_save``: a whole trained copy ``S`` of a layer's ``weight`` (and ``bias``) that replaces the base
one. Strength m moves toward the copy: ``W' = W + m·(S − W)`` (``b'`` alike); m = 1 gives ``S`` itself, PEFT's
law. A bare ``weight`` means this only in a PEFT folder (``modules_to_save``, or PEFT's saved embedding layers).
Reference: docs/methods.md, PEFT modules_to_save copies.
"""

from __future__ import annotations

import torch

from .base import AdapterModule
from .inplace import compute_dtype
from .registry import register


@register
class SavedCopy(AdapterModule):
    detect_order = 130
    algo = "saved"
    whole_layer = True
    replaces_layer = True
    suffixes = ("weight", "bias")
    layouts = ("peft",)

    @classmethod
    def claims(cls, params):
        return "weight" in params and set(params) <= {"weight", "bias"}

    def to_lycoris(self, has_bias):
        raise ValueError("a PEFT modules_to_save copy replaces the whole layer; LyCORIS stores differences only")

    def check_target(self, weight_shape, has_bias):
        if tuple(self.params["weight"].shape) != tuple(weight_shape):
            raise self.fail(
                f"the saved copy is {list(self.params['weight'].shape)}, the weight {list(weight_shape)}",
                key="weight",
                expected="a copy of this layer",
            )
        if "bias" in self.params and not has_bias:
            raise self.fail("the saved copy has a bias, the layer has none", key="bias")

    def _toward(self, key: str, base: torch.Tensor, strength: float) -> torch.Tensor:
        saved = self.tensor(key, base)
        if strength == 1.0:
            return saved.clone()
        base = base.to(compute_dtype(base))
        return base + strength * (saved - base)

    def apply(self, weight, strength):
        return self._toward("weight", weight, strength)

    def changes_bias(self):
        return "bias" in self.params

    def bias_update(self, bias, strength):
        return self._toward("bias", bias, strength) if "bias" in self.params else None
