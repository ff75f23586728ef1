"""The trainable adapter of one layer, reusing the inference math of ``lyco_core.algorithms``.

A ``Trainable`` holds its tensors as parameters under the canonical file names (``"lora_up.weight"`` is stored as
attribute ``lora_up_weight``) and, on every call, builds the algorithm module over them and asks it for the adapted
weight, so what trains is exactly what the loader later applies. Calling it is the weight function
``W ↦ W'`` (ComfyUI's ``weight_function`` contract; result in W's dtype); ``layer_forward`` runs a layer with it
(additive methods in the algorithm's bypass form where it has one).

Training-time extras (only in ``train()`` mode):
* module dropout ``p``: per call, with probability p the layer runs unadapted (``W' = W``);
* rank dropout ``p`` (additive methods that have it): rows of ΔW are kept with probability ``1−p``
  (``mask_o ~ Bernoulli(1−p)``), and divided by ``mean(mask)`` when the method rescales.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ...algorithms.base import AdapterModule, ScaleContext, compute_dtype
from ...bypass import layer_call
from ..config import CONFIGS, AdapterConfig

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


TRAINABLES: dict[str, type] = {}  # config method → its Trainable class (each method file registers one)


def trainable(cls):
    """Register ``cls`` as the Trainable of its config's ``method``, and its ``config_class`` as that method's config
    (``config.CONFIGS``, which config_from_dict and the config nodes read)."""
    if cls.method in TRAINABLES:
        raise ValueError(f"{cls.__name__} and {TRAINABLES[cls.method].__name__} both train {cls.method!r}")
    TRAINABLES[cls.method] = cls
    CONFIGS[cls.method] = cls.config_class
    return cls


def attribute(canonical: str) -> str:
    """Attribute name of a canonical parameter (dots are not allowed in module attribute names)."""
    return canonical.replace(".", "_")


def functional_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """``layer``'s own operation with the given weight and bias (Linear, Conv1d/2d/3d, Embedding, Layer/GroupNorm)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, CONV):
        return layer._conv_forward(x, weight, bias)
    if isinstance(layer, nn.Embedding):
        return F.embedding(
            x, weight, layer.padding_idx, layer.max_norm, layer.norm_type, layer.scale_grad_by_freq, layer.sparse
        )
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(x, layer.normalized_shape, weight, bias, layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(x, layer.num_groups, weight, bias, layer.eps)
    raise TypeError(f"no functional form for {type(layer).__name__}")


def kaiming_(tensor: torch.Tensor) -> torch.Tensor:
    """kaiming-uniform with ``a=√5`` (torch's default Linear init), as PEFT and LyCORIS initialise factors."""
    return nn.init.kaiming_uniform_(tensor, a=5**0.5)


def row_mask(rows: int, p: float, rescale: bool, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(1−p) keep-mask of ``rows`` rows, shaped to broadcast over ``like``; ÷ its mean if ``rescale``."""
    mask = (torch.rand(rows, device=like.device) > p).to(like.dtype)
    if rescale:
        mask = mask / mask.mean().clamp_min(1.0 / rows)
    return mask.reshape(-1, *[1] * (like.ndim - 1))


class Trainable(nn.Module):
    """One layer's adapter. Subclasses set ``config_class`` (their ``method`` is its method) and ``algorithm`` and
    create their tensors in ``__init__``; the class registered for a config method (``@trainable``) also says which
    layers it adapts and how it is made."""

    config_class: ClassVar[type[AdapterConfig] | None] = None  # the config of the method it trains
    method: ClassVar[str] = ""
    algorithm: ClassVar[type[AdapterModule]]
    rank_dropout_rescales: ClassVar[bool] = True
    # low-rank factor pairs (LoRA 1, LoHa 2): a dense difference is trained where they would hold ≥ the weight
    factor_pairs: ClassVar[int] = 0
    needs_rank: ClassVar[bool] = False  # r must be positive
    grouped_convs: ClassVar[bool] = False  # adapts convolutions with groups > 1 (factors use in/groups)
    embeddings: ClassVar[bool] = False  # adapts nn.Embedding
    ranked: ClassVar[bool] = True  # built with the module's r and alpha

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.config_class is not None:
            cls.method = cls.config_class.method

    @classmethod
    def adapts(cls, layer: nn.Module) -> bool:
        """Whether this method has a trainable form for ``layer``: Linear and Conv1d/2d/3d (grouped ones where
        ``grouped_convs``), nn.Embedding where ``embeddings``."""
        if isinstance(layer, nn.Embedding):
            return cls.embeddings
        if isinstance(layer, CONV):
            return layer.groups == 1 or cls.grouped_convs
        return isinstance(layer, nn.Linear)

    @classmethod
    def factor_count(cls, layer: nn.Module, config, rank: int) -> int | None:
        """Values the low-rank factors would hold at ``rank`` (None for methods that are not low-rank)."""
        if not cls.factor_pairs:
            return None
        shape = layer.weight.shape
        return cls.factor_pairs * rank * (shape[0] + math.prod(shape[1:]))

    @classmethod
    def create(cls, name: str, layer: nn.Module, config, rank: int, alpha: float | None) -> Trainable:
        """The trainable for ``layer``; methods without a rank (rotations, gains: ``ranked = False``) take none."""
        return cls(name, layer, config, rank, alpha) if cls.ranked else cls(name, layer, config)

    def __init__(self, name: str, layer: nn.Module, config, rank: int = 0, alpha: float | None = None):
        super().__init__()
        self.name = name
        self.weight_shape = tuple(layer.weight.shape)
        self.has_bias = getattr(layer, "bias", None) is not None
        self.is_embedding = isinstance(layer, nn.Embedding)
        self.rank, self.config_alpha = rank, alpha
        self.module_dropout = float(getattr(config, "module_dropout", 0.0))
        self.rank_dropout = float(getattr(config, "rank_dropout", 0.0))
        self.canonical: list[str] = []
        self.merged = False  # set by the tuner while W' is written into the layer
        self._scale = ScaleContext(
            file=name,
            config_alpha=alpha,
            config_rank=rank or None,
            rslora=bool(getattr(config, "use_rslora", False)),
            peft=True,
            module_path=name,
        )

    # --- tensors ---------------------------------------------------------------------------------------------
    def add(self, canonical: str, tensor: torch.Tensor, *, trainable: bool = True) -> None:
        """Register ``tensor`` under its canonical name (a parameter, or a buffer when not trainable)."""
        if trainable:
            self.register_parameter(attribute(canonical), nn.Parameter(tensor))
        else:
            self.register_buffer(attribute(canonical), tensor)
        self.canonical.append(canonical)

    def tensors(self) -> dict[str, torch.Tensor]:
        """``{canonical name: tensor}``: what the algorithm module reads (and what a file stores)."""
        return {name: getattr(self, attribute(name)) for name in self.canonical}

    def context(self) -> ScaleContext:
        return self._scale

    def inference(self) -> AdapterModule:
        """The algorithm module over the live tensors (gradients flow through it)."""
        return self.algorithm(self.name, self.tensors(), self.context())

    @property
    def scaling(self) -> float | None:
        """The factor ΔW carries (alpha/r, alpha/√r with rsLoRA), None for methods without one."""
        return None if self.config_alpha is None else self._scale.scale(None, self.rank)

    # --- the weight function ---------------------------------------------------------------------------------
    # Rebuild again in backward instead of keeping weight-sized intermediates.
    recompute: ClassVar[bool] = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training and self.module_dropout and float(torch.rand(())) < self.module_dropout:
            return weight
        if self.recompute and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._adapted, weight, use_reentrant=False)
        return self._adapted(weight)

    def _adapted(self, weight: torch.Tensor) -> torch.Tensor:
        return self.rebuild(weight).to(weight.dtype).contiguous()

    def rebuild(self, weight: torch.Tensor) -> torch.Tensor:
        """W' in the compute dtype (training extras included when in train mode)."""
        return self.inference().apply(weight, 1.0)

    def changes_bias(self) -> bool:
        return False

    def bias_function(self, bias: torch.Tensor) -> torch.Tensor:
        """b' for this layer's bias (only called when ``changes_bias()``)."""
        return self.inference().bias_update(bias, 1.0).to(bias.dtype)

    def layer_forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The adapted layer's output: its own op with ``W'`` (and ``b'``)."""
        bias = getattr(layer, "bias", None)
        if bias is not None and self.changes_bias():
            bias = self.bias_function(bias)
        return functional_forward(layer, x, self(layer.weight), bias)

    # --- saving ----------------------------------------------------------------------------------------------
    def lycoris_tensors(self) -> dict[str, torch.Tensor]:
        """Canonical tensors as a LyCORIS/kohya file stores them (alpha folded so readers get the same W').
        PEFT-variant modules (``saves_as_peft``) are saved from ``tensors()`` under PEFT names instead."""
        raise NotImplementedError

    def peft_module(self, module: AdapterModule) -> AdapterModule | None:
        """``module`` (this trainable as saved) in the form PEFT holds it, where that differs from ours; else
        None."""
        return None

    @property
    def saves_as_peft(self) -> bool:
        """Whether the module's math is PEFT's own (input-side OFT/BOFT, PEFT IA3): saved in PEFT form."""
        return getattr(self, "variant", "lycoris") == "peft"

    # --- resuming -------------------------------------------------------------------------------------------
    scale_carriers: tuple[str, ...] = ()  # factors ΔW is linear in: a saved scale that differs is folded here
    aliases: ClassVar[dict[str, str]] = {}  # our name → the name another layout gives the same tensor

    @torch.no_grad()
    def load_from(self, module: AdapterModule) -> None:
        """Take the weights of a loaded adapter module of the same method and shapes; a different saved scale
        (``alpha/r`` of the file vs ours) is folded into ``scale_carriers`` so ΔW is unchanged."""
        for name in self.canonical:
            target = getattr(self, attribute(name))
            if name == "alpha" or not target.is_floating_point() or not isinstance(target, nn.Parameter):
                continue
            source = module.params.get(name, module.params.get(self.aliases.get(name, "")))
            if source is None or source.numel() != target.numel():
                have = {k: list(v.shape) for k, v in module.params.items()}
                raise ValueError(
                    f"{self.name}: cannot resume {name} {list(target.shape)} from {have}; "
                    "the adapter was trained with another method, rank or shape"
                )
            target.copy_(source.reshape(target.shape))
        saved, ours = module.scale_value(), self.scaling
        if saved is not None and ours and saved != ours:
            for name in self.scale_carriers:
                getattr(self, attribute(name)).mul_(saved / ours)

    # --- ComfyUI's weight-wrapper interface ------------------------------------------------------------------
    def passive_memory_usage(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def move_to(self, device) -> int:
        self.to(device)
        return self.passive_memory_usage()


class AdditiveTrainable(Trainable):
    """``W' = W + ΔW`` (or DoRA's law) with ΔW from the algorithm's ``delta``, rank dropout on its rows.

    The algorithm sees the scaling folded into the first scale carrier (a small factor) and a scale of 1, which
    gives the same ΔW without a weight-sized multiplication. With ``fused`` (no DoRA, no rank dropout at work) ΔW is
    never formed: a copy of W gets the algorithm's own in-place row update (``add_rows_``: LoRA ``addmm_``,
    differentiable in the factors). LoHa and LoKr build W' as single autograd nodes of their own (``fused.py``)."""

    fused: ClassVar[bool] = False

    def inference(self):
        scale = self.scaling
        if scale is None or scale == 1.0 or not self.scale_carriers:
            return super().inference()
        tensors = self.tensors()
        tensors[self.scale_carriers[0]] = tensors[self.scale_carriers[0]] * scale
        return self.algorithm(
            self.name,
            tensors,
            ScaleContext(file=self.name, config_alpha=1.0, config_rank=1, peft=True, module_path=self.name),
        )

    def rebuild(self, weight):
        module = self.inference()
        dtype = compute_dtype(weight)
        if self.fused and not module.dora and not (self.training and self.rank_dropout):
            work = weight.to(dtype, copy=True)
            module.add_rows_(
                work.view(work.shape[0], -1),
                slice(0, work.shape[0]),
                module.factors(weight.shape, weight.device, dtype),
                1.0,
            )
            return work
        return module.combine(weight.to(dtype), self._delta(module, weight.shape, weight.device, dtype), 1.0)

    def layer_forward(self, layer, x):
        """Bypass form where the algorithm has one and nothing needs ΔW itself (no DoRA, no rank dropout at work):
        ``y = layer(x) + ΔW ⋆ dropout(x) + Δb`` (``lyco_core.bypass``; only LoRA has an input dropout)."""
        call = layer_call(layer)
        module = self.inference()
        if call is None or not module.bypassable() or (self.training and self.rank_dropout):
            return super().layer_forward(layer, x)
        base = functional_forward(layer, x, layer.weight, layer.bias)
        if self.training and self.module_dropout and float(torch.rand(())) < self.module_dropout:
            return base
        dropout = getattr(self, "dropout", None)
        return base + module.bypass_delta(x if dropout is None else dropout(x), call, 1.0).to(base.dtype)

    def _delta(self, module, shape, device, dtype) -> torch.Tensor:
        delta = module.delta(shape, device, dtype)
        if self.training and self.rank_dropout:
            delta = delta * row_mask(delta.shape[0], self.rank_dropout, self.rank_dropout_rescales, delta)
        return delta

    def lycoris_alpha(self) -> torch.Tensor:
        """The alpha tensor whose ``alpha/r`` (r read from the factors) equals the trained scaling."""
        return torch.tensor(float(self.scaling) * self.rank)
