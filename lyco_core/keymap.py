"""Matching adapter module names to a model's weight keys, built forward from the model's own paths.

Rules (``match_modules``), for a module whose layout says it points at ``path``:
1. Candidates are weight keys ending in ``.weight``; their path is the key without it. A module matches a key
   whose path equals ``path`` or ends with ``"." + path`` (dotted layouts), or whose path with every ``.``
   written as ``_`` equals or ends with ``"_" + path`` at a dot boundary (LyCORIS/kohya mangled names).
2. ``text_model.`` levels are ignored on both sides (transformers 4 vs 5 CLIP names).
3. Several candidates: prefer an exact path; else keep those containing a layout hint (``te1``, ``clip_l``,
   ``diffusion_model``, …); else the module is reported ambiguous, never guessed.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .layouts.base import ModulePath


def _without_text_model(path: str) -> str:
    return path.replace("text_model.", "")


@dataclass
class MatchReport:
    """Which modules found a weight key, which did not (with the reason), and file keys no algorithm reads."""
    matched: dict[str, str] = field(default_factory=dict)
    unmatched: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{len(self.matched)} modules matched, {len(self.unmatched)} unmatched"
        if self.unknown_keys:
            text += f", {len(self.unknown_keys)} unknown keys"
        return text

    def as_dict(self) -> dict:
        return {"matched": dict(self.matched), "unmatched": dict(self.unmatched),
                "unknown_keys": list(self.unknown_keys)}


class WeightIndex:
    """Every path suffix (at dot boundaries) of a model's weight keys, dotted and mangled, for O(1) lookups."""

    def __init__(self, keys):
        self.dotted: dict[str, list[str]] = defaultdict(list)
        self.mangled: dict[str, list[str]] = defaultdict(list)
        self.keys = set(keys)
        for key in keys:
            if not key.endswith(".weight") and key != "weight":
                continue
            path = key[: -len(".weight")]
            for variant in {path, _without_text_model(path)}:
                parts = variant.split(".")
                for start in range(len(parts)):
                    suffix = ".".join(parts[start:])
                    self.dotted[suffix].append(key)
                    self.mangled[suffix.replace(".", "_")].append(key)

    def candidates(self, target: ModulePath) -> list[str]:
        table = self.mangled if target.mangled else self.dotted
        alias = target.path.replace("text_model_" if target.mangled else "text_model.", "")
        return list(dict.fromkeys(table.get(target.path, []) + table.get(alias, [])))


def resolve(target: ModulePath, index: WeightIndex) -> tuple[str | None, str]:
    """(weight key, "") on success, else (None, reason)."""
    found = index.candidates(target)
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"no weight of the model has the path '{target.path}'"
    exact = [key for key in found if key[: -len(".weight")] in (target.path, target.path.replace("_", "."))]
    if len(exact) == 1:
        return exact[0], ""
    hinted = [key for key in found if any(hint in key for hint in target.hints)]
    if len(hinted) == 1:
        return hinted[0], ""
    return None, f"ambiguous: '{target.path}' fits {len(found)} weights ({', '.join(sorted(found)[:3])}…)"


_UNET_PREFIXES = ("lora_unet_", "lycoris_", "lora_transformer_")
_TE_PREFIXES = {"te1": ("lora_te1_", "lora_te_"), "te2": ("lora_te2_",), "te": ("lora_te_", "lora_te1_")}
_TE_ROOTS = ("encoder_", "embeddings_", "final_layer_norm")


def _family(target: ModulePath) -> str | None:
    hints = " ".join(target.hints)
    if "te2" in hints or "text_encoder_2" in hints:
        return "te2"
    if "te1" in hints or "clip_l" in hints:
        return "te1"
    if "text_encoder" in hints or "cond_stage" in hints:
        return "te"
    if "diffusion_model" in hints or "unet" in hints or "transformer" in hints:
        return "unet"
    return None


def kohya_aliases(module_name: str, target: ModulePath) -> list[str]:
    """The names a host's kohya-style key map may know this module by, most specific first.

    Covers LyCORIS 2.x trailing ``_``, kohya OFT's ``oft_unet_``, transformers-5 text-encoder paths without
    ``text_model``, and dotted PEFT/diffusers/ComfyUI paths written the kohya way (``lora_unet_``, ``lycoris_``,
    ``lora_te{,1,2}_``, ``diffusion_model.``, ``transformer.``, ``text_encoders.``).
    """
    names = [module_name, module_name.rstrip("_")]
    mangled = target.path.replace(".", "_")
    family = _family(target)
    if target.mangled:
        if module_name.startswith("oft_unet_"):
            names.append("lora_unet_" + mangled)
    else:
        if family in (None, "unet"):
            names += [p + mangled for p in _UNET_PREFIXES]
            names += ["diffusion_model." + target.path, "transformer." + target.path]
        if family in (None, "te", "te1", "te2"):
            names += [p + mangled for p in _TE_PREFIXES[family or "te"]]
            if family is None:
                names += ["lora_te2_" + mangled]
            names.append("text_encoders." + target.path)
    for name in list(names):
        for prefix in ("lora_te_", "lora_te1_", "lora_te2_"):
            rest = name[len(prefix):]
            if name.startswith(prefix) and rest.startswith(_TE_ROOTS):
                names.append(prefix + "text_model_" + rest)
    return list(dict.fromkeys(names))
