"""What a file layout supplies: whether it owns a file, how a module's scale is resolved, and which model path
a module name points at (for matching names to weight keys); writers (``write`` in lycoris.py, peft.py,
diffusers.py) return a ``Written`` or refuse the modules the layout cannot hold exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithms.base import ScaleContext
from ..errors import AdapterError


@dataclass(frozen=True)
class ModulePath:
    """Where a module name points: ``path`` inside its model, ``mangled`` if dots were written as ``_``,
    ``hints`` substrings that pick the right sub-model when the path alone is ambiguous, ``component`` the model
    part its spelling names ("" when it names none); both from the naming table (naming.py)."""

    path: str
    mangled: bool
    hints: tuple[str, ...] = ()
    component: str = ""


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

    def checked(self, module):
        """``module`` once it agrees with what the file declares about it (a PEFT config's ``peft_type``); the base
        layouts declare nothing."""
        return module


@dataclass
class Written:
    """An adapter in a layout's spelling: tensors, the PEFT config (PEFT only), metadata the layout needs
    (diffusers' ``lora_adapter_metadata``) and notes on anything folded."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def only_plain_layers(module) -> None:
    """ValueError for a PEFT ``fan_in_fan_out`` module in a layout that has no such flag: its tensors describe the
    transpose of the stored weight (transformers' Conv1D), and a reader of that layout would apply them untransposed."""
    if module.ctx.fan_in_fan_out:
        raise ValueError(
            "its layer stores the weight transposed (PEFT fan_in_fan_out), which only PEFT's layout records"
        )


def refuse(layout: str, problems: dict[str, str], file: str) -> AdapterError:
    """One error naming every module ``layout`` cannot hold exactly, and the routes that can."""
    shown = "; ".join(f"{name}: {why}" for name, why in list(problems.items())[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return AdapterError(
        f"cannot write {len(problems)} module(s) as {layout} exactly — {shown}{more}",
        file=file,
        expected="another layout, or a lossy route: to-lora (with --base for OFT/BOFT/GLoRA/IA3/"
        "DoRA) or a full-diff adapter (merge IN --full)",
    )
