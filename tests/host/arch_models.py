"""Tiny models of other architectures than SD1.5, built through the host's own classes.

Each builder takes the host's ``comfy.supported_models.<Arch>`` with a very small ``unet_config`` (tiny hidden sizes,
one or two blocks), builds the model with ``model_config.get_model({})`` exactly as ``comfy.sd`` does for a real
checkpoint, fills its weights with seeded random values (ComfyUI's ops skip weight init, so the fresh tensors are
uninitialised memory) and wraps it in ``comfy.model_patcher.ModelPatcher`` on the CPU. Key names are therefore the
host's real ones, and the host's own key maps (``comfy.lora.model_lora_keys_unet``) and conversion tables
(``comfy.utils.flux_to_diffusers``, ``unet_to_diffusers``, ``mmdit_to_diffusers``) apply to them unchanged.

Every model has about a million parameters or fewer (a few MB in float32) and builds in milliseconds.

A ``TinyArch`` lists the adapter targets two ways, as producers name them:

``native``     the host's own module paths (``double_blocks.0.img_attn.qkv``; what kohya/musubi/ComfyUI's trainer
               write), each a whole weight;
``diffusers``  the diffusers module paths from the host's conversion table (``transformer_blocks.0.attn.to_q``),
               each a whole weight or a row slice ``(dim, start, length)`` of a fused one.

Requires ComfyUI importable (the ``comfy`` fixture, or ``comfy_bootstrap.prepare_import``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

import torch

CPU = torch.device("cpu")
PREFIX = "diffusion_model."


@dataclass(frozen=True)
class Target:
    """One adapter module: its path as a producer names it, the model weight it lands on, and the row slice."""

    path: str  # module path without ".weight" (native or diffusers naming)
    key: str  # model state-dict key ("diffusion_model.….weight")
    offset: tuple | None = None  # (dim, start, length) inside a fused weight, or None for the whole weight


@dataclass
class TinyArch:
    name: str  # label in the coverage table
    config_class: str  # comfy.supported_models class used
    unet_config: dict
    patcher: object  # comfy.model_patcher.ModelPatcher
    native: list = field(default_factory=list)  # [Target] on the host's own module paths
    diffusers: list = field(default_factory=list)  # [Target] on diffusers module paths
    params: int = 0
    clip: object | None = None  # a text-encoder arch: the comfy.sd.CLIP whose patcher is ``patcher``
    unet: str = "sdxl"  # a text-encoder arch: the BUILDERS name of the diffusion model loaded beside it

    def originals(self) -> dict:
        sd = self.patcher.model.state_dict()
        keys = {t.key for t in (*self.native, *self.diffusers)}
        return {k: sd[k].detach().clone() for k in keys}


# --------------------------------------------------------------------------------------------------- helpers
def _fill(model: torch.nn.Module, seed: int) -> int:
    """Seeded values for every tensor: fan-in scaled normal for matrices/convs, ones for 1-D scales, small for the
    rest. Returns the parameter count."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
            count += tensor.numel()
            if not tensor.is_floating_point():
                continue
            if tensor.dim() >= 2:
                fan_in = max(1, tensor[0].numel())
                values = torch.randn(tensor.shape, generator=gen) / fan_in**0.5
            elif name.endswith(("scale", "norm.weight")) or ".norm" in name and name.endswith("weight"):
                values = torch.ones(tensor.shape)
            else:
                values = torch.randn(tensor.shape, generator=gen) * 0.02
            tensor.copy_(values.to(tensor.dtype))
    return count


def _build(config_class: str, unet_config: dict, seed: int, *, extra: dict | None = None):
    """(patcher, model_config) for ``comfy.supported_models.<config_class>(unet_config)``, or None when the host has
    no such class. ``extra`` overrides entries after the class merged its ``unet_extra_config``."""
    sm = importlib.import_module("comfy.supported_models")
    mp = importlib.import_module("comfy.model_patcher")
    cls = getattr(sm, config_class, None)
    if cls is None:
        return None
    model_config = cls(dict(unet_config))
    model_config.unet_config.update(extra or {})
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    params = _fill(model, seed)
    model.eval()
    patcher = mp.ModelPatcher(model, load_device=CPU, offload_device=CPU)
    return patcher, model_config, params


def _linear_targets(patcher, within: tuple[str, ...]) -> list[Target]:
    """Every 2-D weight (a Linear) whose path starts with one of ``within`` (after ``diffusion_model.``)."""
    out = []
    for key, tensor in patcher.model.state_dict().items():
        if key.startswith(PREFIX) and key.endswith(".weight") and tensor.dim() == 2:
            path = key[len(PREFIX) : -len(".weight")]
            if path.startswith(within):
                out.append(Target(path, key))
    return sorted(out, key=lambda t: t.path)


# Flux.2's diffusers names, which newer hosts' flux_to_diffusers also lists (aliases of the same weights); a Flux.1
# diffusers file never has them
FLUX2_ONLY = re.compile(r"(\.linear_in|\.linear_out|\.to_qkv_mlp_proj|^single_transformer_blocks\.\d+\.attn\.to_out)$")


def _from_table(table: dict, state: dict, within: tuple[str, ...], exclude: re.Pattern | None = None) -> list[Target]:
    """Diffusers targets from a host conversion table ``{diffusers key: comfy key | (comfy key, offset) |
    (comfy key, None, function)}``: 2-D weights only; function-mapped entries (scale/shift swaps) are left out —
    no row slice expresses them."""
    out = []
    for dkey, to in table.items():
        if not dkey.endswith(".weight") or not dkey.startswith(within):
            continue
        if isinstance(to, tuple) and len(to) == 3:
            continue
        key, offset = (to[0], to[1]) if isinstance(to, tuple) else (to, None)
        key = key if key.startswith(PREFIX) else PREFIX + key
        if key in state and state[key].dim() == 2 and not (exclude and exclude.search(dkey[: -len(".weight")])):
            out.append(Target(dkey[: -len(".weight")], key, offset))
    return sorted(out, key=lambda t: t.path)


def _with_host_fields(unet_config: dict, params_module: str, params_class: str, newer: dict) -> dict:
    """``unet_config`` plus those of ``newer`` (fields later hosts added, with the value their model detection sets
    for this architecture) that the host's params dataclass declares."""
    fields = getattr(getattr(importlib.import_module(params_module), params_class, None), "__dataclass_fields__", {})
    return {**unet_config, **{k: v for k, v in newer.items() if k in fields}}


def _arch(
    name, config_class, unet_config, seed, native_within, *, table=None, diffusers_within=(), extra=None, exclude=None
):
    built = _build(config_class, unet_config, seed, extra=extra)
    if built is None:
        return None
    patcher, model_config, params = built
    state = patcher.model.state_dict()
    arch = TinyArch(name, config_class, dict(model_config.unet_config), patcher, params=params)
    arch.native = _linear_targets(patcher, native_within)
    if table is not None:
        arch.diffusers = _from_table(table(model_config.unet_config), state, diffusers_within, exclude)
    return arch


# --------------------------------------------------------------------------------------------------- builders
# Flux.1-dev layout (double + single stream blocks, guidance embed), hidden 32 = 2 heads of 16 (axes 4+6+6).
FLUX_CONFIG = {
    "image_model": "flux",
    "in_channels": 4,
    "out_channels": 4,
    "vec_in_dim": 8,
    "context_in_dim": 8,
    "hidden_size": 32,
    "mlp_ratio": 4.0,  # flux_to_diffusers slices single-block linear1 as qkv (3h) + mlp (4h): keep Flux's ratio
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [4, 6, 6],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}


def _flux_like(name: str, model_class: str, config: dict, seed: int) -> TinyArch | None:
    """A Flux-family transformer (Flux.1, Chroma): double/single blocks, diffusers names from ``flux_to_diffusers``."""
    utils = importlib.import_module("comfy.utils")
    return _arch(
        name,
        model_class,
        config,
        seed,
        ("double_blocks.", "single_blocks."),
        table=lambda cfg: utils.flux_to_diffusers(cfg, output_prefix=PREFIX),
        diffusers_within=("transformer_blocks.", "single_transformer_blocks."),
        exclude=FLUX2_ONLY,
    )


def build_flux(seed: int = 1) -> TinyArch | None:
    config = _with_host_fields(FLUX_CONFIG, "comfy.ldm.flux.model", "FluxParams", {"txt_ids_dims": []})
    return _flux_like("Flux.1", "Flux", config, seed)


# SDXL base layout (no attention on the first level, linear proj_in/out, ADM label embedding, cross-attention),
# two levels of 32/64 channels, heads of 32 (SDXL pins 64-channel heads in unet_extra_config; overridden).
SDXL_CONFIG = {
    "model_channels": 32,
    "use_linear_in_transformer": True,
    "transformer_depth": [0, 1],
    "context_dim": 64,
    "adm_in_channels": 32,
    "use_temporal_attention": False,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1,
    "in_channels": 4,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_checkpoint": False,
    "image_size": 32,
    "use_temporal_resblock": False,
}


def build_sdxl(seed: int = 2) -> TinyArch | None:
    utils = importlib.import_module("comfy.utils")
    blocks = ("input_blocks.", "middle_block.", "output_blocks.")

    def table(cfg):  # unet_to_diffusers: {diffusers key: comfy key without "diffusion_model."}
        return utils.unet_to_diffusers(cfg)

    arch = _arch(
        "SDXL",
        "SDXL",
        SDXL_CONFIG,
        seed,
        blocks,
        table=table,
        diffusers_within=("down_", "mid_", "up_"),
        extra={"num_head_channels": 32},
    )
    if arch is not None:  # transformer linears only (kohya's default LoRA targets), on both namings
        arch.native = [t for t in arch.native if ".transformer_blocks." in t.path or ".proj_" in t.path]
        keys = {t.key for t in arch.native}
        arch.diffusers = [t for t in arch.diffusers if t.key in keys]
    return arch


# SD3.5-medium layout (MMDiT: hidden = 64·depth, RMS q/k norm, x-block self-attention attn2 in block 0), depth 2.
SD3_CONFIG = {
    "in_channels": 4,
    "out_channels": 4,
    "patch_size": 2,
    "depth": 2,
    "input_size": None,
    "adm_in_channels": 16,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 16, "out_features": 128}},
    "num_patches": 64,
    "pos_embed_max_size": 8,
    "qk_norm": "rms",
    "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [0],
}


def build_sd3(seed: int = 3) -> TinyArch | None:
    utils = importlib.import_module("comfy.utils")
    return _arch(
        "SD3.5",
        "SD3",
        SD3_CONFIG,
        seed,
        ("joint_blocks.",),
        table=lambda cfg: utils.mmdit_to_diffusers(cfg, output_prefix=PREFIX),
        diffusers_within=("transformer_blocks.",),
    )


# Chroma (Flux without per-block modulation linears: a distilled guidance approximator feeds them), same sizes.
CHROMA_CONFIG = {
    **{k: v for k, v in FLUX_CONFIG.items() if k not in ("vec_in_dim", "guidance_embed")},
    "image_model": "chroma",
    "in_channels": 16,
    "in_dim": 64,
    "out_dim": 32,
    "hidden_dim": 32,
    "n_layers": 1,
}


def build_chroma(seed: int = 4) -> TinyArch | None:
    config = _with_host_fields(
        CHROMA_CONFIG, "comfy.ldm.chroma.model", "ChromaParams", {"txt_ids_dims": [], "vec_in_dim": None}
    )
    return _flux_like("Chroma", "Chroma", config, seed)


# Qwen-Image (MMDiT with the diffusers module names: transformer_blocks.N.attn.to_q, img_mlp.net.0.proj …),
# one block, 2 heads of 16.
QWEN_IMAGE_CONFIG = {
    "image_model": "qwen_image",
    "in_channels": 16,
    "out_channels": 4,
    "num_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "axes_dims_rope": (4, 6, 6),
}


def build_qwen_image(seed: int = 5) -> TinyArch | None:
    arch = _arch("Qwen-Image", "QwenImage", QWEN_IMAGE_CONFIG, seed, ("transformer_blocks.",))
    if arch is not None:  # the host's module names are the diffusers names
        arch.diffusers = list(arch.native)
    return arch


# Wan 2.1 text-to-video (blocks.N.self_attn.q, cross_attn.k, ffn.0 …), dim 32, 2 heads, one block.
WAN_CONFIG = {
    "image_model": "wan2.1",
    "model_type": "t2v",
    "dim": 32,
    "ffn_dim": 64,
    "num_heads": 2,
    "num_layers": 1,
    "in_dim": 4,
    "out_dim": 4,
    "text_dim": 16,
    "freq_dim": 16,
    "patch_size": (1, 2, 2),
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}


def build_wan(seed: int = 6) -> TinyArch | None:
    return _arch("Wan 2.1", "WAN21_T2V", WAN_CONFIG, seed, ("blocks.",))


# HunyuanVideo (Flux-like double/single blocks with fused qkv and linear1), hidden 32, one block each.
HUNYUAN_VIDEO_CONFIG = {
    "image_model": "hunyuan_video",
    "in_channels": 4,
    "out_channels": 4,
    "vec_in_dim": 8,
    "context_in_dim": 8,
    "hidden_size": 32,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [4, 6, 6],
    "theta": 256,
    "patch_size": [1, 2, 2],
    "qkv_bias": True,
    "guidance_embed": True,
    "byt5": False,
    "meanflow": False,
    "use_cond_type_embedding": False,
    "vision_in_dim": None,
}


def build_hunyuan_video(seed: int = 7) -> TinyArch | None:
    config = _with_host_fields(
        HUNYUAN_VIDEO_CONFIG, "comfy.ldm.hunyuan_video.model", "HunyuanVideoParams", {"meanflow_sum": False}
    )
    return _arch("HunyuanVideo", "HunyuanVideo", config, seed, ("double_blocks.", "single_blocks."))


# Z-Image (Lumina2 NextDiT with Z-Image modulation; fused attention.qkv, which z_image_to_diffusers slices into
# diffusers' attention.to_q/to_k/to_v), dim 32, 2 heads, one layer and one refiner layer each.
ZIMAGE_CONFIG = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 4,
    "dim": 32,
    "cap_feat_dim": 16,
    "n_layers": 1,
    "n_refiner_layers": 1,
    "qk_norm": True,
    "n_heads": 2,
    "n_kv_heads": 2,
    "axes_dims": [4, 6, 6],
    "axes_lens": [16, 16, 16],
    "rope_theta": 256.0,
    "ffn_dim_multiplier": 8.0 / 3.0,
    "multiple_of": 16,
    "z_image_modulation": True,
    "time_scale": 1000.0,
}


def _zimage(config: dict, seed: int, blocks: tuple[str, ...]) -> TinyArch | None:
    """A Z-Image through the host's ``ZImage`` class; targets in ``blocks``, diffusers names from the host's table."""
    utils = importlib.import_module("comfy.utils")
    if not hasattr(utils, "z_image_to_diffusers"):
        return None

    def table(cfg):
        return utils.z_image_to_diffusers(cfg, output_prefix=PREFIX)

    return _arch("Z-Image", "ZImage", config, seed, blocks, table=table, diffusers_within=blocks)


def build_zimage(seed: int = 8) -> TinyArch | None:
    return _zimage(ZIMAGE_CONFIG, seed, ("layers.",))


# Z-Image for its diffusers twin (tests/host/diffusers_twins.py): ZIMAGE_CONFIG with the feed-forward width that
# diffusers' ZImageTransformer2DModel uses (int(dim/3·8) = 85: multiple_of 1 instead of 16) and the x/cap pad tokens
# that ComfyUI's model detection gives real Z-Image checkpoints (pad_tokens_multiple 32). Not in BUILDERS (the
# renamer table keeps ZIMAGE_CONFIG).
ZIMAGE_TWIN_CONFIG = {**ZIMAGE_CONFIG, "multiple_of": 1, "pad_tokens_multiple": 32}


def build_zimage_twin(seed: int = 11) -> TinyArch | None:
    return _zimage(ZIMAGE_TWIN_CONFIG, seed, ("layers.", "noise_refiner.", "context_refiner."))


# SDXL's text encoders (CLIP-L + OpenCLIP bigG) through the host's own SDXL.clip_target() and comfy.sd.CLIP, with
# the host's per-encoder config override (model_options "clip_l_model_config"/"clip_g_model_config", read by
# sd1_clip.SDClipModel): 3 layers (SDXL takes the penultimate, which must not be the first), hidden 32, 2 heads, a
# 512-token vocabulary (the models never encode text here). Kept in float32 (model_options dtype) so a full load
# adds no fp16 rounding.
TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "vocab_size": 512,
    "projection_dim": 32,
}


def _clip_arch(name: str, config_class: str, unet_config: dict, options: dict, seed: int, unet: str) -> TinyArch:
    """A text-encoder arch: the host's ``<config_class>.clip_target()`` in ``comfy.sd.CLIP`` with ``options`` (tiny
    per-encoder configs, float32); targets are every encoder-layer Linear (CLIP ``encoder.layers.N``, T5
    ``encoder.block.N``; not T5's relative-attention-bias embedding), path "<encoder>.<module in the encoder>"."""
    sm = importlib.import_module("comfy.supported_models")
    comfy_sd = importlib.import_module("comfy.sd")
    target = getattr(sm, config_class)(dict(unet_config)).clip_target()
    clip = comfy_sd.CLIP(target, model_options={"dtype": torch.float32, **options})
    params = _fill(clip.cond_stage_model, seed)
    arch = TinyArch(name, f"{config_class}.clip_target", {}, clip.patcher, params=params, clip=clip, unet=unet)
    for key, tensor in clip.cond_stage_model.state_dict().items():
        encoder, _, rest = key.partition(".transformer.")
        layer = ".encoder.layers." in rest or rest.startswith("encoder.block.")
        if layer and key.endswith(".weight") and tensor.dim() == 2 and "relative_attention_bias" not in key:
            # path "clip_l.text_model.encoder.layers.0.self_attn.q_proj": the encoder, then the module in it
            arch.native.append(Target(f"{encoder}.{rest[: -len('.weight')]}", key))
    arch.native.sort(key=lambda t: t.path)
    arch.diffusers = list(arch.native)  # ComfyUI's text encoders keep the transformers names
    return arch


def build_sdxl_clip(seed: int = 9) -> TinyArch | None:
    options = {"clip_l_model_config": dict(TINY_CLIP), "clip_g_model_config": dict(TINY_CLIP)}
    return _clip_arch("SDXL CLIP-L+G", "SDXL", SDXL_CONFIG, options, seed, "sdxl")


# T5-XXL's layout (gated-GELU T5 v1.1 encoder, relative position buckets) at hidden 32, 2 heads of 16, 2 blocks, a
# 512-token vocabulary; merged over the host's t5_config_xxl.json through model_options "t5xxl_model_config".
TINY_T5 = {"d_model": 32, "d_kv": 16, "num_heads": 2, "d_ff": 64, "num_layers": 2, "vocab_size": 512}


def build_flux_clip(seed: int = 10) -> TinyArch | None:
    """Flux.1's text encoders (CLIP-L + T5-XXL) through the host's ``Flux.clip_target()``."""
    options = {"clip_l_model_config": dict(TINY_CLIP), "t5xxl_model_config": dict(TINY_T5)}
    config = _with_host_fields(FLUX_CONFIG, "comfy.ldm.flux.model", "FluxParams", {"txt_ids_dims": []})
    return _clip_arch("Flux CLIP-L+T5", "Flux", config, options, seed, "flux")


# Z-Image's text encoder (Qwen3-4B, a Llama-style decoder: q/k/v/o, gate/up/down, q/k RMS norms) through the host's
# own ZImage.clip_target() with the per-encoder override "qwen3_4b_model_config": hidden 32, 3 layers (Z-Image takes
# the penultimate hidden state, which must not be the first), 2 query heads and 1 key/value head (grouped like the
# real 32/8); head_dim stays the class's 128 (a class attribute, not a config field). The model never encodes text
# (vocabulary 512). Not in BUILDERS: no renamer writes for it.
TINY_QWEN3 = {
    "vocab_size": 512,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def build_zimage_qwen3(seed: int = 12) -> TinyArch | None:
    """Targets: every decoder-layer Linear, path "qwen3_4b.model.layers.N.<module>" (the encoder, then the module
    in its transformers model)."""
    sm = importlib.import_module("comfy.supported_models")
    if getattr(sm, "ZImage", None) is None:
        return None
    comfy_sd = importlib.import_module("comfy.sd")
    target = sm.ZImage(dict(ZIMAGE_CONFIG)).clip_target()
    clip = comfy_sd.CLIP(target, model_options={"dtype": torch.float32, "qwen3_4b_model_config": dict(TINY_QWEN3)})
    params = _fill(clip.cond_stage_model, seed)
    arch = TinyArch("Z-Image Qwen3", "ZImage.clip_target", {}, clip.patcher, params=params, clip=clip, unet="zimage")
    for key, tensor in clip.cond_stage_model.state_dict().items():
        encoder, _, rest = key.partition(".transformer.")
        if rest.startswith("model.layers.") and key.endswith(".weight") and tensor.dim() == 2:
            arch.native.append(Target(f"{encoder}.{rest[: -len('.weight')]}", key))
    arch.native.sort(key=lambda t: t.path)
    arch.diffusers = list(arch.native)
    return arch


# Lumina2 (the original 2B layout: NextDiT without Z-Image modulation, adaLN_modulation = SiLU + Linear) with GROUPED
# K/V heads like the real 24 q / 8 kv heads: dim 32 = 4 q heads of 8, 2 kv heads, so the fused attention.qkv holds
# 32 q rows, then 16 k and 16 v rows — not equal thirds (ComfyUI's z_image_to_diffusers table, which its key map uses
# for every Lumina2 model, cuts it into thirds of dim rows). One layer and one refiner layer each; axes 2+2+4 = the
# head dim. Not in BUILDERS (no renamer table row; tests/host/test_lumina2_gqa.py uses it).
LUMINA2_GQA_CONFIG = {
    **{k: v for k, v in ZIMAGE_CONFIG.items() if k not in ("z_image_modulation", "time_scale")},
    "n_heads": 4,
    "n_kv_heads": 2,
    "axes_dims": [2, 2, 4],
    "rope_theta": 10000.0,
    "ffn_dim_multiplier": 4.0,
}
LUMINA2_BLOCKS = ("layers.", "noise_refiner.", "context_refiner.")


def build_lumina2_gqa(seed: int = 13) -> TinyArch | None:
    """``native``: every block Linear on the host's paths. ``diffusers``: the Z-Image diffusers names of the block
    weights (``attention.to_q/to_k/to_v`` on the rows the head counts give: q = n_heads·head_dim rows, k and v
    n_kv_heads·head_dim each; ``attention.to_out.0``, ``feed_forward.w1/w2/w3``, whole), from the config here, never
    from the host's table or the weight's shape."""
    built = _build("Lumina2", LUMINA2_GQA_CONFIG, seed)
    if built is None:
        return None
    patcher, model_config, params = built
    cfg = model_config.unet_config
    arch = TinyArch("Lumina2 GQA", "Lumina2", dict(cfg), patcher, params=params)
    arch.native = _linear_targets(patcher, LUMINA2_BLOCKS)
    head_dim = cfg["dim"] // cfg["n_heads"]
    q_rows, kv_rows = cfg["n_heads"] * head_dim, cfg["n_kv_heads"] * head_dim
    rows = {"q": (0, 0, q_rows), "k": (0, q_rows, kv_rows), "v": (0, q_rows + kv_rows, kv_rows)}
    state = patcher.model.state_dict()
    for block in sorted({t.path.split(".attention.")[0] for t in arch.native if ".attention." in t.path}):
        key = f"{PREFIX}{block}.attention.qkv.weight"
        assert state[key].shape[0] == q_rows + 2 * kv_rows, (key, tuple(state[key].shape))
        arch.diffusers += [Target(f"{block}.attention.to_{x}", key, rows[x]) for x in "qkv"]
        arch.diffusers.append(Target(f"{block}.attention.to_out.0", f"{PREFIX}{block}.attention.out.weight"))
        arch.diffusers += [
            Target(f"{block}.feed_forward.{w}", f"{PREFIX}{block}.feed_forward.{w}.weight") for w in ("w1", "w2", "w3")
        ]
    arch.diffusers.sort(key=lambda t: t.path)
    return arch


BUILDERS = {
    "flux": build_flux,
    "sdxl": build_sdxl,
    "sd3": build_sd3,
    "chroma": build_chroma,
    "qwen_image": build_qwen_image,
    "wan": build_wan,
    "hunyuan_video": build_hunyuan_video,
    "zimage": build_zimage,
    "sdxl_clip": build_sdxl_clip,
    "flux_clip": build_flux_clip,
}
