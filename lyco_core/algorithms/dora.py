"""DoRA (weight-decomposed adaptation) on top of an additive method's ΔW.

LyCORIS (≥ 3.0.0.post1): ``Wc = W + ΔW``; ``n`` = L2 norm of Wc over every dim except the DoRA axis (out: dim 0,
``dora_scale (out,1,…)``; in: dim 1, ``dora_scale (1,in,…)``) plus float32 eps; ``g = dora_scale / n``;
``W' = Wc·(m·(g − 1) + 1)``.

PEFT (``lora_magnitude_vector``): ``Wc = W + m·ΔW`` (its ``set_scale`` multiplies the scaling);
``W' = magnitude / ‖Wc‖_row · Wc`` with the norm over every dim except 0 and no eps.

The ``…_factor`` functions give the per-axis rescale of a finished ``Wc``: the plain forms multiply a new ``Wc``
(autograd-safe, used by training), the in-place patch path adds ΔW into the weight and multiplies it in place.
Reference: docs/methods.md, DoRA.
"""

from __future__ import annotations

import torch

_EPS32 = torch.finfo(torch.float32).eps


def _norm_keeping(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """L2 norm over every dimension except ``axis``, kept broadcastable against ``tensor``."""
    dims = tuple(d for d in range(tensor.ndim) if d != axis)
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True)


def lycoris_factor(combined: torch.Tensor, strength: float, dora_scale: torch.Tensor) -> torch.Tensor:
    """``m·(dora_scale/‖Wc‖ − 1) + 1``, broadcastable against ``Wc``; the axis follows ``dora_scale``'s shape."""
    axis = 1 if dora_scale.shape[0] == 1 and dora_scale.numel() > 1 else 0
    scale = dora_scale.reshape([-1 if d == axis else 1 for d in range(combined.ndim)])
    gain = scale / (_norm_keeping(combined, axis) + _EPS32)
    return strength * (gain - 1) + 1


def peft_factor(combined: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``magnitude/‖Wc‖_row``, broadcastable against ``Wc``."""
    return magnitude.reshape([-1] + [1] * (combined.ndim - 1)) / _norm_keeping(combined, 0)


def lycoris_dora(base: torch.Tensor, delta: torch.Tensor, strength: float, dora_scale: torch.Tensor) -> torch.Tensor:
    """``(W+ΔW)·(m·(dora_scale/‖W+ΔW‖ − 1) + 1)`` as a new tensor (autograd-safe)."""
    combined = base + delta
    return combined * lycoris_factor(combined, strength, dora_scale)


def peft_dora(base: torch.Tensor, delta: torch.Tensor, strength: float, magnitude: torch.Tensor) -> torch.Tensor:
    """``magnitude/‖W + m·ΔW‖_row · (W + m·ΔW)`` as a new tensor (autograd-safe)."""
    combined = base + strength * delta
    return combined * peft_factor(combined, magnitude)
