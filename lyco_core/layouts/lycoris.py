"""LyCORIS / kohya layout: ``<prefix>_<module path with '.' written as '_'>.<param>``; alpha is a tensor.

Prefixes: ``lora_unet_`` (UNet/DiT), ``lora_te_``/``lora_te1_``/``lora_te2_``/``lora_te3_`` (text encoders),
``lycoris_`` (generic wrapper, SimpleTuner), ``lora_transformer_`` (OneTrainer), ``oft_unet_`` (kohya OFT),
``lora_prior_unet_``. LyCORIS 2.x may end a name with ``_``. The mangling is not invertible, so names are matched
forward from the model's paths (keymap.py), never split on ``_``.
Reference: docs/formats.md, LyCORIS / kohya layout and Writing.
"""

from __future__ import annotations


from .base import Layout, ModulePath, Written, only_plain_layers, refuse

PREFIX_HINTS = {
    "lora_unet_": ("diffusion_model", "unet"),
    "lora_prior_unet_": ("prior", "diffusion_model"),
    "lora_te1_": ("te1", "clip_l", "text_encoder."),
    "lora_te2_": ("te2", "clip_g", "text_encoder_2"),
    "lora_te3_": ("te3", "t5", "text_encoder_3"),
    "lora_te_": ("te", "clip", "text_encoder", "cond_stage"),
    "lora_transformer_": ("diffusion_model", "transformer"),
    "lycoris_": (),
    "oft_unet_": ("diffusion_model", "unet"),
}


class LycorisLayout(Layout):
    name = "lycoris"

    @staticmethod
    def owns(module_names, config, metadata):
        return True  # the fallback: undotted module names

    def module_path(self, module_name):
        for prefix, hints in PREFIX_HINTS.items():
            if module_name.startswith(prefix):
                return ModulePath(module_name[len(prefix) :].rstrip("_"), True, hints)
        return ModulePath(module_name.rstrip("_"), True)


# --- writing ---------------------------------------------------------------------------------------------------
def write(adapter, targets: dict[str, tuple[str, str]], has_bias: dict[str, bool] | None = None) -> Written:
    """The adapter in LyCORIS/kohya form under ``prefix + path`` names (each module's ``to_lycoris``)."""
    written, problems = Written({}), {}
    for name, module in adapter.modules.items():
        try:
            only_plain_layers(module)
            params, note = module.to_lycoris(None if has_bias is None else has_bias.get(name))
        except ValueError as exc:
            problems[name] = str(exc)
            continue
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in params.items()})
        if note and note not in written.notes:
            written.notes.append(note)
    if problems:
        raise refuse("LyCORIS", problems, adapter.path)
    return written
