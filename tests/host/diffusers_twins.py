"""diffusers twins of ``arch_models``' tiny ComfyUI models: the same network as diffusers builds it, same weights.

A twin is the diffusers model class a trainer loads (``UNet2DConditionModel`` for SDXL, ``FluxTransformer2DModel``,
``SD3Transformer2DModel``, ``QwenImageTransformer2DModel``, ``ZImageTransformer2DModel``, ``WanTransformer3DModel``,
``HunyuanVideoTransformer3DModel``) with a config of the same widths, depths and heads as the tiny ComfyUI model. Its
weights are copied from the ComfyUI model through the host's own conversion table (``comfy.utils.unet_to_diffusers``,
``flux_to_diffusers``, ``mmdit_to_diffusers``, ``z_image_to_diffusers``; Qwen-Image's ComfyUI names are diffusers'
own): ``{diffusers key: comfy key | (comfy key, (dim, start, length)) | (comfy key, offset, function)}`` — a row
slice of a fused weight (q/k/v of ``img_attn.qkv``) or a function of it (``swap_scale_shift`` on the final
modulation). ``fill`` copies every diffusers tensor and reports any the table does not cover, so a twin whose config
drifts from the ComfyUI model fails loudly.

A producer then adapts the twin (peft, lycoris-lora); ``to_comfy`` maps the producer's merged diffusers weights
back through the same table onto the ComfyUI keys (several slices of one fused weight land on their rows).

Text encoders likewise (``build_text_twins``, ``build_qwen3_twin``): the transformers model a trainer adapts
(``CLIPTextModel``, ``CLIPTextModelWithProjection``, ``Qwen3ForCausalLM``) with the tiny ComfyUI encoder's config and
weights (ComfyUI keeps the transformers names under ``<encoder>.transformer.``).

Wan 2.1 (``WanTransformer3DModel``) and HunyuanVideo (``HunyuanVideoTransformer3DModel``) are the exceptions: neither
host has a diffusers table for them, so their twins are filled through the repository's own alias tables
(``lyco_core.aliases.wan``; ``hunyuan_video_diffusers`` plus Flux's names of the blocks HunyuanVideo shares; handed in
as ``model_aliases`` by the caller: the pack's copy in a host test), q/k/v of a fused weight on their row blocks, plus
the tensors no alias names (``WAN_PARAMETERS``: the modulation tables; ``HUNYUAN_VIDEO_PARAMETERS``: the q/k norm
scales an older host keeps as ``.scale``, and the final modulation, whose halves diffusers swaps, copied through that
swap and never adapted). Each table is then proved independently of itself: ``forward_check`` runs the same random
inputs through the ComfyUI model and the twin, and ``build_twin`` requires the outputs to agree within
``tolerances.forward_agreement`` over the forward's reduction depths (a wrong or swapped name changes the output by
the size of the weights, far beyond rounding).

Requires ComfyUI importable (the host's tables), diffusers and transformers; the repository's alias tables for Wan
and HunyuanVideo.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

import arch_models
from arch_models import PREFIX, Target, TinyArch
from tolerances import forward_agreement


@dataclass
class Twin:
    arch: TinyArch  # the tiny ComfyUI model
    model: torch.nn.Module  # the diffusers model, holding the ComfyUI model's weights
    table: dict  # {diffusers state key: (comfy key, offset | None, function | None)}
    pipeline: str  # diffusers pipeline class whose save_lora_weights writes the file
    component: str  # "unet" | "transformer": the save_lora_weights argument / key prefix
    targets: tuple  # diffusers module paths adapted (Linear; each a whole weight or a row slice of a ComfyUI one)
    lycoris_modules: tuple  # module classes a SimpleTuner-style LyCORIS preset targets (``target_module``)
    forward: tuple | None = None  # (max|y_comfy − y_twin| / max|y_comfy|, bound): the table's forward proof, if any


def _normalise(table: dict) -> dict:
    """{diffusers key: (comfy key with "diffusion_model.", offset | None, function | None)} from a host table."""
    out = {}
    for dkey, to in table.items():
        key, offset, fn = (*((to,) if isinstance(to, str) else to), None, None)[:3]
        out[dkey] = (key if key.startswith(PREFIX) else PREFIX + key, offset, fn)
    return out


@torch.no_grad()
def fill(model: torch.nn.Module, table: dict, comfy_state: dict) -> list[str]:
    """Copy every tensor of ``model`` from ``comfy_state`` through ``table``; returns the diffusers keys it could not
    fill (not in the table, or the ComfyUI tensor missing / of another shape)."""
    missing = []
    for dkey, tensor in model.state_dict().items():
        to = table.get(dkey)
        if to is None or to[0] not in comfy_state:
            missing.append(dkey)
            continue
        key, offset, fn = to
        value = comfy_state[key]
        value = value.narrow(*offset) if offset else value
        value = fn(value) if fn else value
        if tuple(value.shape) != tuple(tensor.shape):
            missing.append(f"{dkey} {tuple(tensor.shape)} ≠ {key} {tuple(value.shape)}")
            continue
        tensor.copy_(value.to(tensor.dtype))
    return missing


def to_comfy(weights: dict, table: dict, originals: dict) -> dict:
    """{comfy key: float64 W'} from ``{diffusers module path: W'}``: each weight placed at its rows of the ComfyUI
    weight (a fused q/k/v gets all its slices), the rest of that weight left at ``originals``."""
    out = {}
    for path, weight in weights.items():
        key, offset, fn = table[path + ".weight"]
        assert fn is None, f"{path}: mapped through a function, no row slice expresses it"
        ref = out.setdefault(key, originals[key].detach().double().clone())
        (ref.narrow(*offset) if offset else ref).copy_(weight.detach().double())
    return out


# --------------------------------------------------------------------------------------------------- twins
def _sdxl(arch: TinyArch):
    from diffusers import UNet2DConditionModel

    cfg = arch.unet_config
    levels = len(cfg["channel_mult"])
    widths = tuple(cfg["model_channels"] * m for m in cfg["channel_mult"])
    attention = [d > 0 for d in cfg["transformer_depth"]]
    model = UNet2DConditionModel(
        sample_size=cfg["image_size"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=widths,
        layers_per_block=cfg["num_res_blocks"][0],
        transformer_layers_per_block=[max(1, d) for d in cfg["transformer_depth"]],
        cross_attention_dim=cfg["context_dim"],
        # diffusers' UNet "attention_head_dim" is the number of heads per level (SDXL: 5, 10, 20)
        attention_head_dim=tuple(max(1, w // cfg["num_head_channels"]) for w in widths),
        use_linear_projection=cfg["use_linear_in_transformer"],
        # the tiny ComfyUI SDXL has no ADM label embedding (its unet_config sets no num_classes), so no
        # add_embedding here either
        norm_num_groups=32,
    )
    assert levels == len(model.down_blocks)
    table = importlib.import_module("comfy.utils").unet_to_diffusers(cfg)
    return model, table, "StableDiffusionXLPipeline", "unet", ("Attention", "FeedForward")


def _flux(arch: TinyArch):
    from diffusers import FluxTransformer2DModel

    cfg = arch.unet_config
    patch = cfg["patch_size"]
    heads = cfg["num_heads"]
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg["in_channels"] * patch * patch,  # diffusers patchifies outside the model
        num_layers=cfg["depth"],
        num_single_layers=cfg["depth_single_blocks"],
        attention_head_dim=cfg["hidden_size"] // heads,
        num_attention_heads=heads,
        joint_attention_dim=cfg["context_in_dim"],
        pooled_projection_dim=cfg["vec_in_dim"],
        guidance_embeds=cfg["guidance_embed"],
        axes_dims_rope=tuple(cfg["axes_dim"]),
    )
    table = importlib.import_module("comfy.utils").flux_to_diffusers(cfg, output_prefix=PREFIX)
    modules = tuple(sorted({type(b.attn).__name__ for b in model.transformer_blocks})) + (
        "FeedForward",
        "FluxSingleTransformerBlock",
    )
    return model, table, "FluxPipeline", "transformer", modules


def _sd3(arch: TinyArch):
    from diffusers import SD3Transformer2DModel

    cfg = arch.unet_config
    depth = cfg["depth"]
    hidden = 64 * depth  # MMDiT: hidden = 64·depth, heads = depth
    model = SD3Transformer2DModel(
        sample_size=cfg["pos_embed_max_size"] * cfg["patch_size"],
        patch_size=cfg["patch_size"],
        in_channels=cfg["in_channels"],
        num_layers=depth,
        attention_head_dim=64,
        num_attention_heads=depth,
        joint_attention_dim=cfg["context_embedder_config"]["params"]["in_features"],
        caption_projection_dim=hidden,
        pooled_projection_dim=cfg["adm_in_channels"],
        out_channels=cfg["out_channels"],
        pos_embed_max_size=cfg["pos_embed_max_size"],
        dual_attention_layers=tuple(cfg["x_block_self_attn_layers"]),
        qk_norm="rms_norm" if cfg["qk_norm"] == "rms" else cfg["qk_norm"],
    )
    table = importlib.import_module("comfy.utils").mmdit_to_diffusers(cfg, output_prefix=PREFIX)
    return model, table, "StableDiffusion3Pipeline", "transformer", ("Attention", "FeedForward")


def _qwen_image(arch: TinyArch):
    from diffusers import QwenImageTransformer2DModel

    cfg = arch.unet_config
    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=cfg["in_channels"],  # both take patchified latents (img_in is a Linear)
        out_channels=cfg["out_channels"],
        num_layers=cfg["num_layers"],
        attention_head_dim=cfg["attention_head_dim"],
        num_attention_heads=cfg["num_attention_heads"],
        joint_attention_dim=cfg["joint_attention_dim"],
        axes_dims_rope=tuple(cfg["axes_dims_rope"]),
    )
    # ComfyUI's Qwen-Image keeps diffusers' module names: the table is the identity on the model's keys
    table = {k: PREFIX + k for k in model.state_dict()}
    return model, table, "QwenImagePipeline", "transformer", ("Attention", "FeedForward")


def _zimage(arch: TinyArch):
    from diffusers import ZImageTransformer2DModel

    cfg = arch.unet_config
    model = ZImageTransformer2DModel(
        all_patch_size=(cfg["patch_size"],),
        all_f_patch_size=(1,),
        in_channels=cfg["in_channels"],
        dim=cfg["dim"],
        n_layers=cfg["n_layers"],
        n_refiner_layers=cfg["n_refiner_layers"],
        n_heads=cfg["n_heads"],
        n_kv_heads=cfg["n_kv_heads"],
        qk_norm=cfg["qk_norm"],
        cap_feat_dim=cfg["cap_feat_dim"],
        rope_theta=cfg["rope_theta"],
        t_scale=cfg["time_scale"],
        axes_dims=list(cfg["axes_dims"]),
        axes_lens=list(cfg["axes_lens"]),
    )
    table = importlib.import_module("comfy.utils").z_image_to_diffusers(cfg, output_prefix=PREFIX)
    return model, table, "ZImagePipeline", "transformer", ("Attention", "FeedForward")


# Wan's parameters that are no module's weight, so no alias names them (diffusers' single-file converter renames
# them alike): the per-block and the head's modulation tables
WAN_PARAMETERS = {
    re.compile(r"^blocks\.(\d+)\.scale_shift_table$"): r"blocks.\1.modulation",
    re.compile(r"^scale_shift_table$"): "head.modulation",
}
WAN_SAME = ("patch_embedding.",)  # named alike on both sides


def _rows(weight_rows: int, part: tuple[int, int], blocks: int) -> tuple[int, int, int]:
    """(dim 0, first row, rows) of blocks ``part[0]``… (``blocks`` of them) of ``part[1]`` equal row blocks."""
    index, parts = part
    assert weight_rows % parts == 0, (weight_rows, part)
    length = weight_rows // parts
    return (0, index * length, blocks * length)


def _alias_table(
    model: torch.nn.Module, state: dict, model_aliases: Callable, parameters: dict, same: tuple = ()
) -> dict:
    """{diffusers key: comfy key | (comfy key, (dim, start, length)) | (comfy key, None, function)} from the
    repository's aliases of ``state``'s keys (``alias.path`` = a diffusers module, with or without the ``transformer.``
    component; ``alias.key`` its ComfyUI weight, or with ``alias.part`` equal row blocks of it; a bias follows its
    weight), then, for keys no alias names, ``parameters`` ({pattern: replacement | (replacement, function)}) and
    ``same`` (prefixes named alike on both sides)."""
    named = {}
    for a in model_aliases(set(state)):
        assert not a.transposed and not a.square_first, a
        named[a.path.removeprefix("transformer.")] = (a.key, a.part, a.blocks)
    table = {}
    for dkey in model.state_dict():
        module, _, leaf = dkey.rpartition(".")
        if module in named:
            key, part, blocks = named[module]
            comfy = key.removesuffix("weight") + leaf
            table[dkey] = comfy if part is None else (comfy, _rows(state[key].shape[0], part, blocks))
        elif dkey.startswith(same):
            table[dkey] = PREFIX + dkey
        else:
            for pattern, to in parameters.items():
                if pattern.match(dkey):
                    to, fn = (to, None) if isinstance(to, str) else to
                    table[dkey] = (PREFIX + pattern.sub(to, dkey), None, fn)
    return table


def _linear_targets(model: torch.nn.Module, table: dict) -> list[Target]:
    """Every Linear of ``model`` whose weight ``table`` maps to rows of a ComfyUI weight (not through a function)."""
    targets = []
    for path, module in model.named_modules():
        to = table.get(path + ".weight")
        if isinstance(module, torch.nn.Linear) and to is not None:
            key, offset, fn = (*((to,) if isinstance(to, str) else to), None, None)[:3]
            if fn is None:
                targets.append(Target(path, key, offset))
    return sorted(targets, key=lambda t: t.path)


@torch.no_grad()
def _seed_norm_scales(state: dict, seed: int) -> None:
    """arch_models fills norm scales with ones, which would hide a swapped norm name from the forward proof: seeded
    scales around 1 instead (in the ComfyUI model itself; the twin copies them)."""
    gen = torch.Generator().manual_seed(seed)
    for key, tensor in sorted(state.items()):
        if ".norm" in key and key.endswith((".weight", ".scale")):
            tensor.copy_(1 + 0.2 * torch.randn(tensor.shape, generator=gen))


def _wan(arch: TinyArch, model_aliases: Callable):
    from diffusers import WanTransformer3DModel

    cfg = arch.unet_config
    model = WanTransformer3DModel(
        patch_size=tuple(cfg["patch_size"]),
        num_attention_heads=cfg["num_heads"],
        attention_head_dim=cfg["dim"] // cfg["num_heads"],
        in_channels=cfg["in_dim"],
        out_channels=cfg["out_dim"],
        text_dim=cfg["text_dim"],
        freq_dim=cfg["freq_dim"],
        ffn_dim=cfg["ffn_dim"],
        num_layers=cfg["num_layers"],
        cross_attn_norm=cfg["cross_attn_norm"],
        qk_norm="rms_norm_across_heads" if cfg["qk_norm"] else None,  # ComfyUI's RMSNorm over all heads' dim
        eps=cfg["eps"],
    )
    state = arch.patcher.model.state_dict()
    _seed_norm_scales(state, 61)
    table = _alias_table(model, state, model_aliases, WAN_PARAMETERS, WAN_SAME)
    # targets: every Linear of the twin (blocks, condition embedder, proj_out), on the ComfyUI weight its alias names
    arch.diffusers = _linear_targets(model, _normalise(table))
    modules = ("WanAttention", "FeedForward", "WanTimeTextImageEmbedding")
    return model, table, "WanPipeline", "transformer", modules


# HunyuanVideo's diffusers tensors no alias names: the q/k RMS norm scales where the host keeps them as ``.scale``
# (older ComfyUI; newer ones store ``.weight``, which hunyuan_video_diffusers aliases), and the final modulation,
# whose halves diffusers stores as (scale, shift) against ComfyUI's (shift, scale) — a permutation of its rows, which
# no alias (a row block) expresses, so it is copied through a function and never adapted
def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


HUNYUAN_VIDEO_PARAMETERS = {
    re.compile(
        r"^transformer_blocks\.(\d+)\.attn\.norm_q\.weight$"
    ): r"double_blocks.\1.img_attn.norm.query_norm.scale",
    re.compile(r"^transformer_blocks\.(\d+)\.attn\.norm_k\.weight$"): r"double_blocks.\1.img_attn.norm.key_norm.scale",
    re.compile(r"^transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight$"): (
        r"double_blocks.\1.txt_attn.norm.query_norm.scale"
    ),
    re.compile(
        r"^transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight$"
    ): r"double_blocks.\1.txt_attn.norm.key_norm.scale",
    re.compile(r"^single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight$"): r"single_blocks.\1.norm.query_norm.scale",
    re.compile(r"^single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight$"): r"single_blocks.\1.norm.key_norm.scale",
    re.compile(r"^norm_out\.linear\.(weight|bias)$"): (r"final_layer.adaLN_modulation.1.\1", _swap_halves),
}


def _hunyuan_video(arch: TinyArch, model_aliases: Callable):
    from diffusers import HunyuanVideoTransformer3DModel

    cfg = arch.unet_config
    p_t, p_h, p_w = cfg["patch_size"]
    assert p_h == p_w, cfg["patch_size"]  # diffusers has one spatial patch size
    heads = cfg["num_heads"]
    model = HunyuanVideoTransformer3DModel(
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        num_attention_heads=heads,
        attention_head_dim=cfg["hidden_size"] // heads,
        num_layers=cfg["depth"],
        num_single_layers=cfg["depth_single_blocks"],
        num_refiner_layers=2,  # ComfyUI's TokenRefiner always builds two
        mlp_ratio=cfg["mlp_ratio"],
        patch_size=p_h,
        patch_size_t=p_t,
        qk_norm="rms_norm",
        guidance_embeds=cfg["guidance_embed"],
        text_embed_dim=cfg["context_in_dim"],
        pooled_projection_dim=cfg["vec_in_dim"],
        rope_theta=float(cfg["theta"]),
        rope_axes_dim=tuple(cfg["axes_dim"]),
    )
    state = arch.patcher.model.state_dict()
    _seed_norm_scales(state, 67)
    table = _alias_table(model, state, model_aliases, HUNYUAN_VIDEO_PARAMETERS)
    # targets: every Linear whose weight is a ComfyUI weight or a row block of one (all but norm_out.linear)
    arch.diffusers = _linear_targets(model, _normalise(table))
    # SimpleTuner's preset names module classes: the blocks, the token refiner and the condition embedder hold every
    # Linear but the final modulation and projection
    modules = (
        "HunyuanVideoTransformerBlock",
        "HunyuanVideoSingleTransformerBlock",
        "HunyuanVideoTokenRefiner",
        "HunyuanVideoConditionEmbedding",
    )
    return model, table, "HunyuanVideoPipeline", "transformer", modules


def _hunyuan_video_depths(cfg: dict, patch_volume: int, tokens: int, text: int) -> tuple[int, ...]:
    """The reductions one output element of the tiny HunyuanVideo passes through, in order: patch embedding; the
    time, pooled-text and guidance MLPs; the token refiner (its time and pooled MLPs over the mean of ``text``
    tokens, the input projection, per block the modulation, LayerNorm, q/k/v, q·k over a head, softmax and a·v over
    the ``text`` tokens, the projection, LayerNorm and MLP); per double block the modulation, LayerNorm, q/k/v, RMS
    norm, q·k, softmax and a·v over ``tokens + text``, projection, LayerNorm, MLP; per single block the same with
    the fused linear1/linear2; the final modulation, LayerNorm and projection."""
    dim, head, text_dim = cfg["hidden_size"], cfg["hidden_size"] // cfg["num_heads"], cfg["context_in_dim"]
    mlp = int(dim * cfg["mlp_ratio"])
    joint = tokens + text
    embed = (cfg["in_channels"] * patch_volume, 256, dim, cfg["vec_in_dim"], dim, 256, dim)
    refiner = (text, 256, dim, text_dim, dim, text_dim) + (dim, dim, dim, head, text, text, dim, dim, dim, 4 * dim) * 2
    double = (dim, dim, dim, head, head, joint, joint, dim, dim, dim, mlp)
    single = (dim, dim, dim, head, head, joint, joint, dim + mlp)
    return embed + refiner + double * cfg["depth"] + single * cfg["depth_single_blocks"] + (dim, dim, dim)


def _wan_depths(cfg: dict, patch_volume: int, tokens: int, text: int) -> tuple[int, ...]:
    """The reductions one output element of the tiny Wan passes through, in order: patch embedding, time MLP,
    modulation, text MLP; per block self-attention (q/k/v, RMS norm, q·k over a head, softmax and a·v over the
    ``tokens``, o), cross-attention (the same over the ``text`` tokens), LayerNorms and the feed-forward; the head."""
    dim, ffn, head = cfg["dim"], cfg["ffn_dim"], cfg["dim"] // cfg["num_heads"]
    patch = cfg["in_dim"] * patch_volume  # the Conv3d's fan-in
    block = (dim, dim, dim, head, tokens, tokens, dim) + (dim, dim, dim, dim, head, text, text, dim) + (dim, dim, ffn)
    return (patch, cfg["freq_dim"], dim, dim, cfg["text_dim"], dim) + block * cfg["num_layers"] + (dim, dim)


def _relative_difference(comfy_out: torch.Tensor, twin_out: torch.Tensor, shape: tuple[int, ...]) -> float:
    """``max|y_comfy − y_twin| / max|y_comfy|`` of two outputs that must both have ``shape``."""
    assert comfy_out.shape == twin_out.shape == shape, (comfy_out.shape, twin_out.shape)
    return float((comfy_out.double() - twin_out.double()).abs().max() / comfy_out.double().abs().max())


@torch.no_grad()
def _wan_forward(twin: Twin, seed: int) -> tuple[float, float]:
    """(max|y_comfy − y_twin| / max|y_comfy|, bound) for one forward of the ComfyUI model and its twin on the same
    seeded video latents [B, C, F, H, W], timestep and text embeddings [B, L, text_dim] (both take and return the
    video layout: a Conv3d patch embedding in, the same (f, h, w, p_t, p_h, p_w, c) unpatchify out, and the same 3-axis
    rotary embedding over (f, h, w) on adjacent channel pairs, so no layout conversion is needed)."""
    cfg = twin.arch.unet_config
    gen = torch.Generator().manual_seed(seed)
    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width, text = 2 * p_t, 4 * p_h, 3 * p_w, 5
    x = torch.randn(1, cfg["in_dim"], frames, height, width, generator=gen)
    context = torch.randn(1, text, cfg["text_dim"], generator=gen)
    timestep = torch.tensor([437.0])
    comfy_out = twin.arch.patcher.model.diffusion_model(x.clone(), timestep.clone(), context.clone())
    twin_out = twin.model(x.clone(), timestep.clone(), context.clone(), return_dict=False)[0]
    err = _relative_difference(comfy_out, twin_out, (1, cfg["out_dim"], frames, height, width))
    tokens = (frames // p_t) * (height // p_h) * (width // p_w)
    return err, forward_agreement(_wan_depths(cfg, p_t * p_h * p_w, tokens, text))


@torch.no_grad()
def _hunyuan_video_forward(twin: Twin, seed: int) -> tuple[float, float]:
    """(max|y_comfy − y_twin| / max|y_comfy|, bound) for one forward of the ComfyUI HunyuanVideo and its twin on the
    same seeded video latents [B, C, F, H, W], timestep, text embeddings [B, L, context_in_dim], pooled text vector
    [B, vec_in_dim] and guidance. Both patchify with a Conv3d and unpatchify (f, h, w, c, p_t, p_h, p_w) alike, and
    rotate q/k by the same 3-axis rotary embedding over (f, h, w) on adjacent channel pairs (ComfyUI's theta^(−2i/d)
    = diffusers' ``get_1d_rotary_pos_embed``). Differences that do not change the output: ComfyUI concatenates
    (text, image) tokens for the joint attention, diffusers (image, text), which attention (no mask: every text token
    is valid) does not see; ComfyUI rotates the text tokens by position 0 (cos 1, sin 0: the identity), diffusers
    leaves them alone; ComfyUI's guidance embedding scales the guidance by 1000 inside the model, diffusers' pipeline
    before it (``HunyuanVideoPipeline`` passes ``guidance_scale · 1000``), so the twin is given 1000 × the guidance;
    the text mask is all ones for the twin (it requires one) and None for ComfyUI."""
    cfg = twin.arch.unet_config
    gen = torch.Generator().manual_seed(seed)
    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width, text = 2 * p_t, 4 * p_h, 3 * p_w, 5
    x = torch.randn(1, cfg["in_channels"], frames, height, width, generator=gen)
    context = torch.randn(1, text, cfg["context_in_dim"], generator=gen)
    pooled = torch.randn(1, cfg["vec_in_dim"], generator=gen)
    timestep, guidance = torch.tensor([437.0]), torch.tensor([3.5])
    comfy_out = twin.arch.patcher.model.diffusion_model(
        x.clone(), timestep.clone(), context.clone(), y=pooled.clone(), guidance=guidance.clone()
    )
    twin_out = twin.model(
        x.clone(),
        timestep.clone(),
        context.clone(),
        torch.ones(1, text, dtype=torch.long),
        pooled.clone(),
        guidance=guidance * 1000.0,
        return_dict=False,
    )[0]
    err = _relative_difference(comfy_out, twin_out, (1, cfg["out_channels"], frames, height, width))
    tokens = (frames // p_t) * (height // p_h) * (width // p_w)
    return err, forward_agreement(_hunyuan_video_depths(cfg, p_t * p_h * p_w, tokens, text))


FORWARDS = {"WAN21_T2V": _wan_forward, "HunyuanVideo": _hunyuan_video_forward}  # by arch.config_class


def forward_check(twin: Twin, seed: int = 0) -> tuple[float, float]:
    """(max|y_comfy − y_twin| / max|y_comfy|, bound): one forward of the ComfyUI model and its twin on the same
    seeded inputs (``_wan_forward``, ``_hunyuan_video_forward``)."""
    return FORWARDS[twin.arch.config_class](twin, seed)


# the ComfyUI model each twin copies (arch_models; Z-Image with the twin's feed-forward width)
ARCHES = {
    "sdxl": "sdxl",
    "flux": "flux",
    "sd3": "sd3",
    "qwen_image": "qwen_image",
    "zimage": "build_zimage_twin",
    "wan": "wan",
    "hunyuan_video": "hunyuan_video",
}


def build_arch(name: str) -> TinyArch | None:
    builder = ARCHES[name]
    return getattr(arch_models, builder)() if builder.startswith("build_") else arch_models.BUILDERS[builder]()


# diffusers tensors that no tiny ComfyUI model can fill, with the reason (checked: exactly these are left unfilled)
UNFILLABLE = {
    "zimage": (
        "t_embedder.",
        "diffusers' ZImageTransformer2DModel builds its timestep MLP 256→1024→min(dim, 256) with the width 1024 "
        "hard-coded, ComfyUI's NextDiT 256→min(dim, 1024)→256: they agree from dim 1024 (real Z-Image: 3840) but "
        "not at dim 32; these tensors (outside every adapted module) keep diffusers' own init",
    )
}
TWINS = {
    "sdxl": _sdxl,
    "flux": _flux,
    "sd3": _sd3,
    "qwen_image": _qwen_image,
    "zimage": _zimage,
    "wan": _wan,
    "hunyuan_video": _hunyuan_video,
}
NO_HOST_TABLE = (
    "wan",
    "hunyuan_video",
)  # twins filled through the repository's alias table (``model_aliases``), proved by forward
# the diffusers class each twin needs (a host-independent skip reason where diffusers lacks it)
CLASSES = {
    "sdxl": "UNet2DConditionModel",
    "flux": "FluxTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
    "qwen_image": "QwenImageTransformer2DModel",
    "zimage": "ZImageTransformer2DModel",
    "wan": "WanTransformer3DModel",
    "hunyuan_video": "HunyuanVideoTransformer3DModel",
}


def build_twin(name: str, arch: TinyArch, model_aliases: Callable | None = None) -> Twin:
    """The diffusers twin of ``arch`` with its weights; raises if any diffusers tensor is left unfilled or any
    adapted module is missing from the twin. A twin in ``NO_HOST_TABLE`` is filled through ``model_aliases`` (the
    repository's ``lyco_core.aliases.model_aliases``) and must then give the ComfyUI model's forward output
    (``forward_check``)."""
    builder = TWINS[name]
    if name in NO_HOST_TABLE:
        assert model_aliases is not None, f"{name}: no host table; pass the repository's model_aliases"
        model, table, pipeline, component, lycoris_modules = builder(arch, model_aliases)
    else:
        model, table, pipeline, component, lycoris_modules = builder(arch)
    model = model.float().eval()
    table = _normalise(table)
    missing = fill(model, table, arch.patcher.model.state_dict())
    if name in UNFILLABLE:
        prefix = UNFILLABLE[name][0]
        unfillable = [k for k in missing if k.startswith(prefix)]
        assert unfillable, f"{name}: {prefix}* filled after all: drop it from UNFILLABLE"
        missing = [k for k in missing if k not in unfillable]
    assert not missing, f"{name}: diffusers tensors the host's table does not fill: {missing}"
    names = dict(model.named_modules())
    targets = tuple(t.path for t in arch.diffusers)
    absent = [p for p in targets if not isinstance(names.get(p), torch.nn.Linear)]
    assert not absent, f"{name}: adapted modules missing from the diffusers model: {absent}"
    twin = Twin(arch, model, table, pipeline, component, targets, lycoris_modules)
    if name in NO_HOST_TABLE:
        twin.forward = forward_check(twin)
        err, bound = twin.forward
        assert err <= bound, f"{name}: the twin's forward differs from the ComfyUI model's: {err:.2e} > {bound:.2e}"
    return twin


# --------------------------------------------------------------------------------------------------- text encoders
@dataclass
class TextTwin:
    encoder: str  # ComfyUI's encoder name in the CLIP model ("clip_l", "clip_g")
    component: str  # the save_lora_weights component ("text_encoder", "text_encoder_2")
    model: torch.nn.Module  # the transformers model a diffusers trainer adapts, holding the ComfyUI weights
    table: dict  # {transformers state key: (comfy key, None, None)}
    targets: tuple  # transformers module paths adapted (every encoder-layer Linear)


# diffusers' text-encoder components per ComfyUI encoder (StableDiffusionXLPipeline: text_encoder = CLIP-L,
# text_encoder_2 = OpenCLIP bigG with projection; FluxPipeline: text_encoder = CLIP-L, T5 is never trained)
TEXT_COMPONENTS = {
    "sdxl_clip": {
        "clip_l": ("text_encoder", "CLIPTextModel"),
        "clip_g": ("text_encoder_2", "CLIPTextModelWithProjection"),
    },
    "flux_clip": {"clip_l": ("text_encoder", "CLIPTextModel")},
}


def build_text_twins(name: str, arch: TinyArch) -> list[TextTwin]:
    """transformers CLIP text models with the tiny ComfyUI encoders' configs and weights (ComfyUI keeps the
    transformers names under ``<encoder>.transformer.``); raises if any transformers tensor is left unfilled."""
    transformers = importlib.import_module("transformers")
    state = arch.clip.cond_stage_model.state_dict()
    twins = []
    for encoder, (component, cls_name) in TEXT_COMPONENTS[name].items():
        prefix = f"{encoder}.transformer."
        layers = {k for k in state if k.startswith(prefix + "text_model.encoder.layers.")}
        token = state[prefix + "text_model.embeddings.token_embedding.weight"]
        fc1 = state[prefix + "text_model.encoder.layers.0.mlp.fc1.weight"]
        config = transformers.CLIPTextConfig(
            vocab_size=token.shape[0],
            hidden_size=token.shape[1],
            intermediate_size=fc1.shape[0],
            num_hidden_layers=len({k[len(prefix + "text_model.encoder.layers.") :].split(".")[0] for k in layers}),
            num_attention_heads=arch_models.TINY_CLIP["num_attention_heads"],
            max_position_embeddings=state[prefix + "text_model.embeddings.position_embedding.weight"].shape[0],
            projection_dim=arch_models.TINY_CLIP["projection_dim"],
        )
        model = getattr(transformers, cls_name)(config).float().eval()
        # ComfyUI keeps the checkpoint names (text_model.encoder.…); transformers 5's CLIPTextModel is the text
        # transformer itself (encoder.…, no text_model.), CLIPTextModelWithProjection holds it as text_model
        inner = "" if hasattr(model, "text_model") else "text_model."
        table = {k: (prefix + inner + k, None, None) for k in model.state_dict()}
        missing = fill(model, table, state)
        assert not missing, f"{name} {encoder}: transformers tensors the ComfyUI encoder does not fill: {missing}"
        targets = tuple(
            t.path[len(encoder) + 1 :].removeprefix(inner) for t in arch.native if t.path.startswith(encoder + ".")
        )
        modules = dict(model.named_modules())
        absent = [p for p in targets if not isinstance(modules.get(p), torch.nn.Linear)]
        assert not absent, f"{name} {encoder}: adapted modules missing from the transformers model: {absent}"
        twins.append(TextTwin(encoder, component, model, table, targets))
    return twins


def build_qwen3_twin(arch: TinyArch) -> TextTwin:
    """transformers ``Qwen3ForCausalLM`` with the tiny ComfyUI Qwen3-4B encoder's config (read off its tensors) and
    weights (ComfyUI keeps the transformers names under ``qwen3_4b.transformer.``; the tied ``lm_head`` is the
    embedding); raises if any transformers tensor is left unfilled."""
    transformers = importlib.import_module("transformers")
    state = arch.clip.cond_stage_model.state_dict()
    prefix = "qwen3_4b.transformer."
    layer = prefix + "model.layers.0."
    embed = state[prefix + "model.embed_tokens.weight"]
    head_dim = state[layer + "self_attn.q_norm.weight"].shape[0]
    config = transformers.Qwen3Config(
        vocab_size=embed.shape[0],
        hidden_size=embed.shape[1],
        intermediate_size=state[layer + "mlp.gate_proj.weight"].shape[0],
        num_hidden_layers=len({k.split(".")[4] for k in state if k.startswith(prefix + "model.layers.")}),
        num_attention_heads=state[layer + "self_attn.q_proj.weight"].shape[0] // head_dim,
        num_key_value_heads=state[layer + "self_attn.k_proj.weight"].shape[0] // head_dim,
        head_dim=head_dim,
        tie_word_embeddings=True,
    )
    model = transformers.Qwen3ForCausalLM(config).float().eval()
    table = {k: (prefix + k, None, None) for k in model.state_dict()}
    table["lm_head.weight"] = (prefix + "model.embed_tokens.weight", None, None)
    missing = fill(model, table, state)
    assert not missing, f"Qwen3: transformers tensors the ComfyUI encoder does not fill: {missing}"
    targets = tuple(t.path[len("qwen3_4b.") :] for t in arch.native)
    modules = dict(model.named_modules())
    absent = [p for p in targets if not isinstance(modules.get(p), torch.nn.Linear)]
    assert not absent, f"Qwen3: adapted modules missing from the transformers model: {absent}"
    return TextTwin("qwen3_4b", "text_encoder", model, table, targets)
