"""PEFT layout: ``adapter_model.safetensors`` + ``adapter_config.json``; keys ``base_model.model.<path>.<param>``
(or ``<path>.<param>`` from ``get_peft_model_state_dict`` on a bare model).

Scale comes from the config: ``r`` and the method's alpha field (its ``peft_alpha``: ``lora_alpha`` for LoRA,
``alpha`` for LoHa and LoKr), overridden per module by ``rank_pattern``/``alpha_pattern`` (pattern ``p`` applies to
``path`` when ``re.match(rf"(.*\\.)?({p})$", path)``, first match wins), ``use_rslora`` → alpha/√r. ``peft_version``
(written since 0.18) selects OFT series coefficients. ``modules_to_save`` copies are ``<path>.weight``/``.bias``
(read as ``saved``); embedding LoRA is ``lora_embedding_A (r, num)``/``lora_embedding_B (dim, r)``. ``write``
produces all of these (see its docstring).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any


from ..algorithms import ALGORITHMS, AdapterModule
from ..algorithms.base import ScaleContext
from ..algorithms.peft_fields import one_of
from ..errors import AdapterError
from ..naming import PEFT_PREFIX, spelled
from .base import Layout, ModulePath, Written, only_plain_layers, refuse
from .peft_config import checked_config

# the peft_type of a config that names none, and of a folder whose modules decide no method (dense differences only)
_DEFAULT_PEFT_TYPE = "LORA"


def _peft_methods() -> dict[str, type[AdapterModule]]:
    """Each PEFT method we apply exactly, by our algo name, in detection order → the class whose records and hooks
    write its folders (the first registered with a ``peft_type``: LoRA, not its embedding form)."""
    methods: dict[str, type[AdapterModule]] = {}
    for cls in ALGORITHMS:
        if cls.peft_type:
            methods.setdefault(cls.algo, cls)
    return methods


_PEFT_METHODS = _peft_methods()
_PEFT_TYPES = {cls.peft_type: cls for cls in _PEFT_METHODS.values()}  # peft_type → the same class


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
    method = _PEFT_TYPES.get(str(config.get("peft_type", _DEFAULT_PEFT_TYPE)).upper())
    rank = config.get("r")
    alpha = None
    if method is not None and method.peft_alpha is not None:
        alpha_field, default = method.peft_alpha
        alpha = config.get(alpha_field, default)
    if rank is not None:
        rank = int(pattern_value(config.get("rank_pattern"), path, rank))
    if alpha is not None:
        alpha = float(pattern_value(config.get("alpha_pattern"), path, alpha))
    if rank is None:
        alpha = None
    return ScaleContext(
        file=file,
        config_alpha=alpha,
        config_rank=rank,
        rslora=bool(config.get("use_rslora")),
        fan_in_fan_out=bool(config.get("fan_in_fan_out")),
        peft=True,
        config=config,
        peft_version=parse_version(config.get("peft_version")),
        module_path=path,
    )


class PeftLayout(Layout):
    name = "peft"

    def __init__(self, file, config, metadata):
        super().__init__(file, checked_config(file, config) if config else config, metadata)

    @staticmethod
    def owns(module_names, config, metadata):
        return config is not None or any(name.startswith(PEFT_PREFIX) for name in module_names)

    def module_path(self, module_name):
        spelling, path = spelled("peft", module_name)
        return ModulePath(path, False, (), spelling.component if spelling else "")

    def checked(self, module):
        """Refuse a module whose tensors contradict the config's ``peft_type`` (LoRA tensors labelled IA3 would take
        another scale rule), and any PEFT method this pack does not apply exactly (AdaLoRA, VeRA, …: read as one of
        ours they would be applied wrong). Whole trained layers go with every method: ``modules_to_save`` copies,
        and the full/norm differences the trainer holds for them before they are written as copies."""
        declared = self.config.get("peft_type")
        if declared is None or module.whole_layer:
            return module
        method = _PEFT_TYPES.get(declared.upper())
        if method is None:
            raise AdapterError(
                f"adapter_config.json declares peft_type {declared[:40]!r}, a PEFT method this pack does not apply",
                file=self.file,
                key="peft_type",
                expected=f"one of {', '.join(_PEFT_TYPES)}",
            )
        if module.algo != method.algo:
            raise AdapterError(
                f"the tensors are {module.algo} but adapter_config.json declares peft_type {declared!r}",
                file=self.file,
                module=module.name,
                expected=f"{method.algo} tensors for peft_type {declared!r}, or the config the file was trained with",
            )
        return module

    def context(self, module_name, params):
        path = self.module_path(module_name).path
        if not self.config:  # a bare PEFT-prefixed file without its config: alpha = r
            return ScaleContext(file=self.file, peft=True, module_path=path)
        return scale_context(self.file, self.config, path)


# --- writing ---------------------------------------------------------------------------------------------------
def rank_alpha_fields(entries: dict[str, tuple[int, float]], alpha_field: str) -> dict[str, Any]:
    """``r``, alpha and the patterns that give every module (path: (r, alpha)) exactly its own pair: the most common
    values as defaults, escaped full paths (longest first, so a path never catches a longer one) for the rest."""

    def common(values):
        return Counter(values).most_common(1)[0][0]

    rank = common(r for r, _ in entries.values())
    alpha = common(a for _, a in entries.values())
    ordered = sorted(entries.items(), key=lambda item: -len(item[0]))
    return {
        "r": rank,
        alpha_field: alpha,
        "rank_pattern": {re.escape(p): r for p, (r, _) in ordered if r != rank},
        "alpha_pattern": {re.escape(p): a for p, (_, a) in ordered if not math.isclose(a, alpha, rel_tol=1e-12)},
    }


def _folder_method(modules, file: str) -> type[AdapterModule]:
    """The class of the one method of a folder's adapted modules; whole layers (dense differences) take that
    method's form (LoRA's if alone), and modules of methods PEFT lacks are refused one by one later."""
    methods = sorted({m.algo for m in modules.values() if not m.whole_layer} & set(_PEFT_METHODS))
    if len(methods) > 1:
        raise refuse(
            "PEFT", {"(all)": f"a PEFT folder holds one method, this adapter mixes {', '.join(methods)}"}, file
        )
    return _PEFT_METHODS[methods[0]] if methods else _PEFT_TYPES[_DEFAULT_PEFT_TYPE]


def write(adapter, targets: dict[str, tuple[str, str]], has_bias: dict[str, bool] | None = None) -> Written:
    """A PEFT folder's tensors (``base_model.model.<path>.<param>``) and its ``adapter_config.json``.

    One method per folder (each module's ``to_peft``, dense differences in the folder's method; the method's own
    config fields from its ``peft_folder``/``peft_config_fields``); whole-module copies (``saved``) under their own
    ``weight``/``bias`` names, listed in ``modules_to_save``."""
    saved = {n: m for n, m in adapter.modules.items() if m.replaces_layer}
    adapted = {n: m for n, m in adapter.modules.items() if n not in saved}
    if not adapted:
        raise refuse("PEFT", {"(all)": "a PEFT folder needs adapted modules besides modules_to_save"}, adapter.path)
    method = _folder_method(adapted, adapter.path)
    folder, problems = method.peft_folder(adapted, any(m.tucker for m in adapted.values()))
    written, entries, placed = Written({}), {}, {}
    for name, module in adapted.items():
        if name in problems:
            continue
        try:
            params, rank, alpha = module.to_peft(None if has_bias is None else has_bias.get(name), folder)
        except ValueError as exc:
            problems[name] = str(exc)
            continue
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in params.items()})
        entries[path], placed[path] = (rank, alpha), module
    if problems:
        raise refuse("PEFT", problems, adapter.path)
    for name, module in saved.items():
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in module.params.items()})
    config: dict[str, Any] = {
        "peft_type": method.peft_type,
        "target_modules": sorted(entries),
        "inference_mode": True,
        "task_type": None,
        "modules_to_save": sorted(targets[n][1] for n in saved) or None,
        "base_model_name_or_path": (adapter.config or {}).get("base_model_name_or_path"),
    }
    try:
        fields, written.notes = method.peft_config_fields(placed, written.tensors, folder)
        config.update(fields)
        if method.peft_fan_in_fan_out:
            config["fan_in_fan_out"] = one_of({m.ctx.fan_in_fan_out for m in adapted.values()}, "fan_in_fan_out")
        else:
            for module in adapted.values():
                only_plain_layers(module)
    except ValueError as exc:
        raise refuse("PEFT", {"(all)": str(exc)}, adapter.path) from None
    if method.peft_alpha is not None:
        config.update(rank_alpha_fields(entries, method.peft_alpha[0]))
    written.config = config
    return written
