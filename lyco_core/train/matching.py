"""PEFT's rules for module names in a config: which names a target rule matches, and each module's r and alpha
after ``rank_pattern``/``alpha_pattern`` (the layout's ``pattern_value``)."""

from __future__ import annotations

import re

from ..layouts.peft import pattern_value
from .config import AdapterConfig


def name_matches(rule, name: str) -> bool:
    """PEFT's matching: a string must match the whole name as a regex; a list names modules exactly or by a
    dotted suffix."""
    if rule is None:
        return False
    if isinstance(rule, str):
        return re.fullmatch(rule, name) is not None
    return name in rule or any(name.endswith("." + item) for item in rule)


def rank_and_alpha(config: AdapterConfig, name: str) -> tuple[int, float | None]:
    """(r, alpha) of module ``name`` after ``rank_pattern``/``alpha_pattern``."""
    rank = int(pattern_value(getattr(config, "rank_pattern", None), name, getattr(config, "r", 0)))
    alpha = config.alpha_value()
    if alpha is not None:
        alpha = float(pattern_value(getattr(config, "alpha_pattern", None), name, alpha))
    return rank, alpha
