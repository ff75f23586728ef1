"""Full difference: ``W' = W + m·diff``, ``b' = b + m·diff_b``."""

from __future__ import annotations

from .base import AdditiveModule, reshape_to
from .registry import register


@register
class Full(AdditiveModule):
    algo = "full"
    suffixes = ("diff", "diff_b")
    ndims = {"diff": (1, 2, 3, 4, 5), "diff_b": (1,)}

    @classmethod
    def claims(cls, params):
        return "diff" in params

    def check_target(self, weight_shape, has_bias):
        if tuple(self.params["diff"].shape) != tuple(weight_shape):
            raise self.fail(
                f"diff has shape {list(self.params['diff'].shape)}",
                key="diff",
                expected=f"the weight's shape {list(weight_shape)}",
            )

    def delta(self, weight_shape, device, dtype):
        return reshape_to(self.params["diff"].to(device, dtype), weight_shape, self, "diff")

    def bias_delta(self, device, dtype):
        diff_b = self.params.get("diff_b")
        return None if diff_b is None else diff_b.to(device, dtype)
