"""One file per naming convention; registry.py picks the one a file uses."""

from .base import Layout, ModulePath
from .keys import split_key
from .registry import LAYOUTS, detect_layout

__all__ = ["Layout", "ModulePath", "split_key", "LAYOUTS", "detect_layout"]
