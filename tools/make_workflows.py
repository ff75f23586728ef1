#!/usr/bin/env python3
"""Build ``example_workflows/*.json`` (ComfyUI templates) from one compact description, so they stay consistent.

Each workflow is what the ComfyUI frontend saves (litegraph "UI format", version 0.4): CheckpointLoaderSimple with the
tiny test checkpoint -> one of our nodes (with a demo adapter of its method) -> CLIPTextEncode ×2 -> EmptyLatentImage
64×64 -> KSampler (4 steps, euler) -> VAEDecode -> SaveImage, our STRING output shown by core's ``PreviewAny`` ("Preview
as Text", comfy_extras/nodes_preview_any.py), and a Note that opens with the template's one-line summary (``SUMMARIES``)
and says what to swap in. ``lyco_load_adapter`` (the one the demo and the README open first) also renders the same seed
without the adapter and previews *with | without | difference* in one PreviewImage (ImageBlend "difference" both ways,
joined by "screen"; ImageStitch). Adapter Info's template has no PreviewAny: its facts show in the node (info panel,
then its summary). The training template trains a LoKr on a VAE-encoded solid image (EmptyImage → VAEEncode), plots its
loss and renders with the trained MODEL. The conversion template loads the demo LoKr as an ADAPTER, turns it into a LoRA
(Adapter to LoRA, MODEL/CLIP connected), saves that into ``loras`` and renders with it through Apply Adapter. ComfyUI
serves every ``example_workflows/*.json`` of a pack as a template (``GET /api/workflow_templates`` lists them, the files
are under ``/api/workflow_templates/<pack folder>/<name>.json``). The demo (``scripts/demo.sh``) provides the checkpoint
and the ``lyco_demo_*`` adapters, so every template runs as is there and in CI.

Usage::

    python tools/make_workflows.py            # (re)write example_workflows/*.json
    python tools/make_workflows.py --check    # exit 1 if a committed file differs from the description

``to_api(ui_workflow)`` turns a saved workflow into the API format ``POST /prompt`` takes (tests run the templates
that way); ``NODE_DEFS`` lists each node's link inputs, widgets (in ``widgets_values`` order) and outputs as
ComfyUI 0.3.75 defines them (tests compare them with ``GET /object_info``). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "example_workflows"

CKPT = "tiny_sd15.safetensors"
DEMO = {
    "lokr": "lyco_demo_lokr.safetensors",
    "loha": "lyco_demo_loha.safetensors",
    "oft": "lyco_demo_oft.safetensors",
    "lora": "lyco_demo_lora.safetensors",
}  # = tools/demo_assets.DEMO_ADAPTERS
CONTROL = "control_after_generate"  # the frontend's extra widget after a seed; not an input of the node
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # virtual nodes: never sent to the server

# type -> link inputs [(name, type)], widgets (widgets_values order), outputs [(name, type)], default size
_LOADER_OUT = [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("summary", "STRING")]
_LOADER = dict(
    inputs=[("model", "MODEL"), ("clip", "CLIP")],
    widgets=["adapter_name", "strength_model", "strength_clip", "bypass"],
    outputs=_LOADER_OUT,
    size=[340, 154],
)
NODE_DEFS: dict[str, dict] = {
    "CheckpointLoaderSimple": dict(
        inputs=[], widgets=["ckpt_name"], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], size=[315, 98]
    ),
    "CLIPTextEncode": dict(
        inputs=[("clip", "CLIP")], widgets=["text"], outputs=[("CONDITIONING", "CONDITIONING")], size=[400, 200]
    ),
    "EmptyLatentImage": dict(
        inputs=[], widgets=["width", "height", "batch_size"], outputs=[("LATENT", "LATENT")], size=[315, 106]
    ),
    "KSampler": dict(
        inputs=[
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ],
        widgets=["seed", CONTROL, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        outputs=[("LATENT", "LATENT")],
        size=[315, 262],
    ),
    "VAEDecode": dict(
        inputs=[("samples", "LATENT"), ("vae", "VAE")], widgets=[], outputs=[("IMAGE", "IMAGE")], size=[210, 46]
    ),
    "SaveImage": dict(inputs=[("images", "IMAGE")], widgets=["filename_prefix"], outputs=[], size=[320, 360]),
    "PreviewAny": dict(inputs=[("source", "*")], widgets=[], outputs=[], size=[340, 200]),
    "PreviewImage": dict(inputs=[("images", "IMAGE")], widgets=[], outputs=[], size=[440, 280]),
    "ImageBlend": dict(
        inputs=[("image1", "IMAGE"), ("image2", "IMAGE")],
        widgets=["blend_factor", "blend_mode"],
        outputs=[("IMAGE", "IMAGE")],
        size=[315, 102],
    ),
    "ImageStitch": dict(
        inputs=[("image1", "IMAGE"), ("image2", "IMAGE")],
        widgets=["direction", "match_image_size", "spacing_width", "spacing_color"],
        outputs=[("IMAGE", "IMAGE")],
        size=[315, 150],
    ),
    "Note": dict(inputs=[], widgets=["text"], outputs=[], size=[340, 170]),
    "LyCOLoadAdapter": _LOADER,
    "LyCOLoadLoKr": _LOADER,
    "LyCOLoadLoHa": _LOADER,
    "LyCOLoadOFT": _LOADER,
    "LyCOLoadLoRA": _LOADER,
    "LyCOLoadAdapterModelOnly": dict(
        inputs=[("model", "MODEL")],
        widgets=["adapter_name", "strength_model", "bypass"],
        outputs=[("MODEL", "MODEL"), ("summary", "STRING")],
        size=[340, 130],
    ),
    "LyCOAdapterInfo": dict(
        inputs=[("model", "MODEL"), ("clip", "CLIP")],
        widgets=["adapter_name"],
        outputs=[("info", "STRING")],
        size=[340, 100],
    ),
    "EmptyImage": dict(
        inputs=[], widgets=["width", "height", "batch_size", "color"], outputs=[("IMAGE", "IMAGE")], size=[315, 130]
    ),
    "VAEEncode": dict(
        inputs=[("pixels", "IMAGE"), ("vae", "VAE")], widgets=[], outputs=[("LATENT", "LATENT")], size=[210, 46]
    ),
    "LyCOLoKrConfig": dict(
        inputs=[],
        widgets=[
            "r",
            "alpha",
            "rank_dropout",
            "module_dropout",
            "use_effective_conv2d",
            "init_weights",
            "rank_pattern",
            "alpha_pattern",
            "rank_dropout_scale",
            "decompose_both",
            "decompose_factor",
            "target_modules",
            "exclude_modules",
            "layers_to_transform",
            "layers_pattern",
            "modules_to_save",
        ],
        outputs=[("config", "LYCO_TRAIN_CONFIG")],
        size=[340, 560],
    ),
    "LyCOTrain": dict(
        inputs=[
            ("model", "MODEL"),
            ("config", "LYCO_TRAIN_CONFIG"),
            ("latents", "LATENT"),
            ("positive", "CONDITIONING"),
            ("clip", "CLIP"),
            ("captions", "STRING"),
            ("resume_from", "LYCO_ADAPTER"),
        ],
        widgets=[
            "steps",
            "batch_size",
            "grad_accumulation",
            "learning_rate",
            "text_encoder_lr",
            "optimizer",
            "scheduler",
            "warmup_steps",
            "seed",
            CONTROL,
            "training_dtype",
            "gradient_checkpointing",
            "checkpoint_every",
            "name",
        ],
        outputs=[("model", "MODEL"), ("clip", "CLIP"), ("adapter", "LYCO_ADAPTER"), ("loss", "LOSS_MAP")],
        size=[360, 480],
    ),
    "LyCOLossPlot": dict(
        inputs=[("loss", "LOSS_MAP")], widgets=["smoothing"], outputs=[("image", "IMAGE")], size=[520, 360]
    ),
    "LyCOAdapterLoad": dict(
        inputs=[], widgets=["adapter_name"], outputs=[("adapter", "LYCO_ADAPTER"), ("report", "STRING")], size=[340, 80]
    ),
    "LyCOAdapterToLoRA": dict(
        inputs=[("adapter", "LYCO_ADAPTER"), ("model", "MODEL"), ("clip", "CLIP")],
        widgets=["rank_mode", "rank", "fraction", "conv_rank", "tucker"],
        outputs=[("adapter", "LYCO_ADAPTER"), ("report", "STRING")],
        size=[340, 250],
    ),
    "LyCOSaveAdapter": dict(
        inputs=[("adapter", "LYCO_ADAPTER")],
        widgets=["name", "layout", "dtype", "overwrite"],
        outputs=[("path", "STRING")],
        size=[340, 180],
    ),
    "LyCOApplyAdapter": dict(
        inputs=[("model", "MODEL"), ("clip", "CLIP"), ("adapter", "LYCO_ADAPTER")],
        widgets=["strength_model", "strength_clip"],
        outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("report", "STRING")],
        size=[340, 130],
    ),
}

POSITIVE = "a photo of a cat sitting on a windowsill, soft light"
NEGATIVE = "blurry, low quality"
SEED = 42
STEPS = 4

# --------------------------------------------------------------------------- the compact description
# Each workflow: (file stem, our node type, adapter file, note). Graph shapes below.
LOADER_WORKFLOWS = [
    (
        "lyco_load_adapter",
        "LyCOLoadAdapter",
        DEMO["lokr"],
        "Load LyCORIS Adapter takes any method (LoRA/LoCon, LoHa, LoKr, OFT/BOFT, GLoRA, (IA)³, DoRA, full/norm) "
        "from kohya/LyCORIS, PEFT, diffusers or ComfyUI files. Here: the demo LoKr.",
    ),
    (
        "lyco_load_adapter_model_only",
        "LyCOLoadAdapterModelOnly",
        DEMO["lokr"],
        "Model-only loader: applies the diffusion-model modules; text-encoder modules are reported, not applied.",
    ),
    (
        "lyco_load_lokr",
        "LyCOLoadLoKr",
        DEMO["lokr"],
        "Load LoKr refuses files of other methods and names the node to use instead.",
    ),
    (
        "lyco_load_loha",
        "LyCOLoadLoHa",
        DEMO["loha"],
        "Load LoHa refuses files of other methods and names the node to use instead.",
    ),
    (
        "lyco_load_oft",
        "LyCOLoadOFT",
        DEMO["oft"],
        "Load OFT (OFT and BOFT): the strength interpolates the rotation "
        "toward identity, applied once (core applies it twice).",
    ),
    (
        "lyco_load_lora",
        "LyCOLoadLoRA",
        DEMO["lora"],
        "Load LoRA / LoCon: LoRA and LoCon, incl. Tucker and DoRA, from any layout.",
    ),
]
INFO_WORKFLOW = (
    "lyco_adapter_info",
    DEMO["lokr"],
    "Adapter Info shows what a file holds (layout, methods, ranks, alphas, DoRA/Tucker, base model, "
    "trigger words) and, with a model/CLIP connected, which modules match it. The render beside it "
    "applies the same file.",
)
TRAIN_STEPS = 60  # lr 1e-2: the demo's mean loss over the first/last 15 steps falls about 22 → 10 (4 steps: noise)
TRAIN_WORKFLOW = (
    "lyco_train_lokr",
    "Train LyCORIS Adapter: a LoKr on two latents of a solid orange image (EmptyImage → VAEEncode) with "
    "its caption's conditioning; Plot Loss shows the curve; the KSampler renders with the trained "
    "adapter applied. Checkpoints land in output/lyco_train/<name>/ (listed among loras; feed one to "
    "resume_from via its ADAPTER). Other methods: swap the config node (LoRA, LoHa, OFT, BOFT, GLoRA, "
    "(IA)³). Connect clip and a captions list to train the text encoder too.\n\nWhat to expect: 60 steps at "
    "learning rate 1e-2 (seconds on a GPU, about a minute on a CPU). Each step's loss depends on the noise level "
    "drawn for it, so single steps jump up and down (2 one step, 70 the next); the smoothed curve in Plot Loss "
    "falls, and the "
    "Train node's summary gives the mean of the first and last 15 steps (about 22 → 10 in the demo). With your "
    "own images use more steps (hundreds) and a lower rate for LoRA/LoHa (1e-4 to 1e-3).",
)
TRAIN_WIDGETS = {
    "config": [
        4,
        4.0,
        0.0,
        0.0,
        False,
        "true",
        "{}",
        "{}",
        False,
        False,
        8,
        "to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2",
        "",
        "",
        "",
        "",
    ],
    "train": [TRAIN_STEPS, 2, 1, 1e-2, 5e-5, "AdamW", "constant", 0, SEED, "fixed", "fp32", False, 0, "lyco_template"],
}
CONVERT_WORKFLOW = (
    "lyco_convert_lokr_to_lora",
    DEMO["lokr"],
    "lyco/lyco_demo_lokr_as_lora",
    "Convert in the graph: Load Adapter (for conversion) reads the demo LoKr as an ADAPTER; Adapter "
    "to LoRA rebuilds every module as a LoRA by truncated SVD and reports each module's relative "
    "error ‖ΔW−ΔW′‖/‖ΔW‖ (rank 32 here: the demo's 8×8 w1 ⊗ rank-4 w2 has rank ≤ 32, so the LoRA is "
    "exact up to rounding; a lower rank trades size for error, the energy and ratio modes pick a rank"
    " per module); Save Adapter writes loras/lyco/lyco_demo_lokr_as_lora.safetensors (overwrite on, "
    "so re-running works), which every LoRA loader lists, ComfyUI's own LoraLoader too; Apply Adapter"
    " renders with the converted adapter without touching disk. Resize Adapter changes the rank of "
    "any adapter; Convert Adapter Layout rewrites it for PEFT or diffusers.",
)
# One line per template. The frontend's Templates dialog shows a custom pack's template by its file name only (title
# and description are both the name; 1.32.9, 1.49.6 and 1.58.1 read no metadata for them), so the line opens the
# template's note, where a person sees it once the template is open.
SUMMARIES = {
    "lyco_load_adapter": "Load any LyCORIS adapter and see its effect: the same seed with | without it | difference.",
    "lyco_load_adapter_model_only": "Load an adapter into the diffusion model only (no CLIP).",
    "lyco_load_lokr": "Load a LoKr file (other methods are refused with the right node's name).",
    "lyco_load_loha": "Load a LoHa file (other methods are refused with the right node's name).",
    "lyco_load_oft": "Load an OFT or BOFT file, its strength applied once.",
    "lyco_load_lora": "Load a LoRA / LoCon file (Tucker and DoRA included).",
    "lyco_adapter_info": "What an adapter file holds and which modules of the model it matches.",
    "lyco_train_lokr": "Train a LoKr in the graph, plot its loss and render with it.",
    "lyco_convert_lokr_to_lora": "Turn a LoKr into a LoRA, save it and render with it.",
}

# the workflow scripts/demo.sh and the README open first: it also renders the same seed without the adapter
COMPARE_WORKFLOW = "lyco_load_adapter"
COMPARE_NOTE = (
    "\n\nWhat you see: the preview on the right shows, for the same seed and prompt, the image with the adapter | "
    "without it | their difference (black = unchanged, bright = changed). The demo checkpoint is random, so both "
    "renders are noise; the difference is what shows the adapter's effect. Set both strengths to 0 and it turns "
    "black."
)
CONVERT_WIDGETS = {"to_lora": ["rank", 32, 0.99, 0, False], "save": ["lycoris", "fp16", True]}
NOTE_TAIL = (
    "\n\nRuns as is in the LyCO demo (scripts/demo.sh: tiny random SD1.5 checkpoint, lyco_demo_* "
    "adapters). In your own ComfyUI pick a real checkpoint and adapter, ~20 steps and 512×512."
)

# columns of the layout
_X = {"ckpt": 20, "ours": 380, "enc": 770, "ks": 1210, "dec": 1570, "save": 1820}


# prompts, latent -> KSampler -> VAEDecode (the checkpoint's VAE) -> SaveImage: the tail every workflow shares
_SAMPLING_LINKS = (
    ("pos", 0, "ksampler", "positive"),
    ("neg", 0, "ksampler", "negative"),
    ("latent", 0, "ksampler", "latent_image"),
    ("ksampler", 0, "decode", "samples"),
    ("ckpt", 2, "decode", "vae"),
    ("decode", 0, "save", "images"),
)


def _loader_widgets(loader: str, adapter: str) -> list:
    """widgets_values of our loader ``loader`` reading ``adapter`` at strength 1, merged (not bypass)."""
    return [adapter, 1.0, False] if loader == "LyCOLoadAdapterModelOnly" else [adapter, 1.0, 1.0, False]


def _txt2img(
    ours: str, ours_widgets: list, note: str, prefix: str, extra_nodes=(), extra_links=(), summary_preview=True
):
    """(nodes, links) of checkpoint -> ours -> encode ×2 -> latent -> KSampler -> decode -> save + (unless
    ``summary_preview`` is false) PreviewAny of ours' STRING output."""
    model_only = ours == "LyCOLoadAdapterModelOnly"
    nodes = [
        ("ckpt", "CheckpointLoaderSimple", (_X["ckpt"], 200), [CKPT], None),
        ("ours", ours, (_X["ours"], 200), ours_widgets, None),
        ("pos", "CLIPTextEncode", (_X["enc"], 60), [POSITIVE], "Positive"),
        ("neg", "CLIPTextEncode", (_X["enc"], 310), [NEGATIVE], "Negative"),
        ("latent", "EmptyLatentImage", (_X["enc"], 560), [64, 64, 1], None),
        ("ksampler", "KSampler", (_X["ks"], 200), [SEED, "fixed", STEPS, 7.0, "euler", "normal", 1.0], None),
        ("decode", "VAEDecode", (_X["dec"], 200), [], None),
        ("save", "SaveImage", (_X["save"], 200), [prefix], None),
        *([("preview", "PreviewAny", (_X["ours"], 700), [], "Summary")] if summary_preview else []),
        ("note", "Note", (_X["ckpt"], 420), [note + NOTE_TAIL], "About this workflow"),
        *extra_nodes,
    ]
    clip_src = ("ckpt", 1) if model_only else ("ours", 1)
    links = [
        ("ckpt", 0, "ours", "model"),
        *([] if model_only else [("ckpt", 1, "ours", "clip")]),
        (*clip_src, "pos", "clip"),
        (*clip_src, "neg", "clip"),
        ("ours", 0, "ksampler", "model"),
        *_SAMPLING_LINKS,
        *([("ours", 1 if model_only else 2, "preview", "source")] if summary_preview else []),
        *extra_links,
    ]
    return nodes, links


def descriptions() -> dict[str, tuple[list, list]]:
    """{file stem: (nodes, links)}; nodes (key, type, pos, widgets_values, title), links (src, slot, dst, input)."""
    out = {}
    for stem, ours, adapter, note in LOADER_WORKFLOWS:
        if stem == COMPARE_WORKFLOW:
            out[stem] = _txt2img(
                ours, _loader_widgets(ours, adapter), note + COMPARE_NOTE, prefix=stem, **_comparison()
            )
        else:
            out[stem] = _txt2img(ours, _loader_widgets(ours, adapter), note, prefix=stem)
    # Adapter Info shows the file's facts once: its info panel before a run, its own summary after one (a
    # PreviewAny of its text would repeat them on one line); the loader's coverage is in the loader's summary
    stem, adapter, note = INFO_WORKFLOW
    widgets = _loader_widgets("LyCOLoadAdapter", adapter)
    out[stem] = _txt2img(
        "LyCOLoadAdapter",
        widgets,
        note,
        prefix=stem,
        extra_nodes=[("info", "LyCOAdapterInfo", (_X["ckpt"], 700), [adapter], None)],
        extra_links=[("ckpt", 0, "info", "model"), ("ckpt", 1, "info", "clip")],
        summary_preview=False,
    )
    out[TRAIN_WORKFLOW[0]] = _training()
    out[CONVERT_WORKFLOW[0]] = _conversion()
    assert set(SUMMARIES) == set(out), sorted(set(SUMMARIES) ^ set(out))
    for stem, (nodes, _links) in out.items():  # each note opens with the template's one-line summary
        for i, (key, typ, pos, widgets, title) in enumerate(nodes):
            if typ == "Note":
                nodes[i] = (key, typ, pos, [f"{SUMMARIES[stem]}\n\n{widgets[0]}"], title)
    return out


def _comparison() -> dict:
    """Extra nodes and links (``_txt2img`` keywords) that render the same seed without the adapter (the
    checkpoint's own MODEL and CLIP, the same latent and sampler settings) and show, in one PreviewImage, the image
    with the adapter | without it | their difference |with − without|, joined side by side by two ImageStitch nodes.
    ImageBlend's "difference" is one-sided (max(image1 − image2, 0)), so the absolute difference is the two one-sided
    ones joined by "screen" (x + y − x·y, = x + y here: one of the two is 0 in every channel). Core nodes of ComfyUI
    0.3.75 and 0.33.0 alike."""
    y, cmp = 780, _X["save"] + 380  # below the latent (enc column) and the sampler (ks column); one more column
    sampler = [SEED, "fixed", STEPS, 7.0, "euler", "normal", 1.0]
    stitch = ["right", True, 4, "white"]
    nodes = [
        ("pos_base", "CLIPTextEncode", (_X["enc"], y), [POSITIVE], "Positive (no adapter)"),
        ("neg_base", "CLIPTextEncode", (_X["enc"], y + 250), [NEGATIVE], "Negative (no adapter)"),
        ("ksampler_base", "KSampler", (_X["ks"], y), sampler, "KSampler (no adapter, same seed)"),
        ("decode_base", "VAEDecode", (_X["dec"], y), [], "VAE Decode (no adapter)"),
        ("brighter", "ImageBlend", (_X["save"], 660), [1.0, "difference"], "with − without (≥ 0)"),
        ("darker", "ImageBlend", (_X["save"], 820), [1.0, "difference"], "without − with (≥ 0)"),
        ("difference", "ImageBlend", (_X["save"], 980), [1.0, "screen"], "|with − without|"),
        ("compare", "PreviewImage", (cmp, 200), [], "With adapter | without | difference"),
        ("stitch_pair", "ImageStitch", (cmp, 660), stitch, "with | without"),
        ("stitch_all", "ImageStitch", (cmp, 900), stitch, "with | without | difference"),
    ]
    links = [
        ("ckpt", 1, "pos_base", "clip"),
        ("ckpt", 1, "neg_base", "clip"),
        ("ckpt", 0, "ksampler_base", "model"),
        ("pos_base", 0, "ksampler_base", "positive"),
        ("neg_base", 0, "ksampler_base", "negative"),
        ("latent", 0, "ksampler_base", "latent_image"),
        ("ksampler_base", 0, "decode_base", "samples"),
        ("ckpt", 2, "decode_base", "vae"),
        ("decode", 0, "brighter", "image1"),
        ("decode_base", 0, "brighter", "image2"),
        ("decode_base", 0, "darker", "image1"),
        ("decode", 0, "darker", "image2"),
        ("brighter", 0, "difference", "image1"),
        ("darker", 0, "difference", "image2"),
        ("decode", 0, "stitch_pair", "image1"),
        ("decode_base", 0, "stitch_pair", "image2"),
        ("stitch_pair", 0, "stitch_all", "image1"),
        ("difference", 0, "stitch_all", "image2"),
        ("stitch_all", 0, "compare", "images"),
    ]
    return {"extra_nodes": nodes, "extra_links": links}


def _conversion() -> tuple[list, list]:
    """Load Adapter (for conversion) → Adapter to LoRA (MODEL/CLIP connected) → Save Adapter, and the converted
    ADAPTER → Apply Adapter → the txt2img chain; the conversion report in its own PreviewAny."""
    stem, adapter, target, note = CONVERT_WORKFLOW
    nodes, links = _txt2img(
        "LyCOApplyAdapter",
        [1.0, 1.0],
        note,
        prefix=stem,
        extra_nodes=[
            ("load", "LyCOAdapterLoad", (_X["ckpt"], 60), [adapter], None),
            ("to_lora", "LyCOAdapterToLoRA", (_X["ours"], 420), CONVERT_WIDGETS["to_lora"], None),
            ("save_adapter", "LyCOSaveAdapter", (_X["enc"], 720), [target, *CONVERT_WIDGETS["save"]], None),
            ("report", "PreviewAny", (_X["ks"], 520), [], "Conversion report"),
        ],
        extra_links=[
            ("load", 0, "to_lora", "adapter"),
            ("ckpt", 0, "to_lora", "model"),
            ("ckpt", 1, "to_lora", "clip"),
            ("to_lora", 0, "ours", "adapter"),
            ("to_lora", 0, "save_adapter", "adapter"),
            ("to_lora", 1, "report", "source"),
        ],
    )
    # room for what the nodes grow to once they show their info panel and run summary (about 380 px for Load
    # Adapter and Adapter to LoRA, 280 for Apply Adapter, title bars included; tests/browser checks no overlap)
    moved = {"ckpt": (_X["ckpt"], 60), "load": (_X["ckpt"], 230), "note": (_X["ckpt"], 680), "ours": (_X["ours"], 60)}
    moved |= {"to_lora": (_X["ours"], 400), "preview": (_X["ours"], 820)}
    return [(key, typ, moved.get(key, pos), *rest) for key, typ, pos, *rest in nodes], links


def _training() -> tuple[list, list]:
    """checkpoint → LoKr config + (EmptyImage → VAEEncode) + caption → Train → Plot Loss; KSampler on the trained
    MODEL → decode → save."""
    stem, note = TRAIN_WORKFLOW
    nodes = [
        ("ckpt", "CheckpointLoaderSimple", (_X["ckpt"], 200), [CKPT], None),
        ("config", "LyCOLoKrConfig", (_X["ckpt"], 420), TRAIN_WIDGETS["config"], None),
        ("image", "EmptyImage", (_X["ours"], -20), [64, 64, 2, 0xFF8000], "Training image"),
        ("encode_image", "VAEEncode", (_X["ours"], 200), [], None),
        ("pos", "CLIPTextEncode", (_X["ours"], 300), ["a solid orange square"], "Caption"),
        ("neg", "CLIPTextEncode", (_X["ours"], 560), [NEGATIVE], "Negative"),
        # Train grows by its run summary (to about 770 px, title included); the captions are 400 wide
        ("train", "LyCOTrain", (_X["enc"] + 40, 200), TRAIN_WIDGETS["train"], None),
        ("plot", "LyCOLossPlot", (_X["enc"] + 40, 1060), [0.9], None),
        ("latent", "EmptyLatentImage", (_X["ks"], 560), [64, 64, 1], None),
        ("ksampler", "KSampler", (_X["ks"], 200), [SEED, "fixed", STEPS, 7.0, "euler", "normal", 1.0], None),
        ("decode", "VAEDecode", (_X["dec"], 200), [], None),
        ("save", "SaveImage", (_X["save"], 200), [stem], None),
        ("note", "Note", (_X["ckpt"], 1060), [note + NOTE_TAIL], "About this workflow"),  # config: ~600 px tall
    ]
    links = [
        ("ckpt", 0, "train", "model"),
        ("config", 0, "train", "config"),
        ("image", 0, "encode_image", "pixels"),
        ("ckpt", 2, "encode_image", "vae"),
        ("encode_image", 0, "train", "latents"),
        ("ckpt", 1, "pos", "clip"),
        ("ckpt", 1, "neg", "clip"),
        ("pos", 0, "train", "positive"),
        ("train", 3, "plot", "loss"),
        ("train", 0, "ksampler", "model"),
        *_SAMPLING_LINKS,
    ]
    return nodes, links


# --------------------------------------------------------------------------- UI-format builder


def build(nodes: list, links: list) -> dict:
    """The litegraph workflow (what the frontend saves) of a compact (nodes, links) description."""
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(nodes)}
    types = {key: typ for key, typ, *_rest in nodes}
    link_rows = []
    in_links: dict[tuple[int, str], int] = {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n, (src, slot, dst, name) in enumerate(links, start=1):
        src_def, dst_def = NODE_DEFS[types[src]], NODE_DEFS[types[dst]]
        dst_names = [i for i, _ in dst_def["inputs"]]
        if name not in dst_names:
            raise ValueError(f"{types[dst]} has no link input {name!r}")
        out_type = src_def["outputs"][slot][1]
        in_type = dst_def["inputs"][dst_names.index(name)][1]
        if in_type not in ("*", out_type):
            raise ValueError(f"link {src}:{slot} ({out_type}) -> {dst}.{name} ({in_type})")
        link_rows.append([n, ids[src], slot, ids[dst], dst_names.index(name), out_type])
        in_links[(ids[dst], name)] = n
        out_links.setdefault((ids[src], slot), []).append(n)

    # execution order as the frontend stores it: a topological order of the (non-virtual) graph
    deps = {ids[k]: set() for k, *_ in nodes}
    for _n, s, _ss, d, _ds, _t in link_rows:
        deps[d].add(s)
    order, done = {}, set()
    while len(done) < len(deps):
        ready = sorted(i for i in deps if i not in done and deps[i] <= done)
        for i in ready:
            order[i] = len(order)
            done.add(i)

    ui_nodes = []
    for key, typ, pos, widgets, title in nodes:
        d = NODE_DEFS[typ]
        if len(widgets) != len(d["widgets"]):
            raise ValueError(f"{key} ({typ}): {len(widgets)} widget values for {d['widgets']}")
        nid = ids[key]
        node = {
            "id": nid,
            "type": typ,
            "pos": list(pos),
            "size": list(d["size"]),
            "flags": {},
            "order": order[nid],
            "mode": 0,
            "inputs": [{"name": name, "type": t, "link": in_links.get((nid, name))} for name, t in d["inputs"]],
            "outputs": [
                {"name": name, "type": t, "links": out_links.get((nid, slot), []), "slot_index": slot}
                for slot, (name, t) in enumerate(d["outputs"])
            ],
            "properties": {} if typ in FRONTEND_ONLY else {"Node name for S&R": typ},
            "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        if typ in FRONTEND_ONLY:
            node["color"], node["bgcolor"] = "#432", "#653"
        ui_nodes.append(node)
    return {
        "last_node_id": max(ids.values()),
        "last_link_id": len(link_rows),
        "nodes": ui_nodes,
        "links": link_rows,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.7, "offset": [80, 140]}},
        "version": 0.4,
    }


def to_api(workflow: dict) -> dict:
    """The API-format prompt (``POST /prompt``) of a UI-format workflow built from ``NODE_DEFS`` node types."""
    links = {row[0]: row for row in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        typ = node["type"]
        if typ in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        d = NODE_DEFS[typ]
        names = d["widgets"]
        inputs = {name: value for name, value in zip(names, node.get("widgets_values", [])) if name != CONTROL}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _n, src, src_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": typ, "inputs": inputs}
    return prompt


def render(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    p.add_argument("--out", default=str(OUT_DIR))
    a = p.parse_args(argv)
    out = Path(a.out)
    wanted = {f"{stem}.json": render(build(*desc)) for stem, desc in descriptions().items()}
    if a.check:
        stale = [
            name
            for name, text in wanted.items()
            if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
        ]
        extra = sorted(p.name for p in out.glob("lyco_*.json") if p.name not in wanted)
        for name in stale:
            print(f"out of date: {out / name}")
        for name in extra:
            print(f"not generated: {out / name}")
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (out / name).write_text(text, encoding="utf-8")
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
