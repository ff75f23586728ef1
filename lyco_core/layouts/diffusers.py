"""diffusers-in-PEFT layout (``save_lora_weights``): keys ``unet.<path>.lora_A.weight`` (``transformer.`` for DiT
pipelines, ``text_encoder.``/``text_encoder_2.`` for text encoders). Each component's LoraConfig is JSON in the
safetensors metadata ``lora_adapter_metadata``, flattened as ``<component>.<field>``; without it the scale is 1
(alpha = r) unless per-module ``alpha`` tensors exist (kohya-converted files).
Reference: docs/formats.md, diffusers files.
"""

from __future__ import annotations

import json

from ..algorithms.base import PeftFolder, ScaleContext
from ..naming import prefixes, spelled
from .base import Layout, ModulePath, Written, only_plain_layers, refuse
from .keys import layer_path
from .peft import rank_alpha_fields, scale_context

METADATA_KEY = "lora_adapter_metadata"


def component_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """{component: LoraConfig dict} from ``lora_adapter_metadata``."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    configs: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {"peft_type": "LORA"})[field] = value
    return configs


class DiffusersLayout(Layout):
    name = "diffusers"

    @staticmethod
    def owns(module_names, config, metadata):
        if config is not None or not module_names:
            return False
        return METADATA_KEY in metadata or all(name.startswith(prefixes("diffusers")) for name in module_names)

    def __init__(self, file, config, metadata):
        super().__init__(file, config, metadata)
        self.configs = component_configs(metadata)

    def module_path(self, module_name):
        spelling, rest = spelled("diffusers", module_name)
        if spelling is None:
            return ModulePath(layer_path(rest), False)
        return ModulePath(layer_path(rest), False, spelling.hints, spelling.component)

    def context(self, module_name, params):
        spelling, path = spelled("diffusers", module_name)
        config = self.configs.get(spelling.prefix[:-1] if spelling else "")
        if config is None or "alpha" in params:
            return ScaleContext(file=self.file, peft=True, module_path=path)
        return scale_context(self.file, config, path)


# --- writing ---------------------------------------------------------------------------------------------------
def write(adapter, targets: dict[str, tuple[str, str]], has_bias: dict[str, bool] | None = None) -> Written:
    """``<component>.<path>.lora_A/B.weight`` (+ ``lora_magnitude_vector``) and, per component, its LoraConfig
    flattened into ``lora_adapter_metadata`` (r, lora_alpha and patterns giving every module its exact scale).
    diffusers loads LoRA/LoCon (and DoRA) only."""
    written, problems = Written({}), {}
    configs: dict[str, dict] = {}
    for name, module in adapter.modules.items():
        try:
            if not module.diffusers_loads:
                raise ValueError(f"diffusers loads LoRA only, this module is {module.algo}")
            only_plain_layers(module)
            params, rank, alpha = module.to_peft(None if has_bias is None else has_bias.get(name), PeftFolder())
        except ValueError as exc:
            problems[name] = str(exc)
            continue
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in params.items()})
        config = configs.setdefault(prefix[:-1], {"entries": {}, "dora": False, "bias": False})
        config["entries"][path] = (rank, alpha)
        config["dora"] |= "lora_magnitude_vector" in params
        config["bias"] |= "lora_B.bias" in params
    if problems:
        raise refuse("diffusers", problems, adapter.path)
    flat: dict[str, object] = {}
    for component, config in configs.items():
        fields = {
            "peft_type": "LORA",
            "target_modules": sorted(config["entries"]),
            "use_dora": config["dora"],
            "use_rslora": False,
            "lora_bias": config["bias"],
            **rank_alpha_fields(config["entries"], "lora_alpha"),
        }
        flat.update({f"{component}.{k}": v for k, v in fields.items()})
    written.metadata[METADATA_KEY] = json.dumps(flat, indent=2, sort_keys=True)
    return written
