"""Each module's weight delta ΔW (and bias delta): the common currency of to-LoRA, resize, merge and extract.

Additive methods without DoRA (LoRA, LoHa, LoKr, full, norm) rebuild ``m·ΔW`` from their own tensors; the weight's
shape comes from the base model when one is given, else from the tensors (a plain LoHa/LoKr conv is stored flat,
so without the model its delta stays ``(out, in·∏k)``). Weight-dependent methods (OFT, BOFT, GLoRA, IA3, DoRA)
have ``ΔW = f(W, m) − W`` for the base weight W they were trained on; without it they are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..algorithms.base import AdapterModule
from ..errors import AdapterError
from ..keymap import WeightSlice
from ..statedict import shape_of


def needs_weight(module: AdapterModule) -> bool:
    """Whether the module's delta depends on the base weight."""
    return not module.additive or module.dora


def inferred_shape(module: AdapterModule) -> torch.Size:
    """The weight shape the module's tensors imply (``AdapterModule.weight_shape``); AdapterError where they do
    not tell."""
    shape = module.weight_shape()
    if shape is None:
        raise module.fail(
            f"the weight shape of a {module.algo} module cannot be told from its tensors",
            expected="the base model's weights",
        )
    return shape


@dataclass
class BaseWeights:
    """A base model as one adapter's modules see it: ``state`` tensors, ``keys`` {module name: weight key} and
    ``slices`` {module name: the view of its weight it applies to} for modules matched to part of a fused weight or
    to a transposed one (keymap.WeightSlice); the bias is ``<key without 'weight'>bias`` (the same rows) when the
    state has it."""

    state: Mapping[str, torch.Tensor]
    keys: dict[str, str]
    slices: dict[str, WeightSlice] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.keys

    def _target(self, name: str) -> WeightSlice:
        return self.slices.get(name) or WeightSlice(self.keys[name])

    def _bias_key(self, name: str) -> str | None:
        bias_key = self._target(name).bias_key
        return bias_key if bias_key is not None and bias_key in self.state else None

    def shape(self, name: str) -> torch.Size:
        target = self._target(name)
        return target.shape(shape_of(self.state, target.key))

    def has_bias(self, name: str) -> bool:
        return self._bias_key(name) is not None

    def weight(self, name: str) -> torch.Tensor:
        target = self._target(name)
        return target.of(self.state[target.key])

    def bias(self, name: str) -> torch.Tensor | None:
        key = self._bias_key(name)
        if key is None:
            return None
        target = self._target(name)
        return target.of(self.state[key], shape_of(self.state, target.key))  # the weight's rows of the bias


BaseLike = Mapping[str, torch.Tensor] | Callable[..., BaseWeights]
"""A model state dict (modules matched by path, keymap.py), or a function ``adapter → BaseWeights`` (a host's own
key maps, e.g. ComfyUI's)."""


def base_for(adapter, base: BaseLike | None) -> BaseWeights | None:
    if base is None:
        return None
    if callable(base) and not isinstance(base, Mapping):
        return base(adapter)
    report = adapter.match(base.keys())
    return BaseWeights(base, {name: report.target(name).key for name in report.matched}, report.slices)


def refuse_without_base(names: list[str], operation: str, file: str | None = None) -> AdapterError:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return AdapterError(
        f"{operation} needs the base weights of {len(names)} module(s) whose delta depends on W "
        f"(OFT, BOFT, GLoRA, IA3 or DoRA): {shown}",
        file=file,
        expected="the model the adapter was trained on (--base MODEL, or a connected MODEL/CLIP)",
    )


def module_delta(
    module: AdapterModule,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    strength: float = 1.0,
    shape: torch.Size | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(ΔW, Δb)`` at ``strength``: ``(m·ΔW, m·Δb)`` for additive modules, else ``(f(W, m) − W, b' − b)``."""
    dtype = torch.float64 if weight is not None and weight.dtype == torch.float64 else torch.float32
    if not needs_weight(module):
        target = weight.shape if weight is not None else shape if shape is not None else inferred_shape(module)
        if weight is not None:
            module.fits(target, bias is not None)
        elif math.prod(target) != math.prod(inferred_shape(module)):
            raise module.fail(f"holds {math.prod(inferred_shape(module))} values, the weight {list(target)}")
        delta = module.delta(torch.Size(target), torch.device(device), dtype) * strength
        bias_delta = module.bias_delta(torch.device(device), dtype)
        return delta, None if bias_delta is None else bias_delta * strength
    if weight is None:
        raise refuse_without_base([module.name], "this module", module.ctx.file)
    module.fits(weight.shape, bias is not None)
    base = weight.to(device=device, dtype=dtype)
    delta = module.apply(base, strength) - base
    if bias is None or not module.changes_bias():
        return delta, None
    base_bias = bias.to(device=device, dtype=dtype)
    return delta, module.bias_update(base_bias, strength) - base_bias
