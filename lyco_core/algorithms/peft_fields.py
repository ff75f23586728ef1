"""What the method files share for the ``adapter_config.json`` of their PEFT folders (``peft_config_fields``)."""

from __future__ import annotations

from typing import Any

from .base import PeftFolder


def one_of(values: set, what: str) -> Any:
    """The single value of ``values``; ValueError naming ``what`` when the modules disagree."""
    if len(values) != 1:
        raise ValueError(
            f"PEFT's config has one {what} for every layer (no per-module pattern); these modules have "
            f"{', '.join(sorted(map(str, values)))}"
        )
    return next(iter(values))


def lycoris_config_fields(folder: PeftFolder) -> dict[str, Any]:
    """The fields of PEFT's ``LycorisConfig`` (the base of its LoHa and LoKr configs) besides r and alpha: no
    dropout, PEFT's initialisation, and ``use_effective_conv2d`` as the folder decided it."""
    return {"use_effective_conv2d": folder.tucker, "rank_dropout": 0.0, "module_dropout": 0.0, "init_weights": True}
