"""One file per algorithm; importing this package registers them all in detection order."""

from . import (
    lora,
    loha,
    ia3,
    lokr,
    full,
    norm,
    oft,
    boft,
    glora,
    oft_peft,
    boft_peft,  # noqa: F401  (registration)
    lora_embedding,
    saved,
)
from .base import AdapterModule, AdditiveModule, ScaleContext
from .registry import ALGORITHMS, detect, known_suffixes

__all__ = ["AdapterModule", "AdditiveModule", "ScaleContext", "ALGORITHMS", "detect", "known_suffixes"]
