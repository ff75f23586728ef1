"""Adapter Stack: several adapters in one node, applied in row order through the loaders' patch path.

The rows travel as one JSON STRING input, ``stack`` — a list of
``{"name": <loras name>, "on": true, "strength_model": 1.0, "strength_clip": 1.0}`` (``on`` and the strengths
are optional, defaulting to true and 1.0). The frontend edits it as a table (js/lyco_stack.js); API users write it
by hand. It is validated before the run (``validate_inputs``) with errors that name the row and the field. Each
enabled row is ``host.apply_adapter`` on the previous row's clones, so the result equals the same loaders chained
in that order (W-dependent methods see earlier rows applied).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from comfy_api.latest import io, ui

from .host import adapter_names, apply_adapter, load_cached
from .loaders import CATEGORY, STRENGTH_LIMIT

_FIELDS = ("name", "on", "strength_model", "strength_clip")
_EXAMPLE = '[{"name": "my_lokr.safetensors", "on": true, "strength_model": 1.0, "strength_clip": 1.0}]'


@dataclass(frozen=True)
class StackRow:
    name: str
    on: bool
    strength_model: float
    strength_clip: float


def _strength(row: dict, field: str, index: int) -> float:
    value = row.get(field, 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"stack row {index}: '{field}' must be a number, got {json.dumps(value)}")
    if abs(value) > STRENGTH_LIMIT:
        raise ValueError(f"stack row {index}: '{field}' is {value:g}, outside −{STRENGTH_LIMIT:g}…{STRENGTH_LIMIT:g}")
    return float(value)


def parse_stack(text: str, known: list[str]) -> list[StackRow]:
    """The rows of a ``stack`` JSON string; ValueError naming the row and field for anything malformed."""
    try:
        data = json.loads(text.strip() or "[]")
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"stack is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); expected e.g. {_EXAMPLE}"
        ) from None
    if not isinstance(data, list):
        raise ValueError(f"stack must be a JSON list of rows, e.g. {_EXAMPLE}")
    rows = []
    for index, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise ValueError(f"stack row {index} must be an object like {_EXAMPLE[1:-1]}")
        unknown = sorted(set(row) - set(_FIELDS))
        if unknown:
            raise ValueError(
                f"stack row {index}: unknown field(s) {', '.join(unknown)}; fields are {', '.join(_FIELDS)}"
            )
        name = row.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"stack row {index}: 'name' must be an adapter name from the loras folders")
        if name not in known:
            raise ValueError(f"stack row {index}: '{name}' is not in ComfyUI's loras folders")
        on = row.get("on", True)
        if not isinstance(on, bool):
            raise ValueError(f"stack row {index}: 'on' must be true or false, got {json.dumps(on)}")
        rows.append(StackRow(name, on, _strength(row, "strength_model", index), _strength(row, "strength_clip", index)))
    return rows


def apply_stack(rows: list[StackRow], model, clip):
    """(model, clip, report) after every enabled row, in order."""
    lines = []
    for index, row in enumerate(rows, 1):
        if not row.on:
            lines.append(f"{index}. {row.name}: off")
            continue
        if row.strength_model == 0 and row.strength_clip == 0:
            lines.append(f"{index}. {row.name}: both strengths are 0, nothing applied")
            continue
        model, clip, coverage = apply_adapter(load_cached(row.name), model, clip, row.strength_model, row.strength_clip)
        lines.append(f"{index}. (model {row.strength_model:g}, clip {row.strength_clip:g}) {coverage.details()}")
    return model, clip, "\n".join(lines) or "the stack is empty: nothing applied"


class AdapterStack(io.ComfyNode):
    """Several adapters, each on/off with its own strengths, applied in order."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOAdapterStack",
            display_name="Adapter Stack",
            category=CATEGORY,
            description="Applies several LyCORIS-family adapters in row order (each with on/off, model and clip "
            "strengths), exactly as the same loaders chained.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.String.Input(
                    "stack",
                    default="[]",
                    tooltip="JSON list of rows {name, on, strength_model, strength_clip}; the node's table edits it.",
                ),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.String.Output(display_name="summary")],
        )

    @classmethod
    def validate_inputs(cls, stack):
        """Early check of a typed value (None when linked from another node: checked when it runs)."""
        if stack is None:
            return True
        try:
            parse_stack(stack, adapter_names())
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, model, clip, stack):
        new_model, new_clip, text = apply_stack(parse_stack(stack, adapter_names()), model, clip)
        return io.NodeOutput(new_model, new_clip, text, ui=ui.PreviewText(text))
