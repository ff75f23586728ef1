"""Trainable LoRA (Linear, Conv, Embedding; DoRA; rsLoRA) and the balanced Conv2d decomposition.

LoRA: ``ΔW = s·reshape(flat(up) @ flat(down), W.shape)``, ``s = alpha/r`` (``alpha/√r`` with rsLoRA); up 0 at init.
Outside DoRA a wrapped layer runs the bypass form, ``y = layer(x) + s·up(down(dropout(x)))`` (PEFT's forward, with
``lora_dropout`` on the input); DoRA uses the weight form ``W' = ‖W‖_row·(W+ΔW)/‖W+ΔW‖_row``.

Balanced Conv2d (k×k, groups 1): ``ΔW[o,i,h,w] = s·Σ_p U[o,p,h]·V[p,i,w]`` — rank r in the ``(out·kh)×(in·kw)``
matricisation — run as ``x → conv(V as (r,in,1,kw)) → conv(U as (out,r,kh,1))`` (the padding, stride and dilation
of width go to the first, of height to the second). It is the LoCon of rank ``r·kh`` with
``up[o, p·kh+h] = U[o,p,h]`` and ``down[p·kh+h, i, h', w] = V[p,i,w]·[h = h']``, which is how it is saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...algorithms.base import compute_dtype
from ...algorithms.lora import LoRA
from ...algorithms.lora_embedding import EmbeddingLoRA
from ..config import (
    AdapterConfig,
    Node,
    alpha_option,
    alpha_pattern_option,
    dropout_option,
    option,
    rank_option,
    rank_pattern_option,
)
from .base import AdditiveTrainable, Trainable, functional_forward, kaiming_, trainable


@dataclass
class LoraConfig(AdapterConfig):
    """LoRA: ``ΔW = s·B@A`` with ``s = lora_alpha/r`` (``/√r`` with ``use_rslora``); DoRA with ``use_dora``.

    ``lora_dropout`` drops input features of the adapter branch (PEFT; only where the layer runs the bypass form,
    i.e. under ``wrap`` — a host that applies adapters to the weight has no branch to drop from);
    ``init_lora_weights`` True: A kaiming, B 0,
    ``"gaussian"``: A ~ N(0, 1/r), B 0, False: both random. ``conv_decomposition="balanced"`` factors a k×k Conv2d
    as ``(out·kh) × (in·kw)`` (rank r) and runs it as a ``1×kw`` then a ``kh×1`` convolution; saved as the exact
    rank ``r·kh`` LoCon. nn.Embedding layers get an embedding LoRA (``ΔW = s·B@A`` on the table).
    """

    method: ClassVar[str] = "lora"
    peft_type: ClassVar[str] = "LORA"
    node: ClassVar[Node] = Node(
        "LyCOLoRAConfig",
        "LoRA Config",
        "LoRA / LoCon (DoRA, rsLoRA, balanced conv) with PEFT's LoraConfig fields.",
        (
            "r",
            "lora_alpha",
            "lora_dropout",
            "use_rslora",
            "use_dora",
            "init_lora_weights",
            "conv_decomposition",
            "rank_pattern",
            "alpha_pattern",
        ),
        position=10,
    )
    r: int = rank_option()
    lora_alpha: float = alpha_option()
    lora_dropout: float = dropout_option(
        "Dropout on the adapter's input features (training only). Acts where the layer runs the LoRA as a branch "
        "(lyco_core.wrap); ComfyUI's trainer applies adapters to the weight, where it has no effect."
    )
    use_rslora: bool = option(False, tooltip="Scale by alpha/√r instead of alpha/r.")
    use_dora: bool = option(False, tooltip="DoRA: learn each output row's magnitude separately from its direction.")
    init_lora_weights: Union[bool, str] = option(
        True,
        kind="flag",
        choices=["true", "gaussian", "false"],
        tooltip="true: down kaiming, up 0 (no change at start); gaussian: down N(0, 1/r); "
        "false: both random (changes the model at step 0).",
    )
    rank_pattern: dict = rank_pattern_option()
    alpha_pattern: dict = alpha_pattern_option()
    conv_decomposition: str = option(
        "standard",
        choices=["standard", "balanced"],
        ours=True,
        tooltip="balanced: a k×k conv is factored as (out·kh)×(in·kw) and runs as a 1×kw then a kh×1 convolution "
        "(saved as the equivalent rank r·kh LoCon).",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.conv_decomposition not in ("standard", "balanced"):
            raise ValueError(f"conv_decomposition must be 'standard' or 'balanced', got {self.conv_decomposition!r}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError(f"init_lora_weights must be True, False or 'gaussian', got {self.init_lora_weights!r}")

    def alpha_value(self):
        return float(self.lora_alpha)


def _init_pair(down: torch.Tensor, up: torch.Tensor, init, rank: int) -> None:
    """PEFT's LoRA init: down kaiming (``"gaussian"``: N(0, 1/r)), up 0; ``False``: both kaiming."""
    if init == "gaussian":
        nn.init.normal_(down, std=1.0 / rank)
    else:
        kaiming_(down)
    if init is False:
        kaiming_(up)
    else:
        nn.init.zeros_(up)


def _balanced(layer: nn.Module, config) -> bool:
    """Whether ``config`` asks for the balanced form and ``layer`` is a plain k×k (k > 1) Conv2d."""
    return (
        getattr(config, "conv_decomposition", None) == "balanced"
        and isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and math.prod(layer.kernel_size) > 1
    )


@trainable
class LoRATrainable(AdditiveTrainable):
    config_class = LoraConfig
    algorithm = LoRA
    scale_carriers = ("lora_up.weight",)
    aliases = {"magnitude": "dora_scale"}
    fused = True
    factor_pairs, needs_rank, grouped_convs, embeddings = 1, True, True, True

    @classmethod
    def factor_count(cls, layer, config, rank):
        if _balanced(layer, config):  # r·(out·kh + in·kw)
            shape = layer.weight.shape
            return rank * (shape[0] * shape[2] + shape[1] * shape[3])
        return super().factor_count(layer, config, rank)

    @classmethod
    def create(cls, name, layer, config, rank, alpha):
        return (BalancedConvLoRA if _balanced(layer, config) else cls)(name, layer, config, rank, alpha)

    def __init__(self, name, layer, config, rank, alpha):
        super().__init__(name, layer, config, rank, alpha)
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        out, rest = self.weight_shape[0], self.weight_shape[1:]
        kernel = (1,) * (len(rest) - 1)
        if self.is_embedding:  # the table (num, dim) = up (num, r) @ down (r, dim); PEFT inits A (= upᵀ) to 0
            if config.use_dora:
                raise ValueError(f"{name}: DoRA on an Embedding is not supported")
            up, down = torch.zeros(out, rank), torch.empty(rank, rest[0])
            nn.init.normal_(down)
            if config.init_lora_weights is False:
                nn.init.normal_(up)
        else:
            down, up = torch.empty(rank, *rest), torch.empty(out, rank, *kernel)
            _init_pair(down, up, config.init_lora_weights, rank)
        self.add("lora_down.weight", down)
        self.add("lora_up.weight", up)
        if config.use_dora:
            weight = layer.weight.detach().to(torch.float32)
            self.add("magnitude", torch.linalg.vector_norm(weight.reshape(out, -1), dim=1))

    def lycoris_tensors(self):
        tensors = {
            "lora_down.weight": self.lora_down_weight,
            "lora_up.weight": self.lora_up_weight,
            "alpha": self.lycoris_alpha(),
        }
        if "magnitude" in self.canonical:
            tensors["dora_scale"] = self.magnitude.reshape(-1, *[1] * (len(self.weight_shape) - 1))
        return tensors

    def peft_module(self, module):
        """An embedding LoRA as PEFT's: ``lora_embedding_A = upᵀ``, ``lora_embedding_B = downᵀ``."""
        if not self.is_embedding:
            return None
        params = module.params
        tensors = {
            "lora_embedding_A": params["lora_up.weight"].t(),
            "lora_embedding_B": params["lora_down.weight"].t(),
            "alpha": params["alpha"],
        }
        return EmbeddingLoRA(module.name, tensors, module.ctx)


class BalancedConvLoRA(AdditiveTrainable):
    """Conv2d LoRA of rank r in the (out·kh)×(in·kw) matricisation (see the module docstring)."""

    config_class = LoraConfig
    algorithm = LoRA

    def __init__(self, name, layer, config, rank, alpha):
        super().__init__(name, layer, config, rank, alpha)
        out, cin, kh, kw = self.weight_shape
        down, up = torch.empty(rank, cin, 1, kw), torch.empty(out, rank, kh, 1)
        _init_pair(down, up, config.init_lora_weights, rank)
        self.add("balanced_down", down)
        self.add("balanced_up", up)

    def rebuild(self, weight):
        dtype = compute_dtype(weight)
        return weight.to(dtype) + self.composed_delta().to(weight.device, dtype)

    def composed_delta(self) -> torch.Tensor:
        """``s·Σ_p U[o,p,h]·V[p,i,w]`` as an ``(out, in, kh, kw)`` weight."""
        return torch.einsum("oph,piw->oihw", self.balanced_up[..., 0], self.balanced_down[:, :, 0]) * self.scaling

    def layer_forward(self, layer, x):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return Trainable.layer_forward(self, layer, x)  # the composed weight (no algorithm bypass for this form)
        base = functional_forward(layer, x, layer.weight, layer.bias)
        if self.training and self.module_dropout and float(torch.rand(())) < self.module_dropout:
            return base
        (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
        hidden = F.conv2d(x.to(self.balanced_down.dtype), self.balanced_down, None, (1, sw), (0, pw), (1, dw))
        branch = F.conv2d(hidden, self.balanced_up, None, (sh, 1), (ph, 0), (dh, 1))
        return base + (branch * self.scaling).to(base.dtype)

    @torch.no_grad()
    def load_from(self, module):
        """From the rank-``r·kh`` LoCon this saves as: ``U[o,p,h] = up[o, p·kh+h]``,
        ``V[p,i,w] = down[p·kh, i, 0, w]``."""
        out, cin, kh, kw = self.weight_shape
        up, down = module.params.get("lora_up.weight"), module.params.get("lora_down.weight")
        if up is None or down is None or down.shape != (self.rank * kh, cin, kh, kw):
            raise ValueError(
                f"{self.name}: cannot resume a balanced conv of rank {self.rank} from "
                f"{ {k: list(v.shape) for k, v in module.params.items()} }"
            )
        self.balanced_up.copy_(up.reshape(out, self.rank, kh, 1) * (module.scale_value() / self.scaling))
        self.balanced_down.copy_(down.reshape(self.rank, kh, cin, kh, kw)[:, 0, :, 0, :].unsqueeze(2))

    def locon_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up ``(out, r·kh, 1, 1)``, down ``(r·kh, in, kh, kw)``): the same ΔW as a rank-``r·kh`` LoCon."""
        out, cin, kh, kw = self.weight_shape
        up = self.balanced_up.detach()  # (out, r, kh, 1)
        down = self.balanced_down.detach()  # (r, in, 1, kw)
        eye = torch.eye(kh, dtype=down.dtype, device=down.device)
        full_down = torch.einsum("piw,hg->phigw", down[:, :, 0], eye).reshape(self.rank * kh, cin, kh, kw)
        return up[..., 0].reshape(out, self.rank * kh, 1, 1), full_down

    def lycoris_tensors(self):
        up, down = self.locon_factors()
        return {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(self.scaling * up.shape[1])}
