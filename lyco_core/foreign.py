"""Files that are not adapters of ours but have a recognisable shape: a refusal names what the file is and where it
goes, instead of only "no adapter module recognised". Each entry: (what it is, test on the tensor keys, what to do).

The tests look at key names only (a header is enough): model checkpoints (``model.diffusion_model.…``, a bare
UNet/DiT state dict), ControlNets, VAEs, textual-inversion embeddings, cloneofsimo's early ``lora`` format
(``<target>:<index>:up``) and MLX LoRAs (``<layer>.lora_a``/``lora_b``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_CLONEOFSIMO = re.compile(r"^[\w.]+:\d+:(up|down)$")


def _any(keys: Iterable[str], test: Callable[[str], bool]) -> bool:
    return any(test(key) for key in keys)


FORMATS: tuple[tuple[str, Callable[[list[str]], bool], str], ...] = (
    (
        "cloneofsimo's early LoRA format (keys '<target>:<index>:up/down', no module names)",
        lambda keys: _any(keys, _CLONEOFSIMO.match),
        "convert it with the tools of that project (its modules are numbered, not named) to a kohya or diffusers file",
    ),
    (
        "an MLX LoRA (mlx-lm adapters: keys '<layer>.lora_a'/'lora_b', A as (in, r))",
        lambda keys: _any(keys, lambda k: k.endswith((".lora_a", ".lora_b"))),
        "mlx-lm's fuse command (mlx_lm.fuse), or a conversion to PEFT's lora_A/lora_B naming with A transposed",
    ),
    (
        "a textual-inversion embedding",
        lambda keys: set(keys) <= {"emb_params", "string_to_param", "string_to_token", "clip_l", "clip_g", "t5"},
        "ComfyUI's embeddings folder; use it in a prompt as embedding:<name>",
    ),
    (
        "a ControlNet",
        lambda keys: _any(keys, lambda k: k.startswith(("control_model.", "input_hint_block.", "controlnet_"))),
        "ComfyUI's controlnet folder and the Load ControlNet Model node",
    ),
    (
        "a VAE",
        lambda keys: (
            _any(keys, lambda k: k.startswith(("first_stage_model.", "encoder.down.", "decoder.up.")))
            and not _any(keys, lambda k: "diffusion_model." in k)
        ),
        "ComfyUI's vae folder and the Load VAE node",
    ),
    (
        "a model checkpoint or diffusion model (whole weights, not an adapter)",
        lambda keys: _any(
            keys,
            lambda k: (
                k.startswith(("model.diffusion_model.", "diffusion_model.", "double_blocks.", "input_blocks."))
                and k.endswith((".weight", ".bias"))
                and "lora" not in k
            ),
        ),
        "ComfyUI's checkpoints or diffusion_models folder; to keep only its difference from a base model, "
        "extract an adapter (python -m lyco_core extract BASE TUNED)",
    ),
)


def recognise(keys: Iterable[str]) -> tuple[str, str] | None:
    """(what the file is, where it goes) for a file of another known kind, else None."""
    keys = list(keys)
    for what, test, advice in FORMATS:
        if keys and test(keys):
            return what, advice
    return None
