"""ComfyUI layout: dotted module paths (``diffusion_model.<ldm path>``, ComfyUI-trainer output with 2-D conv
factors, bare model paths, old diffusers attention-processor LoRAs: ``keys.layer_path``) with any LoRA spelling
ComfyUI accepts; alpha as a tensor when present.
Reference: docs/formats.md, ComfyUI layout.
"""

from __future__ import annotations

from ..naming import spelled
from .base import Layout, ModulePath
from .keys import layer_path


class ComfyLayout(Layout):
    name = "comfy"

    @staticmethod
    def owns(module_names, config, metadata):
        return any("." in name for name in module_names)

    def module_path(self, module_name):
        spelling, rest = spelled("comfy", module_name)
        if spelling is None:
            return ModulePath(layer_path(rest), False)
        return ModulePath(layer_path(rest), False, spelling.hints, spelling.component)
