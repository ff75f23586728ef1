"""Adapters attached to any torch model: ``wrap(model, config, adapter_name="default")``.

Each selected layer gets the adapter as a child (``<layer>.lyco_adapters.<adapter_name>``, so the model's
``parameters()`` include it) and an instance ``forward`` that runs the layer with its adapted weight
``W' = f_k(…f_1(W))`` for the attached, unmerged adapters in attach order (a single LoRA runs in bypass form).
``wrap`` freezes the base parameters, as PEFT does.

Why an instance ``forward`` rather than PEFT's wrapper layers: the layer object stays the model's own. A host's
model (ComfyUI's ModelPatcher) finds layers by path and identity — weight keys, low-VRAM casts and backups, weight
hooks, ``comfy.ops`` layers with their own cast logic — and a wrapper swapped into the parent would move every
key under a new child and hide those layers. The layer's class, path, state-dict keys and hooks stay as they were
(the adapter is one added child, ``lyco_adapters``), and ``detach`` restores the class's ``forward``.

Per adapter (``tuner.adapter(name)`` or the same-named methods on the tuner):
* ``merge()`` writes ``W'`` (and ``b'``) into the layers, keeping the originals; ``unmerge()`` puts the originals
  back bit-exactly (adapters merged later must be unmerged first);
* ``detach()`` unmerges if needed, removes the adapter from the layers and, once no adapter is left on a layer,
  restores its own ``forward`` and its parameters' ``requires_grad``; the adapter's weights stay available
  (``modules``) for saving;
* ``scaling`` ``{module: s}``; ``can_adapt(module)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .config import AdapterConfig
from .methods import DenseTrainable, Trainable, make_trainable
from .methods.base import functional_forward
from .methods import can_adapt
from .targets import saved_modules, select

ATTR = "lyco_adapters"


def _adapted_forward(layer: nn.Module):
    def forward(x, *args, **kwargs):
        active = [t for t in getattr(layer, ATTR).values() if not t.merged]
        if not active:
            return layer._lyco_forward(x, *args, **kwargs)
        if len(active) == 1:
            return active[0].layer_forward(layer, x)
        weight, bias = layer.weight, getattr(layer, "bias", None)
        for trainable in active:
            weight = trainable(weight)
            if bias is not None and trainable.changes_bias():
                bias = trainable.bias_function(bias)
        return functional_forward(layer, x, weight, bias)

    return forward


def _attach(layer: nn.Module, adapter_name: str, trainable: Trainable) -> None:
    if not hasattr(layer, ATTR):
        layer.add_module(ATTR, nn.ModuleDict())
        layer._lyco_override = layer.__dict__.get("forward")  # an instance forward someone else set, or None
        layer._lyco_forward = layer.forward
        layer._lyco_merged = []  # stack of (adapter name, weight backup, bias backup)
        layer.forward = _adapted_forward(layer)
    getattr(layer, ATTR)[adapter_name] = trainable


def _release(layer: nn.Module, adapter_name: str) -> None:
    adapters = getattr(layer, ATTR)
    del adapters[adapter_name]
    if len(adapters):
        return
    if layer._lyco_override is None:
        del layer.forward
    else:
        layer.forward = layer._lyco_override
    for attr in ("_lyco_override", "_lyco_forward", "_lyco_merged"):
        delattr(layer, attr)
    delattr(layer, ATTR)


@dataclass
class AttachedAdapter:
    """One adapter of a tuner: its config and ``{module name: Trainable}`` (kept after ``detach``)."""

    name: str
    config: AdapterConfig
    modules: dict[str, Trainable]
    layers: dict[str, nn.Module]
    attached: bool = True
    merged: bool = False
    on_detach: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def scaling(self) -> dict[str, float | None]:
        return {name: t.scaling for name, t in self.modules.items()}

    def can_adapt(self, module: nn.Module) -> bool:
        return can_adapt(module, self.config.method)

    def parameters(self):
        return [p for t in self.modules.values() for p in t.parameters()]

    @torch.no_grad()
    def merge(self) -> None:
        """``W ← W'`` (and ``b ← b'``) in every adapted layer; originals kept for ``unmerge``."""
        if not self.attached or self.merged:
            raise ValueError(f"adapter '{self.name}' is {'not attached' if not self.attached else 'already merged'}")
        for name, trainable in self.modules.items():
            layer = self.layers[name]
            was_training = trainable.training
            trainable.eval()
            weight, bias = layer.weight, getattr(layer, "bias", None)
            new_weight = trainable(weight)
            new_bias = trainable.bias_function(bias) if bias is not None and trainable.changes_bias() else None
            trainable.train(was_training)
            layer._lyco_merged.append(
                (self.name, weight.detach().clone(), None if new_bias is None else bias.detach().clone())
            )
            weight.copy_(new_weight)
            if new_bias is not None:
                bias.copy_(new_bias)
            trainable.merged = True
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the weights back exactly as they were before ``merge``."""
        if not self.merged:
            raise ValueError(f"adapter '{self.name}' is not merged")
        for name, trainable in self.modules.items():
            layer = self.layers[name]
            if layer._lyco_merged[-1][0] != self.name:
                raise ValueError(f"{name}: unmerge '{layer._lyco_merged[-1][0]}' first (merged after '{self.name}')")
        for name, trainable in self.modules.items():
            layer = self.layers[name]
            _, weight, bias = layer._lyco_merged.pop()
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
            trainable.merged = False
        self.merged = False

    def detach(self) -> dict[str, Trainable]:
        """Remove the adapter from the model (unmerging first); returns its modules, whose weights stay."""
        if not self.attached:
            return self.modules
        if self.merged:
            self.unmerge()
        for name in self.modules:
            _release(self.layers[name], self.name)
        self.attached = False
        if self.on_detach is not None:
            self.on_detach()
        return self.modules


def build_adapter(
    model: nn.Module,
    config: AdapterConfig,
    adapter_name: str = "default",
    *,
    dtype: torch.dtype = torch.float32,
    where=None,
) -> AttachedAdapter:
    """``config``'s trainables for ``model`` (params in ``dtype`` on each layer's device), not attached: hosts that
    apply weight functions themselves (ComfyUI's weight wrappers) use this directly. ``where(name)`` filters the
    selected modules. Raises when nothing matches."""
    layers = {n: m for n, m in select(model, config).items() if where is None or where(n)}
    modules = {name: make_trainable(name, layer, config) for name, layer in layers.items()}
    for saved_name, saved in saved_modules(model, config).items():
        if where is not None and not where(saved_name):
            continue
        for name, leaf in saved.named_modules(prefix=saved_name):
            if getattr(leaf, "weight", None) is not None and not list(leaf.children()):
                layers[name] = leaf
                modules[name] = DenseTrainable(name, leaf, config, with_bias=True, saved=True)
    if not modules:
        raise ValueError(f"no module of the model matches target_modules={config.target_modules!r}")
    for name, trainable in modules.items():
        trainable.to(device=layers[name].weight.device, dtype=dtype)
    return AttachedAdapter(adapter_name, config, modules, layers, attached=False)


class LycoTuner(nn.Module):
    """A model with LyCORIS-family adapters attached: ``model``, ``peft_config`` {adapter name: config},
    ``adapters`` {adapter name: AttachedAdapter}; calling it calls the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.peft_config: dict[str, AdapterConfig] = {}
        self.adapters: dict[str, AttachedAdapter] = {}
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}

    def _restore_requires_grad(self) -> None:
        """Once no adapter is attached, give the base parameters back their own ``requires_grad``."""
        if any(a.attached for a in self.adapters.values()):
            return
        for name, parameter in self.model.named_parameters():
            if name in self._requires_grad:
                parameter.requires_grad_(self._requires_grad[name])

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def adapter(self, adapter_name: str = "default") -> AttachedAdapter:
        if adapter_name not in self.adapters:
            raise KeyError(f"no adapter named '{adapter_name}' (have: {', '.join(self.adapters) or 'none'})")
        return self.adapters[adapter_name]

    def add_adapter(
        self, config: AdapterConfig, adapter_name: str = "default", *, dtype: torch.dtype = torch.float32
    ) -> AttachedAdapter:
        """Build and attach ``config``'s adapter on every layer it selects (params in ``dtype``, on the layer's
        device). Raises when nothing matches."""
        if adapter_name in self.adapters:
            raise ValueError(f"an adapter named '{adapter_name}' exists already")
        if "." in adapter_name or not adapter_name:
            raise ValueError(f"adapter name {adapter_name!r} must be non-empty and have no '.'")
        adapter = build_adapter(self.model, config, adapter_name, dtype=dtype)
        for name, trainable in adapter.modules.items():
            _attach(adapter.layers[name], adapter_name, trainable)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for parameter in adapter.parameters():
            parameter.requires_grad_(True)
        adapter.attached, adapter.on_detach = True, self._restore_requires_grad
        self.peft_config[adapter_name] = config
        self.adapters[adapter_name] = adapter
        return adapter

    # per-adapter operations, by name
    def merge(self, adapter_name: str = "default") -> None:
        self.adapter(adapter_name).merge()

    def unmerge(self, adapter_name: str = "default") -> None:
        self.adapter(adapter_name).unmerge()

    def detach(self, adapter_name: str = "default") -> dict[str, Trainable]:
        return self.adapter(adapter_name).detach()

    def scaling(self, adapter_name: str = "default") -> dict[str, float | None]:
        return self.adapter(adapter_name).scaling

    def can_adapt(self, module: nn.Module, adapter_name: str = "default") -> bool:
        return self.adapter(adapter_name).can_adapt(module)


def wrap(
    model: nn.Module, config: AdapterConfig, adapter_name: str = "default", *, dtype: torch.dtype = torch.float32
) -> LycoTuner:
    """``model`` with ``config``'s adapter attached as ``adapter_name`` (a LycoTuner gets one more adapter)."""
    tuner = model if isinstance(model, LycoTuner) else LycoTuner(model)
    tuner.add_adapter(config, adapter_name, dtype=dtype)
    return tuner
