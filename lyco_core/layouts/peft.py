"""PEFT layout: ``adapter_model.safetensors`` + ``adapter_config.json``; keys ``base_model.model.<path>.<param>``
(or ``<path>.<param>`` from ``get_peft_model_state_dict`` on a bare model).

Scale comes from the config: ``r``/``lora_alpha`` (LoRA) or ``r``/``alpha`` (LoHa, LoKr), overridden per module by
``rank_pattern``/``alpha_pattern`` (pattern ``p`` applies to ``path`` when ``re.match(rf"(.*\\.)?({p})$", path)``,
first match wins), ``use_rslora`` → alpha/√r. ``peft_version`` (written since 0.18) selects OFT series coefficients.
``modules_to_save`` copies are ``<path>.weight``/``.bias`` (read as ``saved``); embedding LoRA is
``lora_embedding_A (r, num)``/``lora_embedding_B (dim, r)``. ``write`` produces all of these (see its docstring).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from typing import Any


from ..algorithms import ALGORITHMS
from ..algorithms.base import PeftFolder, ScaleContext
from ..algorithms.lokr import peft_builds, peft_factor_shapes
from ..errors import AdapterError
from .base import Layout, ModulePath, Written, only_plain_layers, refuse
from .peft_config import checked_config

PEFT_PREFIX = "base_model.model."
_DEFAULT_ALPHA = {"LORA": 8.0, "LOHA": 8.0, "LOKR": 8.0}
# each PEFT method (peft_type) we apply exactly → our algo, and back; from the method classes' own records
_PEFT_TYPES = {cls.algo: cls.peft_type for cls in ALGORITHMS if cls.peft_type}
_METHOD_OF_TYPE = {peft_type: method for method, peft_type in _PEFT_TYPES.items()}
_WHOLE_LAYER = ("saved", "full", "norm")
_TRANSPOSABLE = ("lora", "ia3", "oft", "boft")  # PEFT methods whose config has fan_in_fan_out


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
        if module_name.startswith(PEFT_PREFIX):
            return ModulePath(module_name[len(PEFT_PREFIX) :], False)
        return ModulePath(module_name, False)

    def checked(self, module):
        """Refuse a module whose tensors contradict the config's ``peft_type`` (LoRA tensors labelled IA3 would take
        another scale rule), and any PEFT method this pack does not apply exactly (AdaLoRA, VeRA, …: read as one of
        ours they would be applied wrong). Whole trained layers go with every method: ``modules_to_save`` copies,
        and the full/norm differences the trainer holds for them before they are written as copies."""
        declared = self.config.get("peft_type")
        if declared is None or module.algo in _WHOLE_LAYER:
            return module
        method = _METHOD_OF_TYPE.get(declared.upper())
        if method is None:
            raise AdapterError(
                f"adapter_config.json declares peft_type {declared[:40]!r}, a PEFT method this pack does not apply",
                file=self.file,
                key="peft_type",
                expected=f"one of {', '.join(_METHOD_OF_TYPE)}",
            )
        if module.algo != method:
            raise AdapterError(
                f"the tensors are {module.algo} but adapter_config.json declares peft_type {declared!r}",
                file=self.file,
                module=module.name,
                expected=f"{method} tensors for peft_type {declared!r}, or the config the file was trained with",
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


def _lokr_layout(modules) -> tuple[int, bool, dict[str, str]]:
    """(decompose_factor, decompose_both, {module: why not}) reproducing every module's factor shapes in PEFT."""
    decompose_both = any("lokr_w1" not in m.params for m in modules.values())
    candidates = [-1] + sorted({peft_factor_shapes(m.params)[i] for m in modules.values() for i in (0, 2)})
    for factor in candidates:
        if all(peft_builds(m.params, factor, decompose_both) for m in modules.values()):
            return factor, decompose_both, {}
    return (
        -1,
        decompose_both,
        {
            n: "PEFT's LoKr factorization would build other factor shapes"
            for n, m in modules.items()
            if not peft_builds(m.params, -1, decompose_both)
        },
    )


def _one_of(values: set, what: str) -> Any:
    """The single value of ``values``; ValueError naming ``what`` when the modules disagree."""
    if len(values) != 1:
        raise ValueError(
            f"PEFT's config has one {what} for every layer (no per-module pattern); these modules have "
            f"{', '.join(sorted(map(str, values)))}"
        )
    return next(iter(values))


def oft_fields(modules) -> tuple[dict[str, Any], list[str]]:
    """(config fields, notes) of packed PEFT OFT modules: one block size, else one block count, for all layers
    (PEFT builds every layer's blocks from ``r``/``oft_block_size``), and the rotation options they were read with."""
    sizes = {m.block_size for m in modules.values()}
    counts = {int(m.params["oft_R.weight"].shape[0]) for m in modules.values()}
    options, version = _one_of({(m.options, m.ctx.peft_version) for m in modules.values()}, "set of OFT options")
    if len(sizes) == 1 or options.block_share:
        rank, size = 0, _one_of(sizes, "OFT block size")
    else:
        rank, size = _one_of(counts, "OFT block size or block count"), 0
    fields = {
        "r": rank,
        "oft_block_size": size,
        **dataclasses.asdict(options),
        "module_dropout": 0.0,
        "init_weights": True,
        "bias": "none",
    }
    notes = []
    if version is not None:
        fields["peft_version"] = ".".join(map(str, version))
    if options.use_cayley_neumann and version is not None and version < (0, 18):
        notes.append(f"Cayley–Neumann series of PEFT {fields['peft_version']} kept; PEFT ≥0.18 sums it differently")
    return fields, notes


def boft_fields(modules) -> dict[str, Any]:
    """Config fields of PEFT BOFT modules: one factor count, and one block size (else one block count)."""
    shapes = [m.params["boft_R"].shape for m in modules.values()]
    fields = {
        "boft_n_butterfly_factor": _one_of({int(s[0]) for s in shapes}, "butterfly factor count"),
        "boft_dropout": 0.0,
        "init_weights": True,
        "bias": "none",
    }
    sizes, counts = {int(s[2]) for s in shapes}, {int(s[1]) for s in shapes}
    if len(sizes) == 1:
        return {**fields, "boft_block_size": sizes.pop(), "boft_block_num": 0}
    return {**fields, "boft_block_size": 0, "boft_block_num": _one_of(counts, "BOFT block size or block count")}


def _folder_method(modules, file: str) -> str:
    """The one method of a folder's adapted modules; dense differences take that method's form (LoRA if alone), and
    modules of methods PEFT lacks are refused one by one later."""
    without_peft = {cls.algo for cls in ALGORITHMS} - set(_PEFT_TYPES)  # refused module by module
    methods = sorted({m.algo for m in modules.values()} - {"full"} - without_peft)
    if len(methods) > 1:
        raise refuse(
            "PEFT", {"(all)": f"a PEFT folder holds one method, this adapter mixes {', '.join(methods)}"}, file
        )
    return methods[0] if methods else "lora"


def write(adapter, targets: dict[str, tuple[str, str]], has_bias: dict[str, bool] | None = None) -> Written:
    """A PEFT folder's tensors (``base_model.model.<path>.<param>``) and its ``adapter_config.json``.

    One method per folder (each module's ``to_peft``, dense differences in the folder's method); whole-module copies
    (``saved``) under their own ``weight``/``bias`` names, listed in ``modules_to_save``."""
    saved = {n: m for n, m in adapter.modules.items() if m.algo == "saved"}
    adapted = {n: m for n, m in adapter.modules.items() if n not in saved}
    if not adapted:
        raise refuse("PEFT", {"(all)": "a PEFT folder needs adapted modules besides modules_to_save"}, adapter.path)
    method = _folder_method(adapted, adapter.path)
    factor, lokr_both, problems = (
        _lokr_layout({n: m for n, m in adapted.items() if m.algo == "lokr"}) if method == "lokr" else (-1, False, {})
    )
    tucker = any(m.tucker for m in adapted.values())
    folder = PeftFolder(method, lokr_both, tucker)
    written, entries, feedforward = Written({}), {}, []
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
        entries[path] = (rank, alpha)
        feedforward += [path] if method == "ia3" and module.on_input() else []
    if problems:
        raise refuse("PEFT", problems, adapter.path)
    for name, module in saved.items():
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in module.params.items()})
    lora_bias = any(k.endswith(".lora_B.bias") for k in written.tensors)
    dora = any(k.endswith(".lora_magnitude_vector") for k in written.tensors)
    if dora and not all(m.dora for m in adapted.values()):
        raise refuse(
            "PEFT", {"(all)": "use_dora is one switch for the whole folder; DoRA is on some modules only"}, adapter.path
        )
    config: dict[str, Any] = {
        "peft_type": _PEFT_TYPES[method],
        "target_modules": sorted(entries),
        "inference_mode": True,
        "task_type": None,
        "modules_to_save": sorted(targets[n][1] for n in saved) or None,
        "base_model_name_or_path": (adapter.config or {}).get("base_model_name_or_path"),
    }
    try:
        if method == "oft":
            fields, written.notes = oft_fields(adapted)
            config.update(fields)
        elif method == "boft":
            config.update(boft_fields(adapted))
        if method in _TRANSPOSABLE:
            config["fan_in_fan_out"] = _one_of({m.ctx.fan_in_fan_out for m in adapted.values()}, "fan_in_fan_out")
        else:
            for module in adapted.values():
                only_plain_layers(module)
    except ValueError as exc:
        raise refuse("PEFT", {"(all)": str(exc)}, adapter.path) from None
    if method == "ia3":
        config.update(feedforward_modules=sorted(feedforward), init_ia3_weights=True)
    elif method == "lora":
        config.update(
            rank_alpha_fields(entries, "lora_alpha"),
            use_dora=dora,
            use_rslora=False,
            lora_bias=lora_bias,
            bias="none",
            init_lora_weights=True,
            lora_dropout=0.0,
        )
    elif method in ("loha", "lokr"):
        config.update(
            rank_alpha_fields(entries, "alpha"),
            use_effective_conv2d=tucker,
            rank_dropout=0.0,
            module_dropout=0.0,
            init_weights=True,
        )
        if method == "lokr":
            config.update(decompose_both=lokr_both, decompose_factor=factor, rank_dropout_scale=False)
    written.config = config
    return written
