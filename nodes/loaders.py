"""Loader nodes: any LyCORIS-family file onto MODEL and CLIP at the user's strengths, with a coverage report.

``LyCOLoadAdapter`` takes every method; the per-method nodes (one per ``loader`` the method classes declare) refuse
a file holding another method and name the node to use instead. Strengths are ComfyUI's ``strength_patch``; each
method applies its own law (see host.py). With ``bypass`` the adapter runs in each layer's forward pass instead of
being merged (bypass.py).
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..lyco_core import AdapterError
from ..lyco_core.algorithms import ALGORITHMS
from ..lyco_core.algorithms.base import Loader
from .bypass import apply_bypass
from .host import adapter_names, apply_adapter, load_cached

CATEGORY = "loaders/LyCORIS"
STRENGTH_LIMIT = 10.0  # |strength| every strength field accepts (loaders, convert nodes, stack rows and their editor)
# a number field as ComfyUI's LoraLoader has (arrows and drag in steps of 0.01, a click to type), not a slider: on a
# -10…10 slider a click jumps to the click and fine values are hard to hit
STRENGTH = dict(default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01, display_mode=io.NumberDisplay.number)


def strength_input(name: str, tooltip: str):
    return io.Float.Input(name, tooltip=tooltip, **STRENGTH)


def adapter_input():
    return io.Combo.Input(
        "adapter_name",
        options=adapter_names(),
        tooltip="An adapter file (or PEFT folder) from ComfyUI's loras folders; its method is detected per module.",
    )


def _bypass_input():
    return io.Boolean.Input(
        "bypass",
        default=False,
        optional=True,
        tooltip="Run the adapter in each layer's forward pass instead of merging it into the "
        "weights (for quantised/fp8 models: no weight copies). LoRA/LoCon, LoHa, LoKr "
        "and full diffs only; other methods are refused with a message.",
    )


# each method with a dedicated loader (the method classes' ``loader`` record) → that loader
_LOADER_OF = {cls.algo: cls.loader for cls in ALGORITHMS if cls.loader is not None}


def _check_methods(adapter, allowed: frozenset | None, node_label: str) -> None:
    if allowed is None:
        return
    found = {m.algo for m in adapter.modules.values()}
    if not found <= allowed:
        methods = ", ".join(sorted(found))
        right = _LOADER_OF.get(next(iter(found))) if len(found) == 1 else None
        suggestion = right.title if right is not None else "Load LyCORIS Adapter"
        raise AdapterError(
            f"this file holds {methods}, not what '{node_label}' loads; use '{suggestion}' "
            f"(or 'Load LyCORIS Adapter', which takes every method)",
            file=adapter.path,
        )


class _LoaderBase(io.ComfyNode):
    """Shared schema and execution of the MODEL+CLIP loaders; subclasses set ids and the accepted methods."""

    NODE_ID = ""
    DISPLAY = ""
    METHODS: frozenset | None = None
    DESCRIPTION = ""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                adapter_input(),
                strength_input("strength_model", "Strength on the diffusion model (0 = off)."),
                strength_input("strength_clip", "Strength on the text encoder (0 = off)."),
                _bypass_input(),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, model, clip, adapter_name, strength_model, strength_clip, bypass=False):
        adapter = load_cached(adapter_name)
        _check_methods(adapter, cls.METHODS, cls.DISPLAY)
        if strength_model == 0 and strength_clip == 0:
            text = f"{adapter_name}: both strengths are 0, nothing applied"
            return io.NodeOutput(model, clip, text, ui=ui.PreviewText(text))
        load = apply_bypass if bypass else apply_adapter
        new_model, new_clip, coverage = load(adapter, model, clip, strength_model, strength_clip)
        text = coverage.details()
        return io.NodeOutput(new_model, new_clip, text, ui=ui.PreviewText(text))


class LoadAdapter(_LoaderBase):
    NODE_ID, DISPLAY = "LyCOLoadAdapter", "Load LyCORIS Adapter"
    DESCRIPTION = (
        "Applies any LoRA/LoCon, LoHa, LoKr, OFT, BOFT, GLoRA, (IA)³, full/norm or DoRA adapter from "
        "LyCORIS/kohya, PEFT, diffusers or ComfyUI files exactly as it was trained."
    )


def _method_loaders() -> list[type[_LoaderBase]]:
    """One node per dedicated loader the methods declare (``LyCOLoad<key>``), taking the methods that name it."""
    methods: dict[Loader, set[str]] = {}
    for algo, loader in _LOADER_OF.items():
        methods.setdefault(loader, set()).add(algo)
    return [
        type(
            f"Load{loader.key}",
            (_LoaderBase,),
            {
                "NODE_ID": f"LyCOLoad{loader.key}",
                "DISPLAY": loader.title,
                "METHODS": frozenset(algos),
                "DESCRIPTION": loader.description,
                "__module__": __name__,
            },
        )
        for loader, algos in methods.items()
    ]


class LoadAdapterModelOnly(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOLoadAdapterModelOnly",
            display_name="Load LyCORIS Adapter (model only)",
            category=CATEGORY,
            description="Applies an adapter's diffusion-model modules; text-encoder modules are reported, not applied.",
            inputs=[
                io.Model.Input("model"),
                adapter_input(),
                strength_input("strength_model", "Strength on the diffusion model (0 = off)."),
                _bypass_input(),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, model, adapter_name, strength_model, bypass=False):
        adapter = load_cached(adapter_name)
        if strength_model == 0:
            text = f"{adapter_name}: strength 0, nothing applied"
            return io.NodeOutput(model, text, ui=ui.PreviewText(text))
        load = apply_bypass if bypass else apply_adapter
        new_model, _, coverage = load(adapter, model, None, strength_model, 0.0)
        text = coverage.details()
        return io.NodeOutput(new_model, text, ui=ui.PreviewText(text))


LOADERS = [LoadAdapter, LoadAdapterModelOnly, *_method_loaders()]
