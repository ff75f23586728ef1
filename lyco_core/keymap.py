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
   alias; else the one whose matching path needs the least in front of the module's path (layouts name a layer by
   its whole path below a root: a top-level ``proj_out``, not ``single_transformer_blocks.0.proj_out``); else the
   module is reported ambiguous, never guessed.
5. An alias may name part of a weight (q, k or v: a third of the rows of a fused ``in_proj_weight``; or, where
   grouped K/V heads make k and v smaller than q, the first ``in_features`` rows for q and halves of the rest for
   k and v) or its transpose (OpenCLIP's ``text_projection``): the module's target is then that ``WeightSlice``,
   reported as ``key[part i of n]`` / ``key (transposed)``; patching applies the module's law to that view (and
   the bias's rows) alone, as if it were the whole weight.
Reference: docs/formats.md, Matching modules to model weights.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .aliases import model_aliases
from .errors import AdapterError
from .layouts.base import ModulePath
from .naming import COMPONENTS, DENOISER_ROOTS, FAMILY_PREFIXES, TEXT_ENCODER_ROOT


def _without_text_model(path: str) -> str:
    return path.replace("text_model.", "")


@dataclass(frozen=True)
class WeightSlice:
    """Where a module applies: the weight ``key``, or the ``part``-th of ``parts`` blocks of its rows (dim 0) and
    the same rows of its bias, or the rows ``span = (first, count)`` a host's key map names; with ``transposed``,
    the module's weight is ``key``'s transpose (OpenCLIP keeps its text projection as ``P`` used as ``x·P``, HF as
    the Linear weight ``Pᵀ``; PEFT's ``fan_in_fan_out`` layers store ``Wᵀ``) and rows are counted in it.

    The blocks are equal; or, with ``square_first``, block 0 is the first ``in_features`` rows (``shape[1]`` of the
    weight: a dim→dim projection, q) and blocks 1… split the rows after it equally (k and v, which grouped K/V heads
    make smaller than q: Lumina2 fuses 24 q and 8 kv heads). Either way the row counts come from the weight's shape,
    so a model's keys alone (a header) say where the module goes."""

    key: str
    part: int = 0
    parts: int = 1
    transposed: bool = False
    span: tuple[int, int] | None = None
    blocks: int = 1  # how many consecutive parts, from ``part`` on (Flux's single-block MLP rows: 4 of 7)
    square_first: bool = False

    def __str__(self) -> str:
        if self.span is not None:
            text = f"{self.key}[rows {self.span[0]}:{self.span[0] + self.span[1]}]"
        elif self.square_first:
            after = f"part {self.part} of {self.parts - 1} after " if self.part else ""
            text = f"{self.key}[{after}the first in_features rows]"
        else:
            numbers = f" {self.part + 1}" if self.blocks == 1 else f"s {self.part + 1}–{self.part + self.blocks}"
            text = self.key if self.parts == 1 else f"{self.key}[part{numbers} of {self.parts}]"
        return text + " (transposed)" if self.transposed else text

    @property
    def sliced(self) -> bool:
        """Whether the module applies to some rows of the weight rather than all of them."""
        return self.parts > 1 or self.span is not None

    @property
    def whole(self) -> bool:
        """Whether this is the weight itself, as stored."""
        return not self.sliced and not self.transposed

    @property
    def bias_key(self) -> str | None:
        """``<key without 'weight'>bias`` (``in_proj_weight`` → ``in_proj_bias``), or None."""
        return self.key[: -len("weight")] + "bias" if self.key.endswith("weight") else None

    def rows(self, shape: torch.Size) -> tuple[int, int]:
        """(start, length) of the slice's rows in a weight of ``shape`` as the module sees it (``seen``); the bias
        has the same rows."""
        total = shape[0]
        if self.span is not None:
            if self.span[0] + self.span[1] > total:
                raise AdapterError(
                    f"has {total} rows; the host's key map names rows {self.span[0]}…{sum(self.span) - 1}",
                    key=self.key,
                    expected="the weight the host's key map describes",
                )
            return self.span
        if self.square_first and len(shape) < 2:
            raise AdapterError(
                "has no in_features, so the rows of its first (square) block are unknown",
                key=self.key,
                expected="the shape of the fused weight, (rows, in_features)",
            )
        lead = 1 if self.square_first else 0  # the square block, before the equal ones
        first = shape[1] if self.square_first else 0
        equal = self.parts - lead
        if first > total or (total - first) % equal:
            blocks = f"the first {first} and {equal} equal parts" if self.square_first else f"{equal} equal parts"
            raise AdapterError(
                f"has {total} rows, which do not split into {blocks}",
                key=self.key,
                expected=f"a fused weight of {self.parts} stacked blocks",
            )
        length = (total - first) // equal
        edges = [0] * lead + [first + i * length for i in range(equal + 1)]
        return edges[self.part], edges[self.part + self.blocks] - edges[self.part]

    def seen(self, shape: torch.Size) -> torch.Size:
        """A stored weight's ``shape`` as the module sees it (reversed where ``transposed``)."""
        return torch.Size(reversed(shape)) if self.transposed else torch.Size(shape)

    def shape(self, shape: torch.Size) -> torch.Size:
        """The module's weight shape within a stored weight of ``shape``."""
        shape = self.seen(shape)
        return torch.Size((self.rows(shape)[1], *shape[1:])) if self.sliced else shape

    def of(self, tensor: torch.Tensor, weight_shape: torch.Size | None = None) -> torch.Tensor:
        """The module's weight inside the stored weight ``tensor``, or its rows of the bias ``tensor`` given the
        stored weight's shape (which a ``square_first`` slice needs): a view, so writing it writes the tensor."""
        view = tensor.t() if self.transposed else tensor
        if not self.sliced:
            return view
        return view.narrow(0, *self.rows(view.shape if weight_shape is None else self.seen(weight_shape)))


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
                part = WeightSlice(
                    alias.key,
                    *(alias.part or (0, 1)),
                    alias.transposed,
                    blocks=alias.blocks,
                    square_first=alias.square_first,
                )
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
    if len(own) == 1:
        return own[0]
    depth = {key: _prefix_length(target, [key[: -len(".weight")], *index.aliases.get(key, ())]) for key in found}
    shallowest = [key for key in found if depth[key] == min(depth.values())]
    return shallowest[0] if len(shallowest) == 1 else None


def _prefix_length(target: ModulePath, paths: list[str]) -> int:
    """How much of the shortest of ``paths`` (a candidate's own path and aliases) lies before the part that spells
    ``target``: layouts name a layer by its whole path below a root, so the candidate needing the least in front
    is the layer meant (a top-level ``proj_out`` rather than ``single_transformer_blocks.0.proj_out``)."""
    lengths = []
    for path in paths:
        for variant in {path, _without_text_model(path)}:
            spelled = variant.replace(".", "_") if target.mangled else variant
            for wanted in {target.path, target.path.replace("text_model_" if target.mangled else "text_model.", "")}:
                if spelled == wanted or spelled.endswith(("_" if target.mangled else ".") + wanted):
                    lengths.append(len(spelled) - len(wanted))
    return min(lengths, default=1 << 30)


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


_TE_ROOTS = ("encoder_", "embeddings_", "final_layer_norm")
_TE_PREFIXES = tuple(dict.fromkeys(p for family, ps in FAMILY_PREFIXES.items() if family != "unet" for p in ps))


def kohya_aliases(module_name: str, target: ModulePath) -> list[str]:
    """The names a host's kohya-style key map may know this module by, most specific first.

    Covers LyCORIS 2.x trailing ``_``, a prefix other than the one its component is written with (kohya OFT's
    ``oft_unet_``), transformers-5 text-encoder paths without ``text_model``, and dotted PEFT/diffusers/ComfyUI
    paths written the way the host's key map spells the module's family (naming.py ``FAMILY_PREFIXES``,
    ``DENOISER_ROOTS``, ``TEXT_ENCODER_ROOT``); a module of no stated family tries them all.
    """
    names = [module_name, module_name.rstrip("_")]
    mangled = target.path.replace(".", "_")
    family = COMPONENTS[target.component].family if target.component else None
    if target.mangled:
        if target.component:
            names.append(COMPONENTS[target.component].kohya + mangled)
    else:
        if family in (None, "unet"):
            names += [p + mangled for p in FAMILY_PREFIXES["unet"]]
            names += [root + target.path for root in DENOISER_ROOTS]
        if family != "unet":
            names += [p + mangled for p in FAMILY_PREFIXES[family or "te"]]
            if family is None:
                names += [p + mangled for p in FAMILY_PREFIXES["te2"]]
            names.append(TEXT_ENCODER_ROOT + target.path)
    for name in list(names):
        for prefix in _TE_PREFIXES:
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
    shapes: dict = field(default_factory=dict)  # {weight key: its shape}, where known: checks the host map's rows

    def host_target(self, alias: str, target: ModulePath) -> WeightSlice:
        """The host map's entry for ``alias``; where it names rows of a weight whose shape is known and the rules
        (``locate``) put the module on other rows of the same weight, the rules' rows, which come from the
        weight's shape (ComfyUI's Z-Image table cuts a fused q/k/v into equal thirds, which grouped K/V heads make
        wrong)."""
        found = _host_target(self.host_map[alias])
        shape = self.shapes.get(found.key)
        if found.span is None or shape is None:
            return found
        mine, _ = locate(target, self.index)
        if mine is not None and mine.key == found.key and not mine.transposed and mine.rows(shape) != found.span:
            return mine
        return found


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

    1. the host's key map, under each name ``kohya_aliases`` gives (most specific first), side by side (rows
       checked against the weight's shape, ``Side.host_target``);
    2. the rules of this file (``locate``) on each side's weight keys and aliases; exactly one side may fit.
    """
    if any(side.host_map for side in sides):  # the core alone (CLI) has no host map: no aliases to form
        for alias in kohya_aliases(module_name, target):
            for side in sides:
                if alias in side.host_map:
                    return side, side.host_target(alias, target), ""
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
