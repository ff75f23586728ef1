"""What every algorithm module shares: the scale context given by the file layout, validation helpers, and the
two module kinds — additive (``W' = W + m·ΔW``, ΔW independent of W) and weight-dependent (``W' = f(W, m)``).

All math runs in float32 (float64 if the weight is float64) and returns new tensors; callers cast once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import AdapterError
from .dora import lycoris_dora, peft_dora


@dataclass
class ScaleContext:
    """How a module's ``alpha/r`` scale is resolved, decided by the file's layout.

    ``config_alpha``/``config_rank`` come from a PEFT config (after rank/alpha patterns) or diffusers metadata;
    when they are None the module's own ``alpha`` tensor rules (LyCORIS/kohya). ``peft`` selects PEFT's semantics
    (full/full LoKr scaled by alpha/r, DoRA without strength interpolation, OFT/BOFT/IA3 PEFT variants).
    """
    file: str = ""
    config_alpha: float | None = None
    config_rank: int | None = None
    rslora: bool = False
    peft: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    peft_version: tuple[int, ...] | None = None
    module_path: str = ""  # the module's path inside the model (PEFT prefixes removed), for config lookups

    def scale(self, alpha_tensor: torch.Tensor | None, rank: int | None, *, full_matrix: bool = False) -> float:
        """alpha/r (or alpha/√r with rsLoRA) by the layout's rule; 1.0 when the file gives no usable alpha.

        LyCORIS: alpha from the tensor, missing or 0 → 1; LoKr with both halves full → 1 (``full_matrix``).
        PEFT: alpha and r from the config, no full/full exception.
        """
        if self.config_alpha is not None:
            r = self.config_rank or rank
            if not r:
                return 1.0
            return self.config_alpha / (math.sqrt(r) if self.rslora else r)
        if full_matrix or rank is None or alpha_tensor is None:
            return 1.0
        alpha = float(alpha_tensor)
        if alpha == 0.0 or not math.isfinite(alpha):
            return 1.0
        return alpha / rank


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """float64 stays float64, everything else computes in float32."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class AdapterModule:
    """One adapted layer. Subclasses set ``algo`` and implement ``apply`` (or ``delta`` when additive)."""
    algo: ClassVar[str] = ""
    additive: ClassVar[bool] = False

    def __init__(self, name: str, params: dict[str, torch.Tensor], ctx: ScaleContext):
        self.name, self.params, self.ctx = name, params, ctx

    # --- description -------------------------------------------------------------------------------------------
    @property
    def dora(self) -> bool:
        return False

    @property
    def tucker(self) -> bool:
        return False

    def rank(self) -> int | None:
        return None

    def alpha(self) -> float | None:
        tensor = self.params.get("alpha")
        return float(tensor) if tensor is not None else None

    def scale_value(self) -> float | None:
        return None

    def summary(self) -> dict[str, Any]:
        """Method, rank, alpha, scale, Tucker, DoRA axis and parameter shapes, as plain data."""
        return {"algo": self.algo, "rank": self.rank(), "alpha": self.alpha(), "scale": self.scale_value(),
                "tucker": self.tucker, "dora": self.dora, "dora_axis": self.dora_axis(),
                "shapes": {k: list(v.shape) for k, v in self.params.items()}}

    def dora_axis(self) -> str | None:
        return None

    # --- math ----------------------------------------------------------------------------------------------------
    def check_target(self, weight_shape: torch.Size, has_bias: bool) -> None:
        """Raise AdapterError if this module cannot apply to a weight of ``weight_shape``."""

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """W' for base ``weight`` at ``strength``, a new tensor in the compute dtype."""
        raise NotImplementedError

    def changes_bias(self) -> bool:
        """Whether ``bias_update`` ever returns a new bias."""
        return False

    def bias_update(self, bias: torch.Tensor, strength: float) -> torch.Tensor | None:
        """b' for base ``bias`` at ``strength`` (compute dtype), or None when the bias stays."""
        return None

    # --- helpers ------------------------------------------------------------------------------------------------
    def fail(self, problem: str, key: str | None = None, expected: str | None = None) -> AdapterError:
        return AdapterError(problem, file=self.ctx.file, module=self.name, key=key, expected=expected)

    def tensor(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        """A parameter as a compute-dtype tensor on the weight's device."""
        return self.params[key].to(device=weight.device, dtype=compute_dtype(weight))


class AdditiveModule(AdapterModule):
    """``W' = W + m·ΔW`` (and ``b' = b + m·Δb``); ΔW does not depend on W. DoRA, when present, rescales per its law."""
    additive = True

    def delta(self, weight_shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """ΔW including alpha/r, shaped like the weight."""
        raise NotImplementedError

    def bias_delta(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        return None

    def apply(self, weight, strength):
        dtype = compute_dtype(weight)
        delta = self.delta(weight.shape, weight.device, dtype)
        base = weight.to(dtype)
        if "magnitude" in self.params:
            return peft_dora(base, delta, strength, self.tensor("magnitude", weight))
        if "dora_scale" in self.params:
            return lycoris_dora(base, delta, strength, self.tensor("dora_scale", weight))
        return base + strength * delta

    def changes_bias(self):
        return self.bias_delta(torch.device("cpu"), torch.float32) is not None

    def bias_update(self, bias, strength):
        bias_delta = self.bias_delta(bias.device, compute_dtype(bias))
        return None if bias_delta is None else bias.to(bias_delta.dtype) + strength * bias_delta

    @property
    def dora(self) -> bool:
        return "dora_scale" in self.params or "magnitude" in self.params

    def dora_axis(self) -> str | None:
        if "magnitude" in self.params:
            return "out"
        scale = self.params.get("dora_scale")
        if scale is None:
            return None
        return "in" if scale.shape[0] == 1 and scale.numel() > 1 else "out"


def reshape_to(delta: torch.Tensor, weight_shape: torch.Size, module: AdapterModule, what: str) -> torch.Tensor:
    """Reshape a rebuilt delta to the weight's shape, or raise naming both shapes."""
    if delta.numel() != math.prod(weight_shape):
        raise module.fail(f"{what} rebuilds to {list(delta.shape)} ({delta.numel()} values), which does not fit "
                          f"the target weight {list(weight_shape)}", expected="an adapter made for this layer")
    return delta.reshape(weight_shape)


def flat2(t: torch.Tensor) -> torch.Tensor:
    """``t.reshape(t.shape[0], -1)``."""
    return t.reshape(t.shape[0], -1)


def tucker_rebuild(core: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``T[o,i,…] = Σ_{p,q} core[p,q,…]·left[p,o]·right[q,i]`` (left ``(r,out)``, right ``(r,in)``), contiguous."""
    return torch.einsum("pq...,po,qi->oi...", core, left, right).contiguous()


def require(module: AdapterModule, keys: tuple[str, ...]) -> None:
    """Raise naming the first missing partner tensor among ``keys``."""
    for key in keys:
        if key not in module.params:
            present = ", ".join(sorted(module.params))
            raise module.fail(f"missing tensor '{key}' (present: {present})", key=key,
                              expected=f"all of {', '.join(keys)} for {module.algo}")


def check_ndim(module: AdapterModule, key: str, ndims: tuple[int, ...]) -> torch.Tensor:
    tensor = module.params[key]
    if tensor.ndim not in ndims:
        raise module.fail(f"tensor has shape {list(tensor.shape)}", key=key,
                          expected=f"{' or '.join(str(n) for n in ndims)} dimensions")
    return tensor


def check_dim(module: AdapterModule, key: str, dim: int, value: int, meaning: str) -> None:
    tensor = module.params[key]
    if tensor.shape[dim] != value:
        raise module.fail(f"shape {list(tensor.shape)} contradicts {meaning} = {value}", key=key,
                          expected=f"size {value} at dimension {dim}")
