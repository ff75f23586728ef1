"""DoRA (weight-decomposed adaptation) on top of an additive method's ΔW.

LyCORIS (≥ 3.0.0.post1): ``Wc = W + ΔW``; ``n`` = L2 norm of Wc over every dim except the DoRA axis (out: dim 0,
``dora_scale (out,1,…)``; in: dim 1, ``dora_scale (1,in,…)``) plus float32 eps; ``g = dora_scale / n``;
``W' = Wc·(m·(g − 1) + 1)``.

PEFT (``lora_magnitude_vector``): ``Wc = W + m·ΔW`` (its ``set_scale`` multiplies the scaling);
``W' = magnitude / ‖Wc‖_row · Wc`` with the norm over every dim except 0 and no eps.
"""
from __future__ import annotations

import torch

_EPS32 = torch.finfo(torch.float32).eps


def _norm_keeping(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """L2 norm over every dimension except ``axis``, kept broadcastable against ``tensor``."""
    dims = tuple(d for d in range(tensor.ndim) if d != axis)
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True)


def lycoris_dora(base: torch.Tensor, delta: torch.Tensor, strength: float, dora_scale: torch.Tensor) -> torch.Tensor:
    """``(W+ΔW)·(m·(dora_scale/‖W+ΔW‖ − 1) + 1)``; the axis follows ``dora_scale``'s shape."""
    combined = base + delta
    axis = 1 if dora_scale.shape[0] == 1 and dora_scale.numel() > 1 else 0
    scale = dora_scale.reshape([-1 if d == axis else 1 for d in range(combined.ndim)])
    gain = scale / (_norm_keeping(combined, axis) + _EPS32)
    return combined * (strength * (gain - 1) + 1)


def peft_dora(base: torch.Tensor, delta: torch.Tensor, strength: float, magnitude: torch.Tensor) -> torch.Tensor:
    """``magnitude/‖W + m·ΔW‖_row · (W + m·ΔW)``."""
    combined = base + strength * delta
    magnitude = magnitude.reshape([-1] + [1] * (combined.ndim - 1))
    return combined * (magnitude / _norm_keeping(combined, 0))
