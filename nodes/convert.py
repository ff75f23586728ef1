"""Conversion nodes: an ADAPTER (``LYCO_ADAPTER``, a lyco_core Adapter) flows between them, so a graph can load →
convert → to-LoRA/resize/merge → save, or apply the result straight away without touching disk.

Every node returns a STRING report (what changed, the per-module and total relative error of lossy steps, the
output path) and shows it in the node; long steps advance ComfyUI's progress bar per module and stop on Cancel.
Weight-dependent methods (OFT, BOFT, GLoRA, IA3, DoRA) take their base weights from the connected MODEL/CLIP.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..lyco_core import save_adapter
from ..lyco_core.convert import LAYOUTS, RankPolicy, convert, extract, merge, resize, to_lora
from ..lyco_core.convert.names import COMPONENTS
from .convert_host import (
    NodeProgress,
    bake_patches,
    base_source,
    extraction_names,
    extraction_states,
    module_paths,
    save_target,
)
from .host import adapter_names, apply_adapter, load_cached
from .info import describe
from .loaders import STRENGTH

ADAPTER = io.Custom("LYCO_ADAPTER")
CATEGORY = "loaders/LyCORIS/convert"
_REPORT_LINES = 30


def _progress(cls) -> NodeProgress:
    """Progress and cancellation for this node (its id is known when the executor runs it)."""
    return NodeProgress(getattr(cls.hidden, "unique_id", None))


def _done(*outputs, text: str) -> io.NodeOutput:
    return io.NodeOutput(*outputs, text, ui=ui.PreviewText(text))


def _report(report, notes: list[str]) -> str:
    report.notes.extend(notes)
    return report.text(limit=_REPORT_LINES)


def _policy_inputs() -> list:
    return [
        io.Combo.Input(
            "rank_mode",
            options=["rank", "energy", "ratio"],
            default="rank",
            tooltip="rank: a fixed rank; energy: the smallest rank keeping this fraction of ‖ΔW‖²; "
            "ratio: keep singular values ≥ fraction × the largest",
        ),
        io.Int.Input("rank", default=16, min=1, max=4096, tooltip="the rank (rank mode), or a cap (others)"),
        io.Float.Input(
            "fraction",
            default=0.99,
            min=0.001,
            max=1.0,
            step=0.001,
            tooltip="kept energy (energy mode) or singular-value ratio (ratio mode)",
        ),
        io.Int.Input("conv_rank", default=0, min=0, max=4096, tooltip="fixed rank for convolutions (0: as above)"),
        io.Boolean.Input("tucker", default=False, tooltip="Tucker-factor k×k convolutions (lora_mid)"),
    ]


def _policy(rank_mode: str, rank: int, fraction: float, conv_rank: int, tucker: bool) -> RankPolicy:
    fixed = rank_mode == "rank"
    return RankPolicy(
        rank=rank if fixed else None,
        energy=fraction if rank_mode == "energy" else None,
        ratio=fraction if rank_mode == "ratio" else None,
        conv_rank=conv_rank or None,
        max_rank=None if fixed else rank,
        tucker=tucker,
    )


def _model_inputs() -> list:
    return [
        io.Model.Input("model", optional=True, tooltip="base weights for OFT/BOFT/GLoRA/IA3/DoRA modules"),
        io.Clip.Input("clip", optional=True, tooltip="base weights of text-encoder modules"),
    ]


def _outputs() -> list:
    return [ADAPTER.Output(display_name="adapter"), io.String.Output(display_name="report")]


def _patching(clip_optional: bool) -> dict:
    """Inputs and outputs of the nodes that put an ADAPTER on MODEL/CLIP."""
    return dict(
        inputs=[
            io.Model.Input("model"),
            io.Clip.Input("clip", optional=clip_optional),
            ADAPTER.Input("adapter"),
            io.Float.Input("strength_model", **STRENGTH),
            io.Float.Input("strength_clip", **STRENGTH),
        ],
        outputs=[io.Model.Output(), io.Clip.Output(), io.String.Output(display_name="report")],
    )


class AdapterLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOAdapterLoad",
            display_name="Load Adapter (for conversion)",
            category=CATEGORY,
            description="Reads an adapter file or PEFT folder from the loras folders as an ADAPTER.",
            inputs=[io.Combo.Input("adapter_name", options=adapter_names())],
            outputs=_outputs(),
        )

    @classmethod
    def execute(cls, adapter_name):
        adapter = load_cached(adapter_name)
        return _done(adapter, text=describe(adapter))


class AdapterConvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOAdapterConvert",
            display_name="Convert Adapter Layout",
            category=CATEGORY,
            description="The same adapter spelled for LyCORIS/kohya, PEFT or diffusers, exactly; modules the target "
            "cannot express are refused by name (use To LoRA or a full merge). MODEL/CLIP give kohya "
            "names their module paths (diffusers spelling for SD1/SD2/SDXL UNets).",
            inputs=[
                ADAPTER.Input("adapter"),
                io.Combo.Input("layout", options=list(LAYOUTS), default="lycoris"),
                io.Combo.Input(
                    "component",
                    options=["auto", *COMPONENTS],
                    default="auto",
                    tooltip="model part of generic (lycoris_/PEFT) names, needed for diffusers",
                ),
                *_model_inputs(),
            ],
            outputs=_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, adapter, layout, component, model=None, clip=None):
        paths = module_paths(adapter, model, clip) if model is not None or clip is not None else None
        result, report = convert(
            adapter, layout, paths=paths, component=None if component == "auto" else component, progress=_progress(cls)
        )
        return _done(result, text=_report(report, []))


class _RankNode(io.ComfyNode):
    NODE_ID = DISPLAY = DESCRIPTION = ""
    CONVERSION = staticmethod(to_lora)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[ADAPTER.Input("adapter"), *_policy_inputs(), *_model_inputs()],
            outputs=_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, adapter, rank_mode, rank, fraction, conv_rank, tucker, model=None, clip=None):
        notes: list[str] = []
        result, report = cls.CONVERSION(
            adapter,
            _policy(rank_mode, rank, fraction, conv_rank, tucker),
            base=base_source(model, clip, notes),
            progress=_progress(cls),
        )
        return _done(result, text=_report(report, notes))


class AdapterToLoRA(_RankNode):
    NODE_ID, DISPLAY = "LyCOAdapterToLoRA", "Adapter to LoRA"
    DESCRIPTION = (
        "Every module (LoHa, LoKr, OFT, BOFT, GLoRA, IA3, full, DoRA) as a plain LoRA/LoCon by truncated "
        "SVD of its delta; reports each module's relative error. Weight-dependent methods need MODEL/CLIP."
    )
    CONVERSION = staticmethod(to_lora)


class AdapterResize(_RankNode):
    NODE_ID, DISPLAY = "LyCOAdapterResize", "Resize Adapter"
    DESCRIPTION = (
        "Changes the rank of any adapter: LoRA on its factors (DoRA kept), other methods through their "
        "rebuilt delta; reports each module's relative error."
    )
    CONVERSION = staticmethod(resize)


class AdapterMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        slots = []
        for i in range(1, 5):
            slots += [ADAPTER.Input(f"adapter_{i}", optional=i > 2), io.Float.Input(f"weight_{i}", **STRENGTH)]
        return io.Schema(
            node_id="LyCOAdapterMerge",
            display_name="Merge Adapters",
            category=CATEGORY,
            description="2–4 adapters of any methods, weighted, into one LoRA (SVD of the summed deltas) or one "
            "exact full-diff adapter; applied in order, as chained loaders would.",
            inputs=[
                *slots,
                io.Combo.Input("output", options=["lora", "full diff"], default="lora"),
                *_policy_inputs(),
                *_model_inputs(),
            ],
            outputs=_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        adapter_1,
        weight_1,
        adapter_2,
        weight_2,
        output,
        rank_mode,
        rank,
        fraction,
        conv_rank,
        tucker,
        adapter_3=None,
        weight_3=1.0,
        adapter_4=None,
        weight_4=1.0,
        model=None,
        clip=None,
    ):
        pairs = [
            (a, w)
            for a, w in ((adapter_1, weight_1), (adapter_2, weight_2), (adapter_3, weight_3), (adapter_4, weight_4))
            if a is not None
        ]
        policy = None if output == "full diff" else _policy(rank_mode, rank, fraction, conv_rank, tucker)
        notes: list[str] = []
        result, report = merge(
            [a for a, _ in pairs],
            [w for _, w in pairs],
            policy,
            base=base_source(model, clip, notes),
            progress=_progress(cls),
        )
        return _done(result, text=_report(report, notes))


class ExtractAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOExtractAdapter",
            display_name="Extract Adapter",
            category=CATEGORY,
            description="tuned − base as a LoRA/LoCon (SVD) or a LoKr (nearest Kronecker product), named as ComfyUI "
            "and kohya expect; reports each module's relative error.",
            inputs=[
                io.Model.Input("base_model"),
                io.Model.Input("tuned_model"),
                io.Clip.Input("base_clip", optional=True),
                io.Clip.Input("tuned_clip", optional=True),
                io.Combo.Input("method", options=["lora", "lokr"], default="lora"),
                io.Int.Input("factor", default=-1, min=-1, max=1024, tooltip="LoKr factor (−1: balanced)"),
                *_policy_inputs(),
            ],
            outputs=_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        base_model,
        tuned_model,
        method,
        factor,
        rank_mode,
        rank,
        fraction,
        conv_rank,
        tucker,
        base_clip=None,
        tuned_clip=None,
    ):
        clips = (base_clip, tuned_clip) if base_clip is not None and tuned_clip is not None else (None, None)
        result, report = extract(
            extraction_states(base_model, clips[0]),
            extraction_states(tuned_model, clips[1]),
            _policy(rank_mode, rank, fraction, conv_rank, tucker),
            method=method,
            factor=factor,
            name_of=extraction_names(base_model, clips[0]),
            progress=_progress(cls),
        )
        return _done(result, text=_report(report, []))


class SaveAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOSaveAdapter",
            display_name="Save Adapter",
            category=CATEGORY,
            is_output_node=True,
            description="Writes the ADAPTER into ComfyUI's loras folder (so every loader lists it) with kohya/"
            "modelspec metadata and hashes; atomic, and never overwrites unless asked.",
            inputs=[
                ADAPTER.Input("adapter"),
                io.String.Input("name", default="lyco/adapter", tooltip="path inside the loras folder"),
                io.Combo.Input("layout", options=list(LAYOUTS), default="lycoris"),
                io.Combo.Input("dtype", options=["fp16", "bf16", "fp32", "as is"], default="fp16"),
                io.Boolean.Input("overwrite", default=False),
            ],
            outputs=[io.String.Output(display_name="path")],
        )

    @classmethod
    def execute(cls, adapter, name, layout, dtype, overwrite):
        path = save_adapter(
            adapter, save_target(name, layout), layout, overwrite=overwrite, dtype=None if dtype == "as is" else dtype
        )
        text = f"saved {len(adapter.modules)} modules as {layout} ({dtype}) to {path}"
        return io.NodeOutput(str(path), ui=ui.PreviewText(text))


class ApplyAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOApplyAdapter",
            display_name="Apply Adapter",
            category=CATEGORY,
            description="Patches MODEL/CLIP with an ADAPTER exactly as the loaders do (each method's strength law).",
            **_patching(clip_optional=True),
        )

    @classmethod
    def execute(cls, model, adapter, strength_model, strength_clip, clip=None):
        new_model, new_clip, coverage = apply_adapter(adapter, model, clip, strength_model, strength_clip)
        return _done(new_model, new_clip, text=coverage.details())


class BakeCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOBakeCheckpoint",
            display_name="Bake Adapter into Model",
            category=CATEGORY,
            description="Computes the adapted weights now and sets them on MODEL/CLIP clones, so Save Checkpoint "
            "writes a checkpoint with the adapter baked in (keys are the model's own).",
            **_patching(clip_optional=False),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, adapter, strength_model, strength_clip):
        new_model, new_clip, baked = bake_patches(adapter, model, clip, strength_model, strength_clip, _progress(cls))
        text = f"baked {baked} of {len(adapter.modules)} modules (model ×{strength_model:g}, clip ×{strength_clip:g})"
        return _done(new_model, new_clip, text=text)


CONVERT_NODES = [
    AdapterLoad,
    AdapterConvert,
    AdapterToLoRA,
    AdapterResize,
    AdapterMerge,
    ExtractAdapter,
    SaveAdapter,
    ApplyAdapter,
    BakeCheckpoint,
]
