"""Norm-layer difference (LayerNorm/GroupNorm): ``W' = W + m·w_norm``, ``b' = b + m·b_norm``.
Reference: docs/methods.md, Full difference.
"""

from __future__ import annotations

from .base import AdditiveModule, reshape_to
from .registry import register


@register
class Norm(AdditiveModule):
    detect_order = 60
    algo = "norm"
    label = "Norm"
    whole_layer = True
    vector_delta = True
    peft_refusal = (
        "PEFT has no norm-difference method (a trained norm layer is a modules_to_save copy, which needs the base "
        "weights: save it from the trainer)"
    )
    suffixes = ("w_norm", "b_norm")
    ndims = {"w_norm": (1,), "b_norm": (1,)}

    @classmethod
    def claims(cls, params):
        return "w_norm" in params

    def check_target(self, weight_shape, has_bias):
        if self.params["w_norm"].numel() != weight_shape.numel():
            raise self.fail(
                f"w_norm has {self.params['w_norm'].numel()} values",
                key="w_norm",
                expected=f"{weight_shape.numel()} (the norm weight)",
            )

    def weight_shape(self):
        return self.params["w_norm"].shape

    def delta(self, weight_shape, device, dtype):
        return reshape_to(self.params["w_norm"].to(device, dtype), weight_shape, self, "w_norm")

    def bias_delta(self, device, dtype):
        b_norm = self.params.get("b_norm")
        return None if b_norm is None else b_norm.to(device, dtype)
