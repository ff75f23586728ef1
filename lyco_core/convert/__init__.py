"""Transforms of adapters: layout conversion, to-LoRA, resize, merge, extract and bake. Each returns its result
(an Adapter, or a state dict for bake) and a Report; ``lyco_core.save_adapter`` writes adapters."""

from .bake import bake
from .extract import extract
from .layout_convert import LAYOUTS, convert, convert_layout
from .merge import merge
from .report import Report
from .resize import resize
from .svd import RankPolicy
from .to_lora import to_lora

__all__ = [
    "LAYOUTS",
    "RankPolicy",
    "Report",
    "bake",
    "convert",
    "convert_layout",
    "extract",
    "merge",
    "resize",
    "to_lora",
]
