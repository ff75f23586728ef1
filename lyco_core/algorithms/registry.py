"""The algorithm registry: each algorithm file registers its module class; detection asks them in order.

Order follows LyCORIS' own detection (LoCon, LoHa, IA3, LoKr, full, norm, OFT, BOFT, GLoRA); the parameter sets are
disjoint except ``oft_blocks`` (3-D diag-OFT vs 4-D BOFT), which the two classes split by tensor rank.
A new algorithm is one file with a ``@register`` class declaring ``suffixes`` and ``claims``.
Reference: docs/methods.md, Detection.
"""

from __future__ import annotations

import torch

from .base import AdapterModule

ALGORITHMS: list[type[AdapterModule]] = []
SHARED_SUFFIXES = ("alpha", "dora_scale", "magnitude")


def register(cls: type[AdapterModule]) -> type[AdapterModule]:
    ALGORITHMS.append(cls)
    return cls


def known_suffixes() -> set[str]:
    """Every canonical parameter name some algorithm reads (after the layout normalised spellings)."""
    names = set(SHARED_SUFFIXES)
    for cls in ALGORITHMS:
        names.update(cls.suffixes)
    return names


def detect(params: dict[str, torch.Tensor], layout: str | None = None) -> type[AdapterModule] | None:
    """The first registered class that claims this parameter set, or None. A class with ``layouts`` (e.g. PEFT's
    whole-module copies, a bare ``weight``) claims only in those layouts."""
    for cls in ALGORITHMS:
        if cls.claims(params) and layout in getattr(cls, "layouts", (layout,)):
            return cls
    return None
