"""Full difference: ``W' = W + m·diff``, ``b' = b + m·diff_b``. Reference: docs/methods.md, Full difference."""

from __future__ import annotations

import math

import torch

from .base import AdditiveModule, reshape_to
from .registry import register


def identity_pair(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left ``(out, r)``, right ``(r, cols)``), ``r = min(out, cols)``, with ``left @ right = flat(delta)`` exactly:
    one of them is the identity, the other ``flat(delta)``."""
    flat = delta.reshape(delta.shape[0], -1)
    eye = torch.eye(min(flat.shape), dtype=flat.dtype)
    return (eye, flat) if flat.shape[0] <= flat.shape[1] else (flat, eye)


@register
class Full(AdditiveModule):
    detect_order = 50
    algo = "full"
    label = "Full"
    whole_layer = True
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

    def to_peft(self, has_bias, folder):
        """The difference (``diff``[, ``diff_b``]) as exact factors of the folder's method, scale 1 (alpha = r):
        LoRA ``B @ A`` with one factor the identity (``diff_b`` → ``lora_B.bias``); LoHa ``(w1_a@w1_b) ⊙
        (w2_a@w2_b)`` with the first pair so and the second all ones (``w2_a[:,0] = 1``, ``w2_b[0] = 1``, the rest
        0)."""
        diff = self.params["diff"]
        if diff.ndim < 2:
            raise ValueError("a one-dimensional difference has no PEFT form")
        left, right = identity_pair(diff)
        rank = left.shape[1]
        if folder.method == "lora":
            params = {
                "lora_A.weight": right.reshape(rank, *diff.shape[1:]),
                "lora_B.weight": left.reshape(*left.shape, *[1] * (diff.ndim - 2)),
            }
            if "diff_b" in self.params:
                params["lora_B.bias"] = self.params["diff_b"]
            return params, rank, float(rank)
        if folder.method != "loha":
            raise ValueError(
                f"a dense difference has no exact form in PEFT's {folder.method.upper()} (save it in the lycoris "
                "layout)"
            )
        if "diff_b" in self.params:
            raise ValueError("PEFT's LoHa cannot change a bias")
        if folder.tucker and diff.ndim > 2 and math.prod(diff.shape[2:]) > 1:
            raise ValueError("with use_effective_conv2d PEFT's LoHa builds Tucker cores for this convolution")
        ones_a, ones_b = torch.zeros_like(left), torch.zeros_like(right)
        ones_a[:, 0], ones_b[0] = 1, 1
        return {"hada_w1_a": left, "hada_w1_b": right, "hada_w2_a": ones_a, "hada_w2_b": ones_b}, rank, float(rank)

    def weight_shape(self):
        return self.params["diff"].shape

    def delta(self, weight_shape, device, dtype):
        return reshape_to(self.params["diff"].to(device, dtype), weight_shape, self, "diff")

    def bias_delta(self, device, dtype):
        diff_b = self.params.get("diff_b")
        return None if diff_b is None else diff_b.to(device, dtype)
