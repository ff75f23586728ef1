"""GLoRA (generalised LoRA): ``ΔW = scale · (W ×_in A + Bm)``, applied as ``W' = W + m·ΔW``.

New layout (LyCORIS ≥ 3.0): ``a1 (in,r)``, ``a2 (r,in)``, ``b1 (out,r)``, ``b2 (r,in[,*k])`` (trailing 1×1 dims
allowed); ``A = a1 @ a2 (in×in)``, ``(W ×_in A)[o,j,…] = Σ_i W[o,i,…]·A[i,j]``, ``Bm = b1 @ b2`` reshaped to W;
r = ``a2.shape[0]``. Old layout (≤ 2.x, Linear/1×1): ``a1 (r,in)``, ``a2 (in,r)``, ``b1 (r,in)``, ``b2 (out,r)``;
``ΔW = scale · (W @ a2 @ a1 + b2 @ b1)``; r = ``a1.shape[0]``. The layout is told by ``a1.shape[0] == in``.
ΔW depends on W: apply to the weight the adapter was trained on.
Reference: docs/methods.md, GLoRA.
"""

from __future__ import annotations

import torch

from .base import AdapterModule, flat2, require, reshape_to
from .registry import register

_KEYS = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


@register
class GLoRA(AdapterModule):
    detect_order = 90
    algo = "glora"
    label = "GLoRA"
    suffixes = _KEYS
    ndims = dict.fromkeys(_KEYS, (2, 3, 4, 5))

    scaled = True
    peft_refusal = "PEFT has no GLoRA of this form"

    @classmethod
    def claims(cls, params):
        return "a1.weight" in params or "b1.weight" in params

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        require(self, _KEYS)
        a1, a2, b1, b2 = (flat2(params[k]) for k in _KEYS)
        new_ok = a1.shape[1] == a2.shape[0] == b1.shape[1] == b2.shape[0]
        old_ok = a1.shape[0] == a2.shape[1] == b1.shape[0] == b2.shape[1]
        if not (new_ok or old_ok):
            raise self.fail(
                "the four factor shapes "
                + ", ".join(f"{k} {list(params[k].shape)}" for k in _KEYS)
                + " do not share a rank",
                expected="a1 (in,r), a2 (r,in), b1 (out,r), b2 (r,in…)",
            )

    def _is_new(self, in_features: int | None = None) -> bool:
        a1 = self.params["a1.weight"]
        if in_features is not None and (a1.shape[0] == in_features) != (a1.shape[1] == in_features):
            return a1.shape[0] == in_features
        return flat2(a1).shape[1] == self.params["a2.weight"].shape[0]

    def rank(self):
        return int(self.params["a2.weight"].shape[0] if self._is_new() else self.params["a1.weight"].shape[0])

    def scale_value(self):
        return self.ctx.scale(self.params.get("alpha"), self.rank())

    def check_target(self, weight_shape, has_bias):
        if self._is_new(weight_shape[1]):
            a_dim, out = self.params["a1.weight"].shape[0], self.params["b1.weight"].shape[0]
        else:
            a_dim, out = self.params["a1.weight"].shape[1], self.params["b2.weight"].shape[0]
        if a_dim != weight_shape[1] or out != weight_shape[0]:
            raise self.fail(
                f"factors fit a ({out}, {a_dim}, …) weight, not {list(weight_shape)}",
                expected="an adapter made for this layer",
            )

    def apply(self, weight, strength):
        a1, a2, b1, b2 = (flat2(self.tensor(k, weight)) for k in _KEYS)
        base = weight.to(a1.dtype)
        rows = base.reshape(base.shape[0], base.shape[1], -1)  # (out, in, ∏k)
        if self._is_new(weight.shape[1]):
            mixed = torch.einsum("oik,ij->ojk", rows, a1 @ a2).reshape(weight.shape)
            additive = reshape_to(b1 @ b2, weight.shape, self, "b1 @ b2")
        else:
            mixed = reshape_to(flat2(base) @ a2 @ a1, weight.shape, self, "W @ a2 @ a1")
            additive = reshape_to(b2 @ b1, weight.shape, self, "b2 @ b1")
        return base + strength * self.scale_value() * (mixed + additive)
