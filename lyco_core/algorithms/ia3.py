"""(IA)³: a learned per-channel gain.

LyCORIS (``weight`` + ``on_input``): ``W' = W ⊙ (1 + m·w)`` along input columns (on_input) or output rows; bias
unchanged (the rebuild/merge path).
PEFT (``ia3_l``): ``W' = W ⊙ l_m`` with ``l_m = 1 + m·(l − 1)`` (PEFT has no strength; at m=1 this is its merge);
``ia3_l (out,1)`` scales rows, ``(1,in)`` columns (feed-forward layers); conv ``(1,C,1,1)`` decides by the config's
``feedforward_modules``. Layers that are not feed-forward also get ``b' = b ⊙ l_m``, as PEFT's merge does.
Reference: docs/methods.md, (IA)³.
"""

from __future__ import annotations

import re

import torch

from .base import AdapterModule
from .registry import register


def _is_feedforward(ctx, path: str) -> bool:
    targets = ctx.config.get("feedforward_modules") or []
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == t or path.endswith("." + t) for t in targets)


@register
class IA3(AdapterModule):
    detect_order = 30
    algo = "ia3"
    label = "(IA)³"
    suffixes = ("weight", "on_input", "ia3_l")
    flags = ("on_input",)
    ndims = {"weight": (1, 2, 3, 4, 5), "ia3_l": (1, 2, 3, 4, 5)}

    @classmethod
    def claims(cls, params):
        return "on_input" in params or "ia3_l" in params

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        self.peft = "ia3_l" in params
        key = "ia3_l" if self.peft else "weight"
        if key not in params:
            raise self.fail("missing the IA3 gain vector", key=key, expected="'weight' next to 'on_input'")
        self.gain_key = key

    peft_type = "IA3"
    peft_fan_in_fan_out = True

    @classmethod
    def peft_config_fields(cls, modules, tensors, folder):
        """``feedforward_modules``: the layers whose gain is on the input channels."""
        feedforward = sorted(path for path, module in modules.items() if module.on_input())
        return {"feedforward_modules": feedforward, "init_ia3_weights": True}, []

    def to_peft(self, has_bias, folder):
        """``ia3_l = 1 + w`` shaped as PEFT stores it; refused where PEFT would also scale a bias (or may)."""
        if self.peft:
            return {"ia3_l": self.params["ia3_l"]}, None, None
        on_input = self.on_input()
        if not on_input and has_bias is not False:
            raise ValueError(
                "PEFT (IA)³ would also scale this layer's bias"
                + (" (the model, --base, would tell whether the layer has one)" if has_bias is None else "")
            )
        gain = 1 + self.params["weight"]
        shape = (1, -1, 1, 1) if gain.ndim == 4 else (1, -1) if on_input else (-1, 1)
        return {"ia3_l": gain.reshape(shape)}, None, None

    def to_lycoris(self, has_bias):
        """PEFT ``W ⊙ l`` as LyCORIS ``W ⊙ (1 + w)``: ``w = l − 1`` (the strength laws coincide); refused where PEFT
        would also scale a bias (or may: unknown without the model)."""
        if not self.peft:
            return super().to_lycoris(has_bias)
        gain, on_input = self.params["ia3_l"], self.on_input()
        if not on_input and has_bias is not False:
            raise ValueError(
                "PEFT (IA)³ also scales this layer's bias, which LyCORIS IA3 does not"
                + (" (the model, --base, would tell whether the layer has one)" if has_bias is None else "")
            )
        weight = gain - 1 if gain.ndim == 4 else (gain - 1).reshape(-1)
        return {"weight": weight, "on_input": torch.tensor(int(on_input), dtype=torch.int64)}, ""

    def on_input(self, weight_shape=None) -> bool:
        if not self.peft:
            return bool(int(self.params["on_input"]))
        gain = self.params["ia3_l"]
        if gain.ndim == 2:  # Linear: (out, 1) scales rows, (1, in) columns
            return gain.shape[0] == 1 and gain.shape[1] > 1
        return _is_feedforward(self.ctx, self.ctx.module_path)

    def rank(self):
        return None

    def check_target(self, weight_shape, has_bias):
        channels = weight_shape[1] if self.on_input(weight_shape) else weight_shape[0]
        if self.params[self.gain_key].numel() != channels:
            raise self.fail(
                f"gain has {self.params[self.gain_key].numel()} values for "
                f"{'input' if self.on_input(weight_shape) else 'output'} channels {channels}",
                key=self.gain_key,
                expected=f"{channels} values",
            )

    def gain(self, like: torch.Tensor, strength: float) -> torch.Tensor:
        """The per-channel factor at ``strength``: ``1 + m·w`` (LyCORIS) or ``1 + m·(l − 1)`` (PEFT)."""
        gain = self.tensor(self.gain_key, like).reshape(-1)
        return 1 + strength * gain if not self.peft else 1 + strength * (gain - 1)

    def apply(self, weight, strength):
        gain = self.gain(weight, strength)
        axis = 1 if self.on_input(weight.shape) else 0
        return weight.to(gain.dtype) * gain.reshape([-1 if d == axis else 1 for d in range(weight.ndim)])

    def changes_bias(self):
        return self.peft and not self.on_input()

    def bias_update(self, bias, strength):
        if not self.changes_bias():
            return None
        gain = self.gain(bias, strength)
        return bias.to(gain.dtype) * gain
