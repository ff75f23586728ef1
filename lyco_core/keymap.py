"""Matching adapter module names to a model's weight keys, built forward from the model's own paths.

Rules (``locate``; ``place`` puts a host's own key map first), for a module whose layout says it points at ``path``:
1. Candidates are weight keys ending in ``.weight``; their path is the key without it. A module matches a key
   whose path equals ``path`` or ends with ``"." + path`` (dotted layouts), or whose path with every ``.``
   written as ``_`` equals or ends with ``"_" + path`` at a dot boundary (LyCORIS/kohya mangled names).
2. ``text_model.`` levels are ignored on both sides (transformers 4 vs 5 CLIP names).
3. A weight also answers to its aliases (aliases/): the paths another spelling of the same network gives it
   (diffusers names of an LDM UNet and back, HF CLIP names of an OpenCLIP text encoder), matched by rules 1–2.
4. Several candidates: prefer an exact path; else keep those containing a layout hint (``te1``, ``clip_l``,
   ``diffusion_model``, …) in the key or its aliases; else the one candidate found by its own path rather than an
   alias; else the module is reported ambiguous, never guessed.
5. An alias may name part of a weight (q, k or v: a third of the rows of a fused ``in_proj_weight``) or its
   transpose (OpenCLIP's ``text_projection``): the module's target is then that ``WeightSlice``, reported as
   ``key[part i of n]`` / ``key (transposed)``; patching applies the module's law to that view (and the bias's
   rows) alone, as if it were the whole weight.
Reference: docs/formats.md, Matching modules to model weights.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .aliases import model_aliases
from .errors import AdapterError
from .layouts.base import ModulePath


def _without_text_model(path: str) -> str:
    return path.replace("text_model.", "")


@dataclass(frozen=True)
class WeightSlice:
    """Where a module applies: the weight ``key``, or the ``part``-th of ``parts`` equal blocks of its rows (dim 0)
    and the same rows of its bias, or the rows ``span = (first, count)`` a host's key map names; with
    ``transposed``, the module's weight is ``key``'s transpose (OpenCLIP keeps its text projection as ``P`` used as
    ``x·P``, HF as the Linear weight ``Pᵀ``; PEFT's ``fan_in_fan_out`` layers store ``Wᵀ``) and rows are counted in
    it. Equal parts take their row count from the tensor, so a model's keys alone (a header) say where they go."""

    key: str
    part: int = 0
    parts: int = 1
    transposed: bool = False
    span: tuple[int, int] | None = None
    blocks: int = 1  # how many consecutive parts, from ``part`` on (Flux's single-block MLP rows: 4 of 7)

    def __str__(self) -> str:
        if self.span is not None:
            text = f"{self.key}[rows {self.span[0]}:{self.span[0] + self.span[1]}]"
        else:
            numbers = f" {self.part + 1}" if self.blocks == 1 else f"s {self.part + 1}–{self.part + self.blocks}"
            text = self.key if self.parts == 1 else f"{self.key}[part{numbers} of {self.parts}]"
        return text + " (transposed)" if self.transposed else text

    @property
    def whole(self) -> bool:
        """Whether this is the weight itself, as stored."""
        return self.parts == 1 and not self.transposed and self.span is None

    @property
    def bias_key(self) -> str | None:
        """``<key without 'weight'>bias`` (``in_proj_weight`` → ``in_proj_bias``), or None."""
        return self.key[: -len("weight")] + "bias" if self.key.endswith("weight") else None

    def rows(self, total: int) -> tuple[int, int]:
        """(start, length) of the slice's rows among ``total``."""
        if self.span is not None:
            if self.span[0] + self.span[1] > total:
                raise AdapterError(
                    f"has {total} rows; the host's key map names rows {self.span[0]}…{sum(self.span) - 1}",
                    key=self.key,
                    expected="the weight the host's key map describes",
                )
            return self.span
        if total % self.parts:
            raise AdapterError(
                f"has {total} rows, which do not split into {self.parts} equal parts",
                key=self.key,
                expected=f"a fused weight of {self.parts} stacked blocks",
            )
        length = total // self.parts
        return self.part * length, self.blocks * length

    def shape(self, shape: torch.Size) -> torch.Size:
        """The module's weight shape within a stored weight (or bias) of ``shape``."""
        if self.transposed:
            shape = torch.Size(reversed(shape))
        sliced = self.parts > 1 or self.span is not None
        return torch.Size((self.rows(shape[0])[1], *shape[1:])) if sliced else shape

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The module's weight (or bias) inside the stored ``tensor``: a view, so writing it writes the tensor."""
        view = tensor.t() if self.transposed else tensor
        return view.narrow(0, *self.rows(view.shape[0])) if self.parts > 1 or self.span is not None else view


@dataclass
class MatchReport:
    """Which modules found a target, which did not (with the reason), and file keys no algorithm reads.
    ``matched`` {module: its target as text: the key, or ``key[part i of n]`` / ``key (transposed)``}; ``slices``
    {module: its WeightSlice} for the modules whose target is not a whole stored weight."""

    matched: dict[str, str] = field(default_factory=dict)
    unmatched: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    slices: dict[str, WeightSlice] = field(default_factory=dict)

    def add(self, name: str, target: WeightSlice) -> None:
        self.matched[name] = str(target)
        if not target.whole:
            self.slices[name] = target

    def target(self, name: str) -> WeightSlice:
        """Where matched module ``name`` applies (a whole weight is ``WeightSlice(key)``)."""
        return self.slices.get(name) or WeightSlice(self.matched[name])

    def line(self) -> str:
        text = f"{len(self.matched)} modules matched, {len(self.unmatched)} unmatched"
        if self.unknown_keys:
            text += f", {len(self.unknown_keys)} unknown keys"
        return text

    def as_dict(self) -> dict:
        return {
            "matched": dict(self.matched),
            "unmatched": dict(self.unmatched),
            "unknown_keys": list(self.unknown_keys),
        }


class WeightIndex:
    """Every path suffix (at dot boundaries) of a model's weight keys and of their aliases, dotted and mangled, for
    O(1) lookups. The tables hold targets: a weight key, or ``str(WeightSlice)`` for an alias naming part of one or
    its transpose (``slices`` {that string: the WeightSlice}). ``aliases`` {target: alias paths}."""

    def __init__(self, keys):
        ordered = list(keys)
        self.keys = set(ordered)
        self.own: tuple[dict[str, list[str]], dict[str, list[str]]] = (defaultdict(list), defaultdict(list))
        self.other: tuple[dict[str, list[str]], dict[str, list[str]]] = (defaultdict(list), defaultdict(list))
        self.aliases: dict[str, list[str]] = defaultdict(list)
        self.slices: dict[str, WeightSlice] = {}
        for key in ordered:
            if key.endswith(".weight") or key == "weight":
                _add_suffixes(self.own, key[: -len(".weight")], key)
        for alias in model_aliases(self.keys):
            target = alias.key
            if alias.part is not None or alias.transposed:
                part = WeightSlice(alias.key, *(alias.part or (0, 1)), alias.transposed, blocks=alias.blocks)
                target = str(part)
                self.slices[target] = part
            _add_suffixes(self.other, alias.path, target)
            self.aliases[target].append(alias.path)

    def paths(self, key: str) -> list[str]:
        """The weight's own path (for a ``.weight`` key) and its aliases."""
        own = [key[: -len(".weight")]] if key.endswith(".weight") else []
        return own + self.aliases.get(key, [])

    def candidates(self, target: ModulePath, tables=None) -> list[str]:
        """Keys whose own path (or, with ``tables=self.other``, an alias) fits ``target``."""
        dotted, mangled = tables or self.own
        table = mangled if target.mangled else dotted
        alias = target.path.replace("text_model_" if target.mangled else "text_model.", "")
        return list(dict.fromkeys(table.get(target.path, []) + table.get(alias, [])))


def _add_suffixes(tables, path: str, key: str) -> None:
    dotted, mangled = tables
    for variant in {path, _without_text_model(path)}:
        parts = variant.split(".")
        for start in range(len(parts)):
            suffix = ".".join(parts[start:])
            dotted[suffix].append(key)
            mangled[suffix.replace(".", "_")].append(key)


def _pick(target: ModulePath, own: list[str], found: list[str], index: WeightIndex) -> str | None:
    """The one candidate rule 4 allows, or None."""
    if len(found) == 1:
        return found[0]
    exact = [key for key in found if key[: -len(".weight")] in (target.path, target.path.replace("_", "."))]
    if len(exact) == 1:
        return exact[0]
    hinted = [
        key
        for key in found
        if any(hint in name for hint in target.hints for name in [key, *index.aliases.get(key, ())])
    ]
    if len(hinted) == 1:
        return hinted[0]
    return own[0] if len(own) == 1 else None


def locate(target: ModulePath, index: WeightIndex) -> tuple[WeightSlice | None, str]:
    """(where the module applies: a whole weight or part of one, "") on success, else (None, reason)."""
    own = index.candidates(target)
    found = list(dict.fromkeys(own + index.candidates(target, index.other)))
    if not found:
        return None, f"no weight of the model has the path '{target.path}'"
    picked = _pick(target, own, found, index)
    if picked is None:
        return None, f"ambiguous: '{target.path}' fits {len(found)} weights ({', '.join(sorted(found)[:3])}…)"
    return index.slices.get(picked) or WeightSlice(picked), ""


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
            rest = name[len(prefix) :]
            if name.startswith(prefix) and rest.startswith(_TE_ROOTS):
                names.append(prefix + "text_model_" + rest)
    return list(dict.fromkeys(names))


# --- the one matcher -------------------------------------------------------------------------------------------
@dataclass
class Side:
    """One patchable part of a model: its weight keys (``index``) and, where a host supplies it, the host's own key
    map for it, {name a file may use: weight key, or ``(key, (0, first row, rows))`` for part of one} (ComfyUI's
    ``model_lora_keys_unet``/``_clip``)."""

    label: str
    index: WeightIndex
    host_map: dict = field(default_factory=dict)


def _host_target(entry) -> WeightSlice:
    if isinstance(entry, str):
        return WeightSlice(entry)
    key, (dim, start, length) = entry[0], entry[1]
    if dim != 0:
        raise AdapterError(f"the host's key map names a slice along dim {dim}", key=key, expected="rows (dim 0)")
    return WeightSlice(key, span=(int(start), int(length)))


def place(module_name: str, target: ModulePath, sides: list[Side]) -> tuple[Side | None, WeightSlice | None, str]:
    """Where module ``module_name`` (pointing at ``target``) applies: ``(side, slice, "")``, else
    ``(None, None, reason)``. One order for the core and the nodes:

    1. the host's key map, under each name ``kohya_aliases`` gives (most specific first), side by side;
    2. the rules of this file (``locate``) on each side's weight keys and aliases; exactly one side may fit.
    """
    if any(side.host_map for side in sides):  # the core alone (CLI) has no host map: no aliases to form
        for alias in kohya_aliases(module_name, target):
            for side in sides:
                if alias in side.host_map:
                    return side, _host_target(side.host_map[alias]), ""
    found, reasons = [], []
    for side in sides:
        located, reason = locate(target, side.index)
        if located is not None:
            found.append((side, located))
        else:
            reasons.append(reason if len(sides) == 1 else f"{side.label}: {reason}")
    if len(found) == 1:
        return found[0][0], found[0][1], ""
    if len(found) > 1:
        return None, None, "ambiguous: fits both " + " and ".join(f"{side.label} {t}" for side, t in found)
    return None, None, "; ".join(reasons) or "no model connected"
