"""One file per algorithm. Importing this package imports every module in it, so each ``@register`` class is in
the registry, in the detection order its ``detect_order`` gives (registry.py)."""

import importlib
import pkgutil

from .base import AdapterModule, AdditiveModule, ScaleContext
from .registry import ALGORITHMS, detect, flag_suffixes, known_suffixes, method_labels

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AdapterModule",
    "AdditiveModule",
    "ScaleContext",
    "ALGORITHMS",
    "detect",
    "flag_suffixes",
    "known_suffixes",
    "method_labels",
]
