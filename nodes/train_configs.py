"""One config node per training method, generated from the method's lyco_core.train config: its ``node`` record
(id, name, description, input order, menu place) and each field's widget metadata (``config.option``: type,
default, bounds, choices, tooltip, text kind); output ``LYCO_TRAIN_CONFIG`` for ``LyCOTrain``.

Text fields that take module names: empty = the default, ``all-linear``, ``re:<regex>`` (must match the whole
module name), or a comma-separated list of names / dotted name suffixes. Patterns are JSON objects
``{"<regex>": value}``. Names are ComfyUI's own module paths, e.g. ``diffusion_model.input_blocks.1.1.
transformer_blocks.0.attn1.to_q`` and ``clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj``.
"""

from __future__ import annotations

import dataclasses
import json
import typing

from comfy_api.latest import io

from ..lyco_core.train.config import CONFIGS, AdapterConfig

CATEGORY = "training/LyCORIS"
CONFIG_TYPE = io.Custom("LYCO_TRAIN_CONFIG")


def names(text: str):
    """A module-name field as PEFT takes it: None, ``"all-linear"``, a regex string, or a list of names."""
    text = text.strip()
    if not text:
        return None
    if text.lower() == "all-linear":
        return "all-linear"
    if text.startswith("re:"):
        return text[3:].strip()
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def pattern(text: str) -> dict:
    data = json.loads(text.strip() or "{}")
    if not isinstance(data, dict):
        raise ValueError(f'a pattern must be a JSON object {{"regex": value}}, got {text!r}')
    return data


def layers(text: str):
    text = text.strip()
    return [int(part) for part in text.replace(" ", "").split(",") if part] if text else None


def flag(value):
    """Combo choices "true"/"false" as booleans; other choices as they are."""
    return {"true": True, "false": False}.get(value, value)


# a widget's value → the field's, by the metadata's ``kind`` (no kind: the value itself)
CONVERTERS = {
    "names": names,
    "list": lambda text: [part.strip() for part in text.split(",") if part.strip()] or None,
    "layers": layers,
    "text": lambda text: text.strip() or None,
    "pattern": pattern,
    "flag": flag,
}
WIDGETS = {bool: io.Boolean, int: io.Int, float: io.Float}  # by the field's type, for fields without choices or kind


def shown(spec: dataclasses.Field, widget: dict):
    """The widget's default: the metadata's ``shown``, else the field's default as the widget writes it."""
    if "shown" in widget:
        return widget["shown"]
    value = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    kind = widget.get("kind")
    if kind == "flag" and isinstance(value, bool):
        return str(value).lower()
    if kind == "pattern":
        return json.dumps(value)
    if kind is not None and value is None:
        return ""
    return value


def widget_input(spec: dataclasses.Field, field_type: type) -> io.Input:
    """The ComfyUI input of one config field, from its widget metadata."""
    widget = spec.metadata["widget"]
    common = dict(default=shown(spec, widget), tooltip=widget["tooltip"])
    if "choices" in widget:
        return io.Combo.Input(spec.name, options=widget["choices"], **common)
    if "kind" in widget:
        return io.String.Input(spec.name, multiline=widget.get("multiline", False), **common)
    bounds = {key: widget[key] for key in ("min", "max", "step") if key in widget}
    if field_type is float:
        common["default"] = float(common["default"])
    return WIDGETS[field_type].Input(spec.name, **common, **bounds)


def shown_fields(config: type[AdapterConfig]) -> list[dataclasses.Field]:
    """The fields ``config``'s node shows, in order: its ``node.inputs``, then the target fields every config
    shares; together exactly the fields with widget metadata."""
    specs = {spec.name: spec for spec in dataclasses.fields(config)}
    shared = [spec.name for spec in dataclasses.fields(AdapterConfig) if "widget" in spec.metadata]
    order = [*config.node.inputs, *shared]
    unlisted = {name for name, spec in specs.items() if "widget" in spec.metadata} - set(order)
    if unlisted or any("widget" not in specs[name].metadata for name in order):
        raise ValueError(f"{config.__name__}: node.inputs must list exactly its fields with widget metadata")
    return [specs[name] for name in order]


class ConfigNode(io.ComfyNode):
    """The node of a registered config (``CONFIG``); one is made per config for ``CONFIG_NODES``."""

    NODE_ID = ""
    CONFIG = AdapterConfig

    @classmethod
    def define_schema(cls):
        types = typing.get_type_hints(cls.CONFIG)
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.CONFIG.node.display,
            category=CATEGORY,
            description=cls.CONFIG.node.description,
            inputs=[widget_input(spec, types[spec.name]) for spec in shown_fields(cls.CONFIG)],
            outputs=[CONFIG_TYPE.Output(display_name="config")],
        )

    @classmethod
    def execute(cls, **values):
        kinds = {spec.name: spec.metadata["widget"].get("kind") for spec in shown_fields(cls.CONFIG)}
        return io.NodeOutput(cls.CONFIG(**{k: CONVERTERS.get(kinds[k], lambda v: v)(v) for k, v in values.items()}))


CONFIG_NODES = [
    type(f"{config.__name__}Node", (ConfigNode,), {"NODE_ID": config.node.id, "CONFIG": config, "__module__": __name__})
    for config in sorted(CONFIGS.values(), key=lambda config: config.node.position)
]
