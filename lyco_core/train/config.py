"""Training configurations with PEFT's field names and meanings, so a PEFT config carries over unchanged.

Target selection (every config; ``targets.py`` implements it as PEFT documents it):
* ``target_modules``: a string is a regex that must match the **whole** module name (``re.fullmatch``), except
  ``"all-linear"``: every ``nn.Linear`` but the output layer; a list matches a name exactly or as a dotted suffix
  (``"to_q"`` matches ``"…attn1.to_q"``); None means every Linear and Conv layer.
* ``exclude_modules``: same rules, and it always wins.
* ``layers_to_transform`` (int or list) with optional ``layers_pattern``: unless targets are a regex, keep only
  modules whose first ``<pattern>.<index>.`` (or, without a pattern, first ``.<name>.<index>.``) has that index.
* ``rank_pattern`` / ``alpha_pattern`` (regex → value): the first pattern ``p`` with
  ``re.match(rf"(.*\\.)?({p})$", name)`` overrides ``r`` / alpha for that module.
* ``modules_to_save``: these modules' own weights (and biases) are trained in full and saved (never adapted).

Where PEFT and LyCORIS disagree on the math (OFT, BOFT, IA3), ``variant`` picks the rule: ``"peft"`` is PEFT's
method as its config means it; ``"lycoris"`` is LyCORIS' (output-side OFT blocks with ``constraint`` and
``rescaled``; IA3 as ``W ⊙ (1 + w)``). Each variant saves exactly in its own layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, NamedTuple, Union

Targets = Union[str, list, None]

CONFIGS: dict[str, type[AdapterConfig]] = {}  # method → its config class (``@trainable`` in each method file)

DEFAULT_TARGETS = "to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2, q_proj, k_proj, v_proj, out_proj, fc1, fc2"
NAMES_HELP = (
    "Empty = every Linear and Conv layer; 'all-linear' = every Linear except the output layer; "
    "'re:<regex>' = names the regex matches in full; else comma-separated names or dotted name suffixes "
    "(UNet names such as to_q, ff.net.2, proj_in; CLIP names such as q_proj, fc1)."
)
RANK_DROPOUT_HELP = "Per forward, each row of ΔW is dropped with this probability (training only)."
MODULE_DROPOUT_HELP = "Per forward, the whole adapter of a layer is skipped with this probability (training only)."


def option(
    default: Any = MISSING,
    *,
    tooltip: str,
    shown: Any = MISSING,
    kind: str | None = None,
    choices: list | None = None,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    multiline: bool | None = None,
    ours: bool = False,
    dropout: bool = False,
    default_factory: Any = MISSING,
):
    """A config field with the widget a config node shows for it, as plain data in ``metadata["widget"]``; two more
    facts: ``ours`` (a field PEFT does not have, left out of ``peft_dict``) and ``dropout`` (a probability that
    ``__post_init__`` keeps in [0, 1)).

    The widget's type follows from ``choices`` (a choice list), ``kind`` (text) or the field's type (bool, int,
    float); ``shown`` is the node's default where it differs from the field's. Text kinds, each read back into the
    field's value (empty text = None): ``"names"`` a module-name rule (``all-linear``, ``re:<regex>`` or a
    comma-separated list of names), ``"list"`` a comma-separated list, ``"layers"`` comma-separated layer indices,
    ``"text"`` a string, ``"pattern"`` a JSON object ``{"<regex>": value}``. ``kind="flag"`` on choices: "true" and
    "false" stand for the booleans. Fields without this metadata have no widget."""
    widget = dict(tooltip=tooltip, kind=kind, choices=choices, min=min, max=max, step=step, multiline=multiline)
    widget = {key: value for key, value in widget.items() if value is not None}
    if shown is not MISSING:
        widget["shown"] = shown
    return field(
        default=default, default_factory=default_factory, metadata={"widget": widget, "ours": ours, "dropout": dropout}
    )


class Node(NamedTuple):
    """The ComfyUI config node of a config: its id, menu name and description, its own inputs in order (saved
    workflows store widget values by position; the target fields follow them) and its place in the node menu."""

    id: str
    display: str
    description: str
    inputs: tuple[str, ...]
    position: int


@dataclass
class AdapterConfig:
    """Fields every method shares (target selection and saved extras)."""

    method: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""
    node: ClassVar[Node]
    target_modules: Targets = option(
        None, shown=DEFAULT_TARGETS, kind="names", multiline=True, tooltip="Modules to adapt. " + NAMES_HELP
    )
    exclude_modules: Targets = option(
        None, kind="names", tooltip="Modules never adapted (wins over target_modules). " + NAMES_HELP
    )
    layers_to_transform: Union[int, list, None] = option(
        None,
        kind="layers",
        tooltip="Comma-separated layer indices to keep (with a "
        "name list): the first '<layers_pattern>.<n>.' in a module name, or without a pattern the "
        "first '.<name>.<n>.' (e.g. diffusion_model.input_blocks.<n>.).",
    )
    layers_pattern: Union[str, list, None] = option(
        None, kind="text", tooltip="Name of the layer list layers_to_transform counts in, e.g. input_blocks or layers."
    )
    modules_to_save: Union[list, None] = option(
        None,
        kind="list",
        tooltip="Comma-separated modules trained in full (weights and biases) and saved as full deltas, never adapted.",
    )

    def __post_init__(self):
        for name in ("target_modules", "exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern"):
            value = getattr(self, name)
            if isinstance(value, (set, tuple)):
                setattr(self, name, sorted(value) if name != "layers_to_transform" else list(value))
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform")
        for name in (f.name for f in dataclasses.fields(self) if f.metadata.get("dropout")):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able), with ``method`` to rebuild the right class."""
        return {"method": self.method, **dataclasses.asdict(self)}

    def peft_dict(self) -> dict[str, Any]:
        """The ``adapter_config.json`` PEFT reads for this config (``peft_type`` set; our own fields and unset
        (None) fields dropped, so PEFT's defaults apply)."""
        ours = {f.name for f in dataclasses.fields(self) if f.metadata.get("ours")}
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in ours and v is not None}
        return {"peft_type": self.peft_type, "task_type": None, **data}

    def alpha_value(self) -> float | None:
        """The default alpha (PEFT ``lora_alpha``/``alpha``), None for methods without one."""
        return None

    @property
    def patterned(self) -> bool:
        return bool(getattr(self, "rank_pattern", None) or getattr(self, "alpha_pattern", None))


def rank_option():
    """``r`` of the low-rank methods (default 8)."""
    return option(
        8,
        min=1,
        max=1024,
        tooltip="Rank of the factors (per module unless rank_pattern says otherwise). Where r·(out + in) would "
        "reach the layer's own size, a dense delta is trained instead.",
    )


def alpha_option():
    """The alpha of the low-rank methods (default 8; ΔW carries alpha/r)."""
    return option(
        8, min=0.0, max=4096.0, step=0.5, tooltip="Scale numerator: ΔW carries alpha/r (alpha/√r with rsLoRA)."
    )


def dropout_option(tooltip: str):
    """A dropout probability (default 0; ``__post_init__`` refuses one outside [0, 1))."""
    return option(0.0, min=0.0, max=0.99, step=0.01, dropout=True, tooltip=tooltip)


def rank_pattern_option():
    """``rank_pattern`` (regex → r; empty)."""
    return option(
        default_factory=dict,
        kind="pattern",
        tooltip='JSON {"<regex>": r}: per-module rank; the regex must match the end of the module name at a dot '
        "boundary (first match wins).",
    )


def alpha_pattern_option():
    """``alpha_pattern`` (regex → alpha; empty)."""
    return option(
        default_factory=dict,
        kind="pattern",
        tooltip='JSON {"<regex>": alpha}: per-module alpha, same matching as rank_pattern.',
    )


def variant_option():
    """``variant`` (``"peft"`` in the config, ``"lycoris"`` in the node)."""
    return option(
        "peft",
        shown="lycoris",
        choices=["lycoris", "peft"],
        ours=True,
        tooltip="lycoris: LyCORIS' math (output-side rotations; saves as kohya/LyCORIS files that ComfyUI loads); "
        "peft: PEFT's math (input-side; saves as a PEFT folder).",
    )


@dataclass
class RankedConfig(AdapterConfig):
    """Fields of the low-rank LyCORIS methods: ``r``, ``alpha`` (ΔW carries alpha/r), per-module patterns."""

    r: int = rank_option()
    alpha: float = alpha_option()
    rank_pattern: dict = rank_pattern_option()
    alpha_pattern: dict = alpha_pattern_option()

    def alpha_value(self):
        return float(self.alpha)


def check_variant(config, peft_only: tuple[str, ...], lycoris_only: tuple[str, ...]) -> None:
    """Refuse a variant name we do not know, and fields that mean nothing in the chosen variant."""
    if config.variant not in ("peft", "lycoris"):
        raise ValueError(f"variant must be 'peft' or 'lycoris', got {config.variant!r}")
    unused = lycoris_only if config.variant == "peft" else peft_only
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in unused:
        if getattr(config, name) != defaults[name]:
            raise ValueError(f"{name} has no meaning for variant={config.variant!r}")


def config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config from ``to_dict()`` output (unknown keys are refused)."""
    data = dict(data)
    method = data.pop("method", None)
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(CONFIGS)}")
    return CONFIGS[method](**data)


def named_config(module: str, name: str) -> type[AdapterConfig]:
    """The registered config class called ``name`` (``"LoKrConfig"``), for a module's ``__getattr__`` (PEP 562)."""
    for cls in CONFIGS.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


def __getattr__(name: str):
    return named_config(__name__, name)
