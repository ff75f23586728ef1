"""ComfyUI layout: dotted module paths (``diffusion_model.<ldm path>``, ComfyUI-trainer output with 2-D conv
factors, bare model paths, old diffusers attention-processor LoRAs: ``keys.layer_path``) with any LoRA spelling
ComfyUI accepts; alpha as a tensor when present.
Reference: docs/formats.md, ComfyUI layout.
"""

from __future__ import annotations

from .base import Layout, ModulePath
from .keys import layer_path

_HINTED_PREFIXES = {
    "diffusion_model.": ("diffusion_model",),
    "model.diffusion_model.": ("diffusion_model",),
    "text_encoders.": ("text_encoders", "clip", "cond_stage"),
}


class ComfyLayout(Layout):
    name = "comfy"

    @staticmethod
    def owns(module_names, config, metadata):
        return any("." in name for name in module_names)

    def module_path(self, module_name):
        for prefix, hints in _HINTED_PREFIXES.items():
            if module_name.startswith(prefix):
                return ModulePath(layer_path(module_name[len(prefix) :]), False, hints)
        return ModulePath(layer_path(module_name), False)
