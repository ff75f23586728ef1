"""How real trainers name adapter files, as small renamers (never through lyco_core's writers).

A ``Producer`` turns a module path (the host's own path, or the diffusers path from the host's conversion table,
per ``naming``) into the module name its files use, and a logical factor (``down``/``up``, ``w1``/``w2``/``w2_a``…,
``alpha``) into the tensor suffix. Where each naming comes from is cited per producer; the citation is of the
upstream project's file that writes those names (from its published source), not code copied from it.

Factors, per method, in the shapes the files hold (``out``/``in`` of the target weight or row slice):

* LoRA: ``down`` (r, in), ``up`` (out, r), ``alpha`` (scalar; ΔW = up·down·alpha/r, no alpha = scale 1);
* LoKr: ``w1`` (a1, a2) and either ``w2`` (b1, b2) (full: scale 1) or ``w2_a`` (b1, r) · ``w2_b`` (r, b2)
  (scale alpha/r); ΔW = kron(w1, w2);
* LoHa: ``w1_a`` (out, r), ``w1_b`` (r, in), ``w2_a``, ``w2_b``; ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b)·alpha/r;
* diag-OFT: ``oft_blocks`` (n, bs, bs), ``alpha`` (the constraint), optional ``rescale`` (out, 1); BOFT: 4-D
  ``oft_blocks`` (stages, n, bs, bs), same ``alpha``/``rescale`` (KohakuBlueleaf/LyCORIS lycoris/modules/
  diag_oft.py, boft.py ``weight_list``); W' comes from the reference library itself, not from a formula here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

# kohya-style tensor names (kohya-ss/sd-scripts networks/lora.py LoRAModule: lora_down/lora_up/alpha; LyCORIS
# KohakuBlueleaf/LyCORIS lycoris/modules/lokr.py and loha.py: lokr_w1, lokr_w2[_a/_b], hada_w1_a …, alpha)
KOHYA_SUFFIX = {
    "down": "lora_down.weight",
    "up": "lora_up.weight",
    "alpha": "alpha",
    "w1": "lokr_w1",
    "w2": "lokr_w2",
    "w2_a": "lokr_w2_a",
    "w2_b": "lokr_w2_b",
    "w1_a": "hada_w1_a",
    "w1_b": "hada_w1_b",
    "hw2_a": "hada_w2_a",
    "hw2_b": "hada_w2_b",
    "oft_blocks": "oft_blocks",
    "rescale": "rescale",
}
# PEFT LoRA tensors (huggingface/peft src/peft/tuners/lora/layer.py: lora_A / lora_B; no alpha in the file)
PEFT_SUFFIX = {"down": "lora_A.weight", "up": "lora_B.weight"}


def underscored(path: str) -> str:
    return path.replace(".", "_")


@dataclass(frozen=True)
class Producer:
    name: str  # label in the coverage table
    naming: str  # "native" (the host's module paths) or "diffusers" (the host's conversion table)
    prefix: str  # put before the module path
    underscore: bool  # dots of the path become "_" (kohya-style flat names)
    suffix: dict  # logical factor -> tensor suffix
    methods: tuple  # methods this producer writes
    lokr_full: bool = False  # LoKr with a full w2 (scale 1) instead of w2_a·w2_b
    source: str = ""
    rename: Callable[[str], str] | None = None  # the producer's own module names, from the host's path

    def module(self, path: str) -> str:
        path = self.rename(path) if self.rename else path
        return self.prefix + (underscored(path) if self.underscore else path)

    def tensor(self, path: str, factor: str) -> str:
        return f"{self.module(path)}.{self.suffix[factor]}"

    @property
    def has_alpha(self) -> bool:
        return "alpha" in self.suffix


# kohya-ss/sd-scripts networks/lora_flux.py (LoRANetwork.LORA_PREFIX_FLUX = "lora_unet", module names from the
# original Flux modules: lora_unet_double_blocks_0_img_attn_qkv, lora_unet_single_blocks_0_linear1), networks/lora.py
# for SDXL (lora_unet_ on its original-layout UNet: lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q),
# networks/lora_sd3.py (lora_unet_joint_blocks_0_x_block_attn_qkv).
KOHYA = Producer(
    "kohya sd-scripts",
    "native",
    "lora_unet_",
    True,
    KOHYA_SUFFIX,
    ("lora",),
    source="kohya-ss/sd-scripts networks/lora_flux.py, lora.py, lora_sd3.py",
)
# LyCORIS through kohya's trainer (KohakuBlueleaf/LyCORIS lycoris/kohya.py: the same lora_unet_ prefix and names;
# LoKr with a factorised w2 and alpha, LoHa with hada_* and alpha).
LYCORIS_KOHYA = Producer(
    "LyCORIS via kohya",
    "native",
    "lora_unet_",
    True,
    KOHYA_SUFFIX,
    ("lokr", "loha"),
    source="KohakuBlueleaf/LyCORIS lycoris/kohya.py",
)
# The same with algo=diag-oft / boft (LyCORIS lycoris/kohya.py names, tensors of lycoris/modules/diag_oft.py and
# boft.py: oft_blocks, alpha = the constraint, rescale when rescaled). kohya.py's UNET_TARGET_REPLACE_MODULE lists the
# block classes it wraps: sd-scripts' Flux and Chroma (library/flux_models.py, chroma_models.py: DoubleStreamBlock,
# SingleStreamBlock), SD3 (SingleDiTBlock), SDXL (Transformer2DModel, ResnetBlock2D), and musubi-tuner's below.
OFT_METHODS = ("oft", "boft")
LYCORIS_KOHYA_OFT = replace(LYCORIS_KOHYA, methods=OFT_METHODS)
# SimpleTuner's LyCORIS training (bghira/SimpleTuner, through KohakuBlueleaf/LyCORIS lycoris/wrapper.py
# LycorisNetwork, LORA_PREFIX = "lycoris", on the diffusers model's module names with "_": lycoris_transformer_
# blocks_0_attn_to_q); SimpleTuner's default lycoris config is LoKr with linear_dim 10000, i.e. full w1 and w2.
SIMPLETUNER = Producer(
    "SimpleTuner (LyCORIS)",
    "diffusers",
    "lycoris_",
    True,
    KOHYA_SUFFIX,
    ("lokr", "lora"),
    lokr_full=True,
    source="bghira/SimpleTuner + KohakuBlueleaf/LyCORIS lycoris/wrapper.py",
)
# SimpleTuner's LyCORIS config with algo diag-oft / boft (same lycoris_ names; on Flux to_q/to_k/to_v land on rows
# of the fused img_attn.qkv / single-block linear1).
SIMPLETUNER_OFT = replace(SIMPLETUNER, methods=OFT_METHODS, lokr_full=False)
# diffusers save_lora_weights (huggingface/diffusers src/diffusers/loaders/lora_pipeline.py: PEFT state dict of the
# transformer / unet, keys "transformer.<module>.lora_A.weight"); ai-toolkit (ostris/ai-toolkit, Flux LoRAs saved
# in the same diffusers/PEFT layout) writes the same names for Flux.
AI_TOOLKIT = Producer(
    "ai-toolkit / diffusers",
    "diffusers",
    "transformer.",
    False,
    PEFT_SUFFIX,
    ("lora",),
    source="ostris/ai-toolkit; huggingface/diffusers loaders/lora_pipeline.py",
)
DIFFUSERS_UNET = Producer(
    "diffusers",
    "diffusers",
    "unet.",
    False,
    PEFT_SUFFIX,
    ("lora",),
    source="huggingface/diffusers loaders/lora_pipeline.py (StableDiffusionXLPipeline)",
)
DIFFUSERS = Producer(
    "diffusers",
    "diffusers",
    "transformer.",
    False,
    PEFT_SUFFIX,
    ("lora",),
    source="huggingface/diffusers loaders/lora_pipeline.py (SD3LoraLoaderMixin)",
)
# ComfyUI's own trainer (comfyanonymous/ComfyUI comfy_extras/nodes_train.py: lora_sd[f"{n}.{name}"] for every
# named module n of the BaseModel, "diffusion_model.<path>"; parameter names of comfy/weight_adapter/lora.py
# (lora_up/lora_down Linear + alpha), lokr.py (full lokr_w1/lokr_w2 + alpha), loha.py (hada_* + alpha)).
COMFY_TRAINER = Producer(
    "ComfyUI trainer",
    "native",
    "diffusion_model.",
    False,
    KOHYA_SUFFIX,
    ("lora", "lokr", "loha"),
    lokr_full=True,
    source="comfyanonymous/ComfyUI comfy_extras/nodes_train.py",
)
# musubi-tuner (kohya-ss/musubi-tuner networks/lora_wan.py, lora_qwen_image.py: LORA_PREFIX "lora_unet" on the
# original model's module names, which for Wan 2.1 and Qwen-Image are the names ComfyUI uses).
MUSUBI = Producer(
    "musubi-tuner",
    "native",
    "lora_unet_",
    True,
    KOHYA_SUFFIX,
    ("lora",),
    source="kohya-ss/musubi-tuner networks/lora_wan.py, lora_qwen_image.py, lora.py",
)
# OneTrainer (Nerogar/OneTrainer): its LoRA/LoHa modules (modules/module/LoRAModule.py: LoRAModule lora_down/
# lora_up + alpha buffer; LoHaModule hada_w1_a/hada_w1_b/hada_w2_a/hada_w2_b + alpha) are held on the diffusers model
# under "lora_unet" / "lora_transformer" / "lora_te1" / "lora_te2"; the default safetensors save (modules/modelSaver/
# mixin/LoRASaverMixin.py: ModelFormat.SAFETENSORS without the OMI switch → convert_to_legacy_diffusers) writes the
# "legacy diffusers" names of modules/util/convert/lora/convert_lora_util.py (LoraConversionKeySet
# legacy_diffusers_prefix: the diffusers path with "_"): lora_unet_down_blocks_1_attentions_0_… for SDXL
# (convert_sdxl_lora.py), lora_transformer_transformer_blocks_0_attn_to_q for Flux (convert_flux_lora.py) and SD3
# (convert_sd3_lora.py). Later versions keep those names as the LEGACY_LORA format (modules/util/convert_lora_util.py
# convert_to_mixture, called by the SDXL/Flux/SD3 savers' _convert_legacy; TrainConfig migrates the old SAFETENSORS
# choice to it).
# LoKr too (modules/module/LoRAModule.py LoKrModule: parameters lokr_w1 (or lokr_w1_a/_b) and lokr_w2 (or
# lokr_w2_a/_b), an alpha buffer; ΔW = kron(w1, w2)·alpha/dim, alpha set to dim when w1 and w2 are both full;
# convert_lora_util.py kohya_flatten keeps lokr_*/hada_* as one-segment suffixes: <module>.lokr_w1). Its defaults
# (modules/util/config/TrainConfig.py: lokr_dim 16, lokr_decompose_factor -1, lokr_full_matrix False) give a full w2
# wherever 16 ≥ half of w2's larger side, as on these tiny models. OneTrainer's OFT (OFTModule: oft_R.weight, PEFT's
# packed skew form with a 5-term Cayley–Neumann series, plus an oft_R.scaled_oft marker for Scaled OFT) is not
# listed: no reference library here computes its merged weight.
ONETRAINER_UNET = Producer(
    "OneTrainer",
    "diffusers",
    "lora_unet_",
    True,
    KOHYA_SUFFIX,
    ("lora", "loha", "lokr"),
    lokr_full=True,
    source="Nerogar/OneTrainer modules/util/convert/lora/convert_sdxl_lora.py, convert_lora_util.py; "
    "modules/module/LoRAModule.py (LoKrModule)",
)
ONETRAINER_TRANSFORMER = replace(
    ONETRAINER_UNET,
    prefix="lora_transformer_",
    source="Nerogar/OneTrainer modules/util/convert/lora/convert_flux_lora.py, convert_sd3_lora.py",
)
# ai-toolkit on Wan / Qwen-Image (ostris/ai-toolkit: "diffusion_model.<original module>.lora_A.weight", the layout
# ComfyUI's own Wan/Qwen LoRAs use).
AI_TOOLKIT_DM = Producer(
    "ai-toolkit (diffusion_model.)",
    "native",
    "diffusion_model.",
    False,
    PEFT_SUFFIX,
    ("lora",),
    source="ostris/ai-toolkit",
)

# ai-toolkit on Z-Image (ostris/ai-toolkit: "diffusion_model.<diffusers module>.lora_A.weight" on the diffusers
# ZImageTransformer2DModel names, attention.to_q/to_k/to_v/to_out.0, feed_forward.w1 …).
AI_TOOLKIT_DIFFUSERS_DM = Producer(
    "ai-toolkit (diffusion_model.)",
    "diffusers",
    "diffusion_model.",
    False,
    PEFT_SUFFIX,
    ("lora",),
    source="ostris/ai-toolkit",
)
# musubi-tuner with LyCORIS (kohya-ss/musubi-tuner accepts --network_module lycoris.kohya: KohakuBlueleaf/LyCORIS
# lycoris/kohya.py, the same lora_unet_ names with lokr_*/hada_* tensors).
MUSUBI_LYCORIS = Producer(
    "musubi-tuner + LyCORIS",
    "native",
    "lora_unet_",
    True,
    KOHYA_SUFFIX,
    ("lokr", "loha"),
    source="kohya-ss/musubi-tuner + KohakuBlueleaf/LyCORIS lycoris/kohya.py",
)


def hunyuan_video_original(path: str) -> str:
    """HunyuanVideo's original module names (Tencent/HunyuanVideo hyvideo/modules/models.py: MMDoubleStreamBlock
    img_mod.linear, img_attn_qkv, img_attn_proj, img_mlp.fc1/fc2; MMSingleStreamBlock linear1/linear2,
    modulation.linear) from ComfyUI's (img_mod.lin, img_attn.qkv, img_attn.proj, img_mlp.0/2, modulation.lin)."""
    for ours, theirs in (
        ("_mod.lin", "_mod.linear"),
        ("_attn.qkv", "_attn_qkv"),
        ("_attn.proj", "_attn_proj"),
        ("_mlp.0", "_mlp.fc1"),
        ("_mlp.2", "_mlp.fc2"),
        (".modulation.lin", ".modulation.linear"),
    ):
        if path.endswith(ours):
            return path[: -len(ours)] + theirs
    return path


# diffusion-pipe (tdrussell/diffusion-pipe models/hunyuan_video.py: PEFT LoRA on the original HunyuanVideo
# transformer, saved as "transformer.<original module>.lora_A.weight", e.g. transformer.double_blocks.0.img_attn_qkv).
DIFFUSION_PIPE = Producer(
    "diffusion-pipe",
    "native",
    "transformer.",
    False,
    PEFT_SUFFIX,
    ("lora",),
    source="tdrussell/diffusion-pipe models/hunyuan_video.py",
    rename=hunyuan_video_original,
)

# musubi-tuner on HunyuanVideo (kohya-ss/musubi-tuner hunyuan_model/models.py keeps the original HunyuanVideo module
# names; networks/lora.py names them lora_unet_<module with _>: lora_unet_double_blocks_0_img_mod_linear,
# lora_unet_double_blocks_0_img_mlp_fc1, lora_unet_single_blocks_0_modulation_linear), plain and with LyCORIS.
MUSUBI_HUNYUAN = replace(
    MUSUBI, source="kohya-ss/musubi-tuner hunyuan_model/models.py, networks/lora.py", rename=hunyuan_video_original
)
MUSUBI_LYCORIS_HUNYUAN = replace(MUSUBI_LYCORIS, rename=hunyuan_video_original)
# musubi-tuner + LyCORIS with algo=diag-oft / boft: musubi-tuner's trainer (src/musubi_tuner/training/
# trainer_base.py) calls the network module's create_network when it has no create_arch_network, as lycoris/kohya.py;
# its UNET_TARGET_REPLACE_MODULE wraps musubi-tuner's WanAttentionBlock (wan/modules/model.py),
# QwenImageTransformerBlock (qwen_image/qwen_image_model.py), MMDoubleStreamBlock/MMSingleStreamBlock
# (hunyuan_model/models.py) and ZImageTransformerBlock (zimage/zimage_model.py), under lora_unet_.
MUSUBI_LYCORIS_OFT = replace(MUSUBI_LYCORIS, methods=OFT_METHODS)
MUSUBI_LYCORIS_HUNYUAN_OFT = replace(MUSUBI_LYCORIS_HUNYUAN, methods=OFT_METHODS)

# musubi-tuner on Z-Image: its model (src/musubi_tuner/zimage/zimage_model.py ZImageAttention) keeps q, k, v apart
# under diffusers' names (attention.to_q/to_k/to_v, to_out.0, feed_forward.w1 …), and networks/lora_zimage.py names
# them lora_unet_<module with _> (lora_unet_layers_0_attention_to_q): rows of ComfyUI's fused attention.qkv. Plain
# LoRA, LyCORIS (lycoris/kohya.py wraps ZImageTransformerBlock) and its OFT/BOFT.
MUSUBI_ZIMAGE = replace(
    MUSUBI, naming="diffusers", source="kohya-ss/musubi-tuner zimage/zimage_model.py, networks/lora_zimage.py"
)
MUSUBI_LYCORIS_ZIMAGE = replace(
    MUSUBI_LYCORIS,
    naming="diffusers",
    source="kohya-ss/musubi-tuner zimage/zimage_model.py + KohakuBlueleaf/LyCORIS lycoris/kohya.py",
)
MUSUBI_LYCORIS_ZIMAGE_OFT = replace(MUSUBI_LYCORIS_ZIMAGE, methods=OFT_METHODS)


def kohya_text_encoder(path: str) -> str:
    """kohya's SDXL text-encoder names (sd-scripts networks/lora.py: LORA_PREFIX_TEXT_ENCODER1 = "lora_te1" on
    CLIP-L, LORA_PREFIX_TEXT_ENCODER2 = "lora_te2" on bigG, then the transformers module path)."""
    encoder, rest = path.split(".", 1)
    return {"clip_l": "te1", "clip_g": "te2"}[encoder] + "." + rest


def kohya_flux_text_encoder(path: str) -> str:
    """kohya's Flux text-encoder names (sd-scripts networks/lora_flux.py: LORA_PREFIX_TEXT_ENCODER_CLIP = "lora_te1"
    on CLIP-L, LORA_PREFIX_TEXT_ENCODER_T5 = "lora_te3" on T5-XXL, then the transformers module path:
    lora_te3_encoder_block_0_layer_0_SelfAttention_q)."""
    encoder, rest = path.split(".", 1)
    return {"clip_l": "te1", "t5xxl": "te3"}[encoder] + "." + rest


def diffusers_text_encoder(path: str) -> str:
    """diffusers' SDXL text-encoder LoRA names (StableDiffusionXLPipeline.save_lora_weights:
    text_encoder_lora_layers under "text_encoder.", text_encoder_2_lora_layers under "text_encoder_2.")."""
    encoder, rest = path.split(".", 1)
    return {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}[encoder] + "." + rest


KOHYA_TE = Producer(
    "kohya sd-scripts",
    "native",
    "lora_",
    True,
    KOHYA_SUFFIX,
    ("lora",),
    source="kohya-ss/sd-scripts networks/lora.py",
    rename=kohya_text_encoder,
)
LYCORIS_KOHYA_TE = Producer(
    "LyCORIS via kohya",
    "native",
    "lora_",
    True,
    KOHYA_SUFFIX,
    ("lokr", "loha"),
    source="KohakuBlueleaf/LyCORIS lycoris/kohya.py",
    rename=kohya_text_encoder,
)
DIFFUSERS_TE = Producer(
    "diffusers",
    "native",
    "",
    False,
    PEFT_SUFFIX,
    ("lora",),
    source="huggingface/diffusers loaders/lora_pipeline.py (StableDiffusionXLPipeline)",
    rename=diffusers_text_encoder,
)

KOHYA_FLUX_TE = replace(KOHYA_TE, source="kohya-ss/sd-scripts networks/lora_flux.py", rename=kohya_flux_text_encoder)
LYCORIS_KOHYA_FLUX_TE = replace(LYCORIS_KOHYA_TE, rename=kohya_flux_text_encoder)

# OneTrainer's SDXL text encoders: LoraConversionKeySet("clip_l", "lora_te1") / ("clip_g", "lora_te2") with the
# transformers module path unchanged (convert_sdxl_lora.py __map_text_encoder_1/2), i.e. kohya's names.
ONETRAINER_TE = replace(
    KOHYA_TE,
    name="OneTrainer",
    methods=ONETRAINER_UNET.methods,
    lokr_full=True,
    source="Nerogar/OneTrainer convert_sdxl_lora.py; modules/module/LoRAModule.py (LoKrModule)",
)

# which producers write files for which architecture (key: arch_models builder name)
PRODUCERS = {
    "flux": (
        KOHYA,
        LYCORIS_KOHYA,
        LYCORIS_KOHYA_OFT,
        SIMPLETUNER,
        SIMPLETUNER_OFT,
        AI_TOOLKIT,
        COMFY_TRAINER,
        ONETRAINER_TRANSFORMER,
    ),
    "sdxl": (
        KOHYA,
        LYCORIS_KOHYA,
        LYCORIS_KOHYA_OFT,
        SIMPLETUNER,
        SIMPLETUNER_OFT,
        DIFFUSERS_UNET,
        COMFY_TRAINER,
        ONETRAINER_UNET,
    ),
    "sd3": (
        KOHYA,
        LYCORIS_KOHYA,
        LYCORIS_KOHYA_OFT,
        SIMPLETUNER,
        SIMPLETUNER_OFT,
        DIFFUSERS,
        COMFY_TRAINER,
        ONETRAINER_TRANSFORMER,
    ),
    "chroma": (KOHYA, LYCORIS_KOHYA_OFT, AI_TOOLKIT_DM, DIFFUSERS, SIMPLETUNER, SIMPLETUNER_OFT, COMFY_TRAINER),
    "qwen_image": (
        MUSUBI,
        MUSUBI_LYCORIS,
        MUSUBI_LYCORIS_OFT,
        AI_TOOLKIT_DM,
        DIFFUSERS,
        SIMPLETUNER,
        SIMPLETUNER_OFT,
        COMFY_TRAINER,
    ),
    "wan": (MUSUBI, MUSUBI_LYCORIS, MUSUBI_LYCORIS_OFT, AI_TOOLKIT_DM, COMFY_TRAINER),
    "hunyuan_video": (
        MUSUBI_HUNYUAN,
        MUSUBI_LYCORIS_HUNYUAN,
        MUSUBI_LYCORIS_HUNYUAN_OFT,
        DIFFUSION_PIPE,
        COMFY_TRAINER,
    ),
    "zimage": (
        MUSUBI_ZIMAGE,
        MUSUBI_LYCORIS_ZIMAGE,
        MUSUBI_LYCORIS_ZIMAGE_OFT,
        AI_TOOLKIT_DIFFUSERS_DM,
        DIFFUSERS,
        SIMPLETUNER,
        SIMPLETUNER_OFT,
        COMFY_TRAINER,
    ),
    "sdxl_clip": (KOHYA_TE, LYCORIS_KOHYA_TE, DIFFUSERS_TE, ONETRAINER_TE),
    "flux_clip": (KOHYA_FLUX_TE, LYCORIS_KOHYA_FLUX_TE),
}
