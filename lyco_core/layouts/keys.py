"""Splitting tensor keys into (module name as written, canonical parameter name).

Canonical names are the LyCORIS/kohya ones each algorithm reads. Other spellings of the LoRA triple that ComfyUI
accepts are renamed here: PEFT ``lora_A/lora_B`` (with or without ``.weight``, ``.default``), ``.lora.up``,
``_lora.up``, ``.lora_linear_layer.up``; PEFT ``lora_magnitude_vector`` becomes ``magnitude``. B/up is always the
``(out, r)`` factor.
Reference: docs/formats.md, Parameter spellings.
"""

from __future__ import annotations

import re

# (spelling as it ends the key, canonical parameter); the separator before the spelling is part of it.
_SPELLINGS = [
    (".lora_B.default.weight", "lora_up.weight"),
    (".lora_A.default.weight", "lora_down.weight"),
    (".lora_linear_layer.up.weight", "lora_up.weight"),
    (".lora_linear_layer.down.weight", "lora_down.weight"),
    (".lora.up.weight", "lora_up.weight"),
    (".lora.down.weight", "lora_down.weight"),
    ("_lora.up.weight", "lora_up.weight"),
    ("_lora.down.weight", "lora_down.weight"),
    (".lora_B.weight", "lora_up.weight"),
    (".lora_A.weight", "lora_down.weight"),
    (".lora_B.bias", "lora_up.bias"),
    (".lora_B", "lora_up.weight"),
    (".lora_A", "lora_down.weight"),
    (".lora_magnitude_vector.weight", "magnitude"),
    (".lora_magnitude_vector", "magnitude"),
]


def split_key(key: str, canonical: set[str]) -> tuple[str, str] | None:
    """(module, parameter) for a key ending in a known spelling or ``.<canonical>``; None if it ends in neither.

    The longest match wins, so ``x.lora_up.weight`` is LoRA's ``lora_up.weight``, not IA3's ``weight``.
    """
    for spelling, param in _SPELLINGS:
        if key.endswith(spelling) and len(key) > len(spelling):
            return key[: -len(spelling)], param
    dot = key.find(".", 1)  # the leftmost dot with a non-empty module before it gives the longest parameter
    while dot != -1:
        if key[dot + 1 :] in canonical:
            return key[:dot], key[dot + 1 :]
        dot = key.find(".", dot + 1)
    return None


# Old diffusers attention-processor LoRAs (``LoRAAttnProcessor``, saved by ``save_attn_procs``) name the processor
# that wraps the layer: ``<attention>.processor.to_k_lora.down.weight``.
_PROCESSOR_LAYERS = (
    (re.compile(r"\.processor\.to_out$"), ".to_out.0"),
    (re.compile(r"\.processor\.(to_[qkv])$"), r".\1"),
)


def layer_path(path: str) -> str:
    """The model path of a dotted module path as written: an attention processor's ``<attention>.processor.to_q``
    (``to_k``, ``to_v``) is the layer ``<attention>.to_q``, its ``<attention>.processor.to_out`` the layer
    ``<attention>.to_out.0``; any other path is itself."""
    for pattern, layer in _PROCESSOR_LAYERS:
        path = pattern.sub(layer, path)
    return path
