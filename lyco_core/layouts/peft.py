"""PEFT layout: ``adapter_model.safetensors`` + ``adapter_config.json``; keys ``base_model.model.<path>.<param>``
(or ``<path>.<param>`` from ``get_peft_model_state_dict`` on a bare model).

Scale comes from the config: ``r``/``lora_alpha`` (LoRA) or ``r``/``alpha`` (LoHa, LoKr), overridden per module by
``rank_pattern``/``alpha_pattern`` (pattern ``p`` applies to ``path`` when ``re.match(rf"(.*\\.)?({p})$", path)``,
first match wins), ``use_rslora`` → alpha/√r. ``peft_version`` (written since 0.18) selects OFT series coefficients.
"""
from __future__ import annotations

import re
from typing import Any

from ..algorithms.base import ScaleContext
from .base import Layout, ModulePath

PEFT_PREFIX = "base_model.model."
_DEFAULT_ALPHA = {"LORA": 8.0, "LOHA": 8.0, "LOKR": 8.0}


def parse_version(text: Any) -> tuple[int, ...] | None:
    """``"0.18.1.dev0"`` → ``(0, 18, 1)``; None when absent or unreadable."""
    if not text:
        return None
    numbers = []
    for part in str(text).split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers) or None


def pattern_value(patterns: dict[str, Any] | None, path: str, default: Any) -> Any:
    """PEFT's per-module override: the first pattern matching the end of ``path`` at a dot boundary."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default


def scale_context(file: str, config: dict[str, Any], path: str) -> ScaleContext:
    """The PEFT scale rule for the module at ``path`` under ``config``."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    alpha_field = "lora_alpha" if peft_type == "LORA" else "alpha"
    rank = config.get("r")
    alpha = config.get(alpha_field, _DEFAULT_ALPHA.get(peft_type))
    if rank is not None:
        rank = int(pattern_value(config.get("rank_pattern"), path, rank))
    if alpha is not None:
        alpha = float(pattern_value(config.get("alpha_pattern"), path, alpha))
    if rank is None or alpha is None or peft_type not in _DEFAULT_ALPHA:
        alpha = None
    return ScaleContext(file=file, config_alpha=alpha, config_rank=rank, rslora=bool(config.get("use_rslora")),
                        peft=True, config=config, peft_version=parse_version(config.get("peft_version")),
                        module_path=path)


class PeftLayout(Layout):
    name = "peft"

    @staticmethod
    def owns(module_names, config, metadata):
        return config is not None or any(name.startswith(PEFT_PREFIX) for name in module_names)

    def module_path(self, module_name):
        if module_name.startswith(PEFT_PREFIX):
            return ModulePath(module_name[len(PEFT_PREFIX):], False)
        return ModulePath(module_name, False)

    def context(self, module_name, params):
        path = self.module_path(module_name).path
        if not self.config:  # a bare PEFT-prefixed file without its config: alpha = r
            return ScaleContext(file=self.file, peft=True, module_path=path)
        return scale_context(self.file, self.config, path)
