"""LyCORIS / kohya layout: ``<prefix>_<module path with '.' written as '_'>.<param>``; alpha is a tensor.

Prefixes (the naming table, naming.py): ``lora_unet_`` (UNet/DiT), ``lora_te_``/``lora_te1_``/``lora_te2_``/
``lora_te3_`` (text encoders), ``lycoris_`` (generic wrapper, SimpleTuner), ``lora_transformer_`` (OneTrainer),
``oft_unet_`` (kohya OFT), ``lora_prior_unet_``. LyCORIS 2.x may end a name with ``_``. The mangling is not
invertible, so names are matched forward from the model's paths (keymap.py), never split on ``_``.
Reference: docs/formats.md, LyCORIS / kohya layout and Writing.
"""

from __future__ import annotations

from ..naming import spelled
from .base import Layout, ModulePath, Written, only_plain_layers, refuse


class LycorisLayout(Layout):
    name = "lycoris"

    @staticmethod
    def owns(module_names, config, metadata):
        return True  # the fallback: undotted module names

    def module_path(self, module_name):
        spelling, rest = spelled("lycoris", module_name)
        if spelling is None:
            return ModulePath(rest.rstrip("_"), True)
        return ModulePath(rest.rstrip("_"), True, spelling.hints, spelling.component)


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
