"""What an alias is, and where a sub-model sits among a model's keys."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    """``path`` (dotted, without ``.weight``) is another name of the weight ``key`` or, with ``part`` (i, n), of the
    i-th of n equal blocks of its rows (``blocks`` of them from the i-th on: a layer fused into a bigger weight);
    with ``square_first``, block 0 is the weight's first ``in_features`` rows and the others split the rest equally
    (q, then k and v over grouped K/V heads); with ``transposed``, of its transpose (keymap.WeightSlice)."""

    path: str
    key: str
    part: tuple[int, int] | None = None
    transposed: bool = False
    blocks: int = 1
    square_first: bool = False


def roots(keys: Collection[str], marker: str, partner: str) -> list[str]:
    """The prefixes (``""`` or ending in ``.``) under which ``keys`` (a set) hold both ``marker`` and ``partner``."""
    found = []
    for key in keys:
        if key.endswith(marker):
            root = key[: -len(marker)]
            if (not root or root.endswith(".")) and root + partner in keys:
                found.append(root)
    return found


def weights_under(keys: Collection[str], root: str) -> dict[str, str]:
    """{path below ``root`` without ``.weight``: key} for the weight keys under ``root``."""
    return {key[len(root) : -len(".weight")]: key for key in keys if key.startswith(root) and key.endswith(".weight")}
