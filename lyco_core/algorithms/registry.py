"""The algorithm registry: each algorithm file registers its module class; detection asks them in order.

The order is each class's ``detect_order``, following LyCORIS' own detection, then PEFT's own forms:

====  ==============================  ====  ==============================
  10  LoRA / LoCon (lora.py)            70  diag-OFT (oft.py)
  20  LoHa (loha.py)                    80  BOFT (boft.py)
  30  (IA)³ (ia3.py)                    90  GLoRA (glora.py)
  40  LoKr (lokr.py)                   100  PEFT OFT (oft_peft.py)
  50  full difference (full.py)        110  PEFT BOFT (boft_peft.py)
  60  norm difference (norm.py)        120  PEFT embedding LoRA (lora_embedding.py)
                                       130  PEFT modules_to_save copy (saved.py)
====  ==============================  ====  ==============================

The parameter sets are disjoint except ``oft_blocks`` (3-D diag-OFT vs 4-D BOFT), which the two classes split by
tensor rank. A new algorithm is one file with a ``@register`` class declaring ``detect_order``, ``suffixes`` and
``claims``, and the records and hooks of AdapterModule that layouts, converters and hosts read.
Reference: docs/methods.md, Detection and Adding a method.
"""

from __future__ import annotations

import torch

from .base import AdapterModule

ALGORITHMS: list[type[AdapterModule]] = []
SHARED_SUFFIXES = ("alpha", "dora_scale", "magnitude")


def register(cls: type[AdapterModule]) -> type[AdapterModule]:
    """Add ``cls`` to ``ALGORITHMS``, kept sorted by ``detect_order`` (two classes may not share one)."""
    taken = [other for other in ALGORITHMS if other.detect_order == cls.detect_order]
    if taken:
        raise ValueError(f"{cls.__name__} and {taken[0].__name__} share detect_order {cls.detect_order}")
    ALGORITHMS.append(cls)
    ALGORITHMS.sort(key=lambda c: c.detect_order)
    return cls


def known_suffixes() -> set[str]:
    """Every canonical parameter name some algorithm reads (after the layout normalised spellings)."""
    names = set(SHARED_SUFFIXES)
    for cls in ALGORITHMS:
        names.update(cls.suffixes)
    return names


def method_labels() -> dict[str, str]:
    """{algo: the method's name as people write it} for every algorithm."""
    return {cls.algo: cls.label or cls.algo for cls in ALGORITHMS}


def flag_suffixes() -> set[str]:
    """The canonical names stored as one number of any dtype: ``alpha`` and every algorithm's ``flags``."""
    return {"alpha", *(flag for cls in ALGORITHMS for flag in cls.flags)}


def detect(params: dict[str, torch.Tensor], layout: str | None = None) -> type[AdapterModule] | None:
    """The first registered class that claims this parameter set, or None. A class with ``layouts`` (e.g. PEFT's
    whole-module copies, a bare ``weight``) claims only in those layouts."""
    for cls in ALGORITHMS:
        if cls.claims(params) and layout in getattr(cls, "layouts", (layout,)):
            return cls
    return None
