"""Layout detection: PEFT (config or ``base_model.model.`` names), diffusers (component prefixes or
``lora_adapter_metadata``), ComfyUI (other dotted names), LyCORIS/kohya (undotted, mangled names).
Reference: docs/formats.md, Reading a file.
"""

from __future__ import annotations

from .comfy import ComfyLayout
from .diffusers import DiffusersLayout
from .lycoris import LycorisLayout
from .peft import PeftLayout

LAYOUTS = [PeftLayout, DiffusersLayout, ComfyLayout, LycorisLayout]


def detect_layout(module_names, config, metadata):
    for layout in LAYOUTS:
        if layout.owns(module_names, config, metadata):
            return layout
    return LycorisLayout
