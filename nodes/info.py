"""Adapter Info: what a file really contains, and — with a model connected — what of it matches."""

from __future__ import annotations

import os

from comfy_api.latest import io, ui

from .host import adapter_names, build_patches, load_cached


def describe(adapter, name: str | None = None) -> str:
    """A human summary: layout, methods, ranks, alphas, DoRA/Tucker, base model, trigger words, network args.
    ``name`` is how the user knows the file (its loras-list name); never a machine path."""
    summary = adapter.summary()
    meta = summary["metadata"]
    lines = [
        f"file: {name or os.path.basename(summary['file'])}",
        f"layout: {summary['layout']}",
        "methods: " + ", ".join(f"{k} ×{v}" for k, v in sorted(summary["methods"].items())),
    ]
    if summary["rank_range"]:
        lines.append("rank: {}–{}".format(*summary["rank_range"]))
    if summary["alpha_range"]:
        lines.append("alpha: {:g}–{:g}".format(*summary["alpha_range"]))
    lines.append(f"DoRA modules: {summary['dora']} · Tucker modules: {summary['tucker']}")
    if meta["base_model"]:
        lines.append(f"base model: {meta['base_model']}")
    if meta["trigger_words"]:
        lines.append("trigger words: " + ", ".join(meta["trigger_words"]))
    for key, value in meta["network"].items():
        lines.append(f"{key}: {value}")
    if summary["unknown_keys"]:
        lines.append(f"unknown keys: {len(summary['unknown_keys'])} (e.g. {', '.join(summary['unknown_keys'][:3])})")
    return "\n".join(lines)


class AdapterInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOAdapterInfo",
            display_name="Adapter Info",
            category="loaders/LyCORIS",
            description="Shows an adapter's layout, methods, ranks, alphas, DoRA/Tucker, base model and trigger "
            "words; with a model/CLIP connected, which modules match it.",
            inputs=[
                io.Combo.Input("adapter_name", options=adapter_names()),
                io.Model.Input("model", optional=True),
                io.Clip.Input("clip", optional=True),
            ],
            outputs=[io.String.Output(display_name="info")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, adapter_name, model=None, clip=None):
        adapter = load_cached(adapter_name)
        text = describe(adapter, adapter_name)
        if model is not None or clip is not None:
            _, _, coverage = build_patches(adapter, model, clip)
            text += "\n" + coverage.details(limit=20)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
