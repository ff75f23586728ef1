"""What a file layout supplies: whether it owns a file, how a module's scale is resolved, and which model path
a module name points at (for matching names to weight keys)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..algorithms.base import ScaleContext


@dataclass(frozen=True)
class ModulePath:
    """Where a module name points: ``path`` inside its model, ``mangled`` if dots were written as ``_``,
    ``hints`` substrings that pick the right sub-model when the path alone is ambiguous."""
    path: str
    mangled: bool
    hints: tuple[str, ...] = ()


class Layout:
    name = ""

    @staticmethod
    def owns(module_names: list[str], config: dict[str, Any] | None, metadata: dict[str, str]) -> bool:
        raise NotImplementedError

    def __init__(self, file: str, config: dict[str, Any] | None, metadata: dict[str, str]):
        self.file, self.config, self.metadata = file, config or {}, metadata

    def context(self, module_name: str, params: dict[str, torch.Tensor]) -> ScaleContext:
        """The scale context of one module; LyCORIS rules (alpha tensor) unless a layout overrides."""
        return ScaleContext(file=self.file, module_path=self.module_path(module_name).path)

    def module_path(self, module_name: str) -> ModulePath:
        raise NotImplementedError
