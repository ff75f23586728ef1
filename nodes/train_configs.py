"""One config node per training method: typed widgets (with tooltips) for every field of the lyco_core.train
config, output ``LYCO_TRAIN_CONFIG`` for ``LyCOTrain``.

Text fields that take module names: empty = the default, ``all-linear``, ``re:<regex>`` (must match the whole
module name), or a comma-separated list of names / dotted name suffixes. Patterns are JSON objects
``{"<regex>": value}``. Names are ComfyUI's own module paths, e.g. ``diffusion_model.input_blocks.1.1.
transformer_blocks.0.attn1.to_q`` and ``clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj``.
"""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..lyco_core.train import BOFTConfig, GLoRAConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

CATEGORY = "training/LyCORIS"
CONFIG_TYPE = io.Custom("LYCO_TRAIN_CONFIG")
DEFAULT_TARGETS = "to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2, q_proj, k_proj, v_proj, out_proj, fc1, fc2"
_NAMES_HELP = (
    "Empty = every Linear and Conv layer; 'all-linear' = every Linear except the output layer; "
    "'re:<regex>' = names the regex matches in full; else comma-separated names or dotted name suffixes "
    "(UNet names such as to_q, ff.net.2, proj_in; CLIP names such as q_proj, fc1)."
)


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


def _r(default=8):
    return io.Int.Input(
        "r",
        default=default,
        min=1,
        max=1024,
        tooltip="Rank of the factors (per module unless "
        "rank_pattern says otherwise). Where r·(out + in) would reach the layer's own size, a dense "
        "delta is trained instead.",
    )


def _alpha(name="alpha"):
    return io.Float.Input(
        name,
        default=8.0,
        min=0.0,
        max=4096.0,
        step=0.5,
        tooltip="Scale numerator: ΔW carries alpha/r (alpha/√r with rsLoRA).",
    )


def _p(name, tip):
    return io.Float.Input(name, default=0.0, min=0.0, max=0.99, step=0.01, tooltip=tip)


_RANK_DROPOUT = "Per forward, each row of ΔW is dropped with this probability (training only)."
_MODULE_DROPOUT = "Per forward, the whole adapter of a layer is skipped with this probability (training only)."


def _patterns():
    return [
        io.String.Input(
            "rank_pattern",
            default="{}",
            tooltip='JSON {"<regex>": r}: per-module rank; the regex '
            "must match the end of the module name at a dot boundary (first match wins).",
        ),
        io.String.Input(
            "alpha_pattern",
            default="{}",
            tooltip='JSON {"<regex>": alpha}: per-module alpha, same matching as rank_pattern.',
        ),
    ]


def _variant(default="lycoris"):
    return io.Combo.Input(
        "variant",
        options=["lycoris", "peft"],
        default=default,
        tooltip="lycoris: LyCORIS' math (output-side rotations; saves as kohya/LyCORIS files that "
        "ComfyUI loads); peft: PEFT's math (input-side; saves as a PEFT folder).",
    )


def _targets():
    return [
        io.String.Input(
            "target_modules", default=DEFAULT_TARGETS, multiline=True, tooltip="Modules to adapt. " + _NAMES_HELP
        ),
        io.String.Input(
            "exclude_modules", default="", tooltip="Modules never adapted (wins over target_modules). " + _NAMES_HELP
        ),
        io.String.Input(
            "layers_to_transform",
            default="",
            tooltip="Comma-separated layer indices to keep (with a "
            "name list): the first '<layers_pattern>.<n>.' in a module name, or without a pattern the "
            "first '.<name>.<n>.' (e.g. diffusion_model.input_blocks.<n>.).",
        ),
        io.String.Input(
            "layers_pattern",
            default="",
            tooltip="Name of the layer list layers_to_transform counts in, e.g. input_blocks or layers.",
        ),
        io.String.Input(
            "modules_to_save",
            default="",
            tooltip="Comma-separated modules trained in full (weights and "
            "biases) and saved as full deltas, never adapted.",
        ),
    ]


def flag(value):
    """Combo choices "true"/"false" as booleans; other choices (and Boolean widgets) as they are."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


_CONVERTERS = {
    "target_modules": names,
    "exclude_modules": names,
    "feedforward_modules": names,
    "layers_to_transform": layers,
    "rank_pattern": pattern,
    "alpha_pattern": pattern,
    "layers_pattern": lambda t: t.strip() or None,
    "modules_to_save": lambda t: [p.strip() for p in t.split(",") if p.strip()] or None,
    "init_lora_weights": flag,
    "init_weights": flag,
}


class _ConfigNode(io.ComfyNode):
    NODE_ID = ""
    DISPLAY = ""
    CONFIG = LoraConfig
    DESCRIPTION = ""

    @classmethod
    def fields(cls) -> list:
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[*cls.fields(), *_targets()],
            outputs=[CONFIG_TYPE.Output(display_name="config")],
        )

    @classmethod
    def execute(cls, **values):
        kwargs = {k: _CONVERTERS.get(k, lambda v: v)(v) for k, v in values.items()}
        return io.NodeOutput(cls.CONFIG(**kwargs))


class LoRAConfigNode(_ConfigNode):
    NODE_ID, DISPLAY, CONFIG = "LyCOLoRAConfig", "LoRA Config", LoraConfig
    DESCRIPTION = "LoRA / LoCon (DoRA, rsLoRA, balanced conv) with PEFT's LoraConfig fields."

    @classmethod
    def fields(cls):
        return [
            _r(),
            _alpha("lora_alpha"),
            _p(
                "lora_dropout",
                "Dropout on the adapter's input features (training only). Acts where the layer "
                "runs the LoRA as a branch (lyco_core.wrap); ComfyUI's trainer applies adapters to the weight, "
                "where it has no effect.",
            ),
            io.Boolean.Input("use_rslora", default=False, tooltip="Scale by alpha/√r instead of alpha/r."),
            io.Boolean.Input(
                "use_dora",
                default=False,
                tooltip="DoRA: learn each output row's magnitude separately from its direction.",
            ),
            io.Combo.Input(
                "init_lora_weights",
                options=["true", "gaussian", "false"],
                default="true",
                tooltip="true: down kaiming, up 0 (no change at start); gaussian: down N(0, 1/r); "
                "false: both random (changes the model at step 0).",
            ),
            io.Combo.Input(
                "conv_decomposition",
                options=["standard", "balanced"],
                default="standard",
                tooltip="balanced: a k×k conv is factored as (out·kh)×(in·kw) and runs as a 1×kw then "
                "a kh×1 convolution (saved as the equivalent rank r·kh LoCon).",
            ),
            *_patterns(),
        ]


def _lycoris_fields(rank_dropout_tip: str, tucker_tip: str, init_tip: str) -> list:
    """The widgets LoHa and LoKr share."""
    return [
        _r(),
        _alpha(),
        _p("rank_dropout", rank_dropout_tip),
        _p("module_dropout", _MODULE_DROPOUT),
        io.Boolean.Input("use_effective_conv2d", default=False, tooltip=tucker_tip),
        io.Combo.Input("init_weights", options=["true", "lycoris", "false"], default="true", tooltip=init_tip),
        *_patterns(),
    ]


class LoHaConfigNode(_ConfigNode):
    NODE_ID, DISPLAY, CONFIG = "LyCOLoHaConfig", "LoHa Config", LoHaConfig
    DESCRIPTION = "LoHa (Hadamard product of two low-rank products) with PEFT's LoHaConfig fields."

    @classmethod
    def fields(cls):
        return _lycoris_fields(
            _RANK_DROPOUT + " Kept rows are rescaled by the kept fraction.",
            "Tucker cores for k×k convolutions (fewer values than flattened factors).",
            "true: w2_b 0 (PEFT); lycoris: LyCORIS' normal init, w2_a 0; false: random.",
        )


class LoKrConfigNode(_ConfigNode):
    NODE_ID, DISPLAY, CONFIG = "LyCOLoKrConfig", "LoKr Config", LoKrConfig
    DESCRIPTION = "LoKr (Kronecker product) with PEFT's LoKrConfig fields."

    @classmethod
    def fields(cls):
        return [
            *_lycoris_fields(
                _RANK_DROPOUT,
                "Tucker core for the second factor of k×k convolutions.",
                "true: first factor 0 (PEFT); lycoris: second factor 0; false: random.",
            ),
            io.Boolean.Input(
                "rank_dropout_scale",
                default=False,
                tooltip="Rescale kept rows by the kept fraction when rank dropout is on.",
            ),
            io.Boolean.Input(
                "decompose_both",
                default=False,
                tooltip="Also split the first (left) Kronecker factor into two rank-r factors.",
            ),
            io.Int.Input(
                "decompose_factor",
                default=-1,
                min=-1,
                max=8192,
                tooltip="Kronecker split: a factor that divides the dimension is used as is; -1 = the "
                "split closest to the square root.",
            ),
        ]


class OFTConfigNode(_ConfigNode):
    NODE_ID, DISPLAY, CONFIG = "LyCOOFTConfig", "OFT Config", OFTConfig
    DESCRIPTION = "Orthogonal fine-tuning (block-diagonal rotations), LyCORIS' or PEFT's variant."

    @classmethod
    def fields(cls):
        return [
            _variant(),
            io.Int.Input("r", default=0, min=0, max=4096, tooltip="Number of blocks (0 = use oft_block_size)."),
            io.Int.Input(
                "oft_block_size",
                default=32,
                min=0,
                max=4096,
                tooltip="Block size (0 = use r); moved to a divisor of the dimension if needed.",
            ),
            _p(
                "module_dropout",
                "peft: this share of blocks becomes identity per forward; lycoris: the "
                "adapter is skipped with this probability.",
            ),
            io.Boolean.Input("init_weights", default=True, tooltip="true: rotations start at identity."),
            io.Float.Input(
                "constraint",
                default=0.0,
                min=0.0,
                max=10.0,
                step=1e-4,
                tooltip="lycoris: bound on the rotation (‖Q‖ ≤ constraint·out); 0 = none.",
            ),
            io.Boolean.Input("rescaled", default=False, tooltip="lycoris: also learn a per-row scale."),
            io.Boolean.Input("coft", default=OFTConfig.coft, tooltip="peft: constrained OFT (blocks stay near I)."),
            io.Float.Input("eps", default=OFTConfig.eps, min=0.0, max=1.0, step=1e-5, tooltip="peft: coft radius."),
            io.Boolean.Input(
                "block_share", default=OFTConfig.block_share, tooltip="peft: one rotation shared by all blocks."
            ),
            io.Boolean.Input(
                "use_cayley_neumann",
                default=OFTConfig.use_cayley_neumann,
                tooltip="peft: Cayley–Neumann series instead of the exact inverse.",
            ),
            io.Int.Input(
                "num_cayley_neumann_terms",
                default=OFTConfig.num_cayley_neumann_terms,
                min=1,
                max=32,
                tooltip="peft: terms of the Cayley–Neumann series.",
            ),
        ]


class BOFTConfigNode(_ConfigNode):
    NODE_ID, DISPLAY, CONFIG = "LyCOBOFTConfig", "BOFT Config", BOFTConfig
    DESCRIPTION = "Butterfly OFT, LyCORIS' or PEFT's variant."

    @classmethod
    def fields(cls):
        return [
            _variant(),
            io.Int.Input(
                "boft_block_size",
                default=4,
                min=0,
                max=4096,
                tooltip="Block size (0 = use boft_block_num); lycoris: the largest even size up to this "
                "that leaves a power-of-two block count.",
            ),
            io.Int.Input("boft_block_num", default=0, min=0, max=4096, tooltip="peft: number of blocks."),
            io.Int.Input(
                "boft_n_butterfly_factor",
                default=1,
                min=1,
                max=16,
                tooltip="peft: butterfly factors (lycoris derives its stages from the block count).",
            ),
            _p("boft_dropout", "peft: blocks of one factor set to identity per forward; lycoris: skip."),
            io.Boolean.Input("init_weights", default=True, tooltip="true: rotations start at identity."),
            io.Float.Input(
                "constraint",
                default=0.0,
                min=0.0,
                max=10.0,
                step=1e-4,
                tooltip="lycoris: bound on the rotation (‖Q‖ ≤ constraint·out); 0 = none.",
            ),
            io.Boolean.Input("rescaled", default=False, tooltip="lycoris: also learn a per-row scale."),
        ]


class GLoRAConfigNode(_ConfigNode):
    NODE_ID, DISPLAY, CONFIG = "LyCOGLoRAConfig", "GLoRA Config", GLoRAConfig
    DESCRIPTION = "GLoRA (LyCORIS): ΔW = (alpha/r)·(W·A + B) with low-rank A and B."

    @classmethod
    def fields(cls):
        return [
            _r(),
            _alpha(),
            _p("module_dropout", _MODULE_DROPOUT),
            io.Boolean.Input("init_weights", default=True, tooltip="true: no change at start."),
            *_patterns(),
        ]


class IA3ConfigNode(_ConfigNode):
    NODE_ID, DISPLAY, CONFIG = "LyCOIA3Config", "(IA)³ Config", IA3Config
    DESCRIPTION = "(IA)³: a learned gain per channel."

    @classmethod
    def fields(cls):
        return [
            _variant(),
            io.String.Input(
                "feedforward_modules",
                default="ff.net.2, fc2",
                tooltip="Modules whose gain acts on input channels (others: output channels). " + _NAMES_HELP,
            ),
            io.Boolean.Input("init_ia3_weights", default=True, tooltip="true: gain 1 (no change at start)."),
        ]


CONFIG_NODES = [
    LoRAConfigNode,
    LoHaConfigNode,
    LoKrConfigNode,
    OFTConfigNode,
    BOFTConfigNode,
    GLoRAConfigNode,
    IA3ConfigNode,
]
