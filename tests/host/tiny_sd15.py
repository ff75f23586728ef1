"""Tiny-but-real SD1.5 checkpoint and a matching kohya LoRA, for tests against real ComfyUI.

The checkpoint is laid out exactly as ComfyUI's ``CheckpointLoaderSimple`` expects an SD1.5
file, so the untouched detection path (``model_detection`` -> ``supported_models.SD15``)
accepts it:

* ``model.diffusion_model.*``: ComfyUI's own ``UNetModel`` with ``model_channels=320``,
  ``context_dim=768``, ``use_linear_in_transformer=False`` (what SD15 pins), but a single
  level: ``channel_mult=[1]``, ``num_res_blocks=[1]``, ``transformer_depth=[1]``,
  ``transformer_depth_output=[1, 1]``, middle depth 1 (25.8 M params);
* ``cond_stage_model.transformer.*``: a full CLIP-L (``comfy/sd1_clip_config.json``): the
  loader always builds the full model and leaves missing keys uninitialised;
* ``first_stage_model.*``: TAESD keys (``taesd_encoder.*``, ``taesd_decoder.*``,
  ``vae_scale=0.18215``, ``vae_shift=0``), which ``comfy.sd.VAE`` loads as TAESD.

The modules are built (on the ``meta`` device) only for their key layout; values are seeded
random (fan-in scaled normal for weights, ones for norm weights, small biases), stored fp16.
About 304 MB: generated at test time, cached under ``.cache/fixtures/``, never committed.

Requires ComfyUI importable with ``args.cpu`` set (see ``comfy_bootstrap.prepare_import``).
As a script: ``python tests/host/tiny_sd15.py [--out DIR]`` fetches ComfyUI via
``tools/comfyui_env.py`` and writes ``tiny_sd15.safetensors`` and ``tiny_sd15_lora.safetensors``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
import time
from pathlib import Path

FIXTURE_VERSION = "1"
CKPT_KIND = "lyco-tiny-sd15"
LORA_KIND = "lyco-tiny-sd15-kohya-lora"

UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "channel_mult": [1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    # SD15.unet_extra_config
    "num_heads": 8,
    "num_head_channels": -1,
}

TAESD_SCALE = 0.18215

# UNet modules a kohya SD1.x LoRA targets inside each BasicTransformerBlock (ldm names).
_UNET_TARGET = re.compile(
    r"^diffusion_model\..*\.transformer_blocks\.\d+\."
    r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))\.weight$"
)
_CLIP_TARGET = re.compile(
    r"^clip_l\.transformer\.text_model\.encoder\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))\.weight$"
)


# --------------------------------------------------------------------------- helpers


def read_safetensors_metadata(path: Path | str) -> dict | None:
    """The ``__metadata__`` of a .safetensors file (stdlib only), or None if unreadable."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                return None
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return header.get("__metadata__") or {}


def _marker_matches(path: Path, expected: dict) -> bool:
    if not path.is_file():
        return False
    meta = read_safetensors_metadata(path)
    return meta is not None and all(meta.get(k) == v for k, v in expected.items())


def _save_atomic(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _layout_modules():
    """ComfyUI's own UNet, CLIP-L and TAESD, built only for their state-dict layout."""
    import torch
    import comfy.ops
    import comfy.clip_model
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    clip_cfg_path = Path(comfy.clip_model.__file__).resolve().parent / "sd1_clip_config.json"
    clip_cfg = json.loads(clip_cfg_path.read_text(encoding="utf-8"))
    ops = comfy.ops.disable_weight_init
    meta = torch.device("meta")

    unet = UNetModel(**UNET_CONFIG, dtype=torch.float16, device=meta, operations=ops)
    clip = comfy.clip_model.CLIPTextModel(clip_cfg, dtype=torch.float16, device=meta, operations=ops)
    with torch.device(meta):  # TAESD takes no device argument
        taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    return unet, clip, taesd


def _layout() -> list[tuple[str, tuple[int, ...]]]:
    unet, clip, taesd = _layout_modules()
    out = []
    for k, v in unet.state_dict().items():
        out.append(("model.diffusion_model." + k, tuple(v.shape)))
    for k, v in clip.state_dict().items():
        if k.startswith("text_projection"):  # SD1.5 files carry none; the loader drops it anyway
            continue
        out.append(("cond_stage_model.transformer." + k, tuple(v.shape)))
    for k, v in taesd.state_dict().items():
        out.append(("first_stage_model." + k, tuple(v.shape)))
    return out


def _init_tensor(name: str, shape: tuple[int, ...], gen):
    import torch

    if name.endswith("first_stage_model.vae_scale"):
        return torch.tensor(TAESD_SCALE, dtype=torch.float16)
    if name.endswith("first_stage_model.vae_shift"):
        return torch.tensor(0.0, dtype=torch.float16)
    if len(shape) == 1 and name.endswith(".weight"):  # GroupNorm / LayerNorm scales
        return torch.ones(shape, dtype=torch.float16)
    if name.endswith(".bias") or len(shape) <= 1:
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.float16)
    if "embedding" in name:  # token / position embeddings: CLIP's own init scale
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.float16)
    fan_in = math.prod(shape[1:])
    return (torch.randn(shape, generator=gen) / math.sqrt(fan_in)).to(torch.float16)


# --------------------------------------------------------------------------- public API


def make_tiny_sd15(path: Path | str, seed: int = 0) -> Path:
    """Write the tiny SD1.5 checkpoint to ``path`` unless a matching one is already there."""
    import torch

    path = Path(path)
    marker = {"lyco.fixture": CKPT_KIND, "lyco.fixture_version": FIXTURE_VERSION, "lyco.seed": str(seed)}
    if _marker_matches(path, marker):
        return path

    gen = torch.Generator(device="cpu").manual_seed(seed)
    tensors = {}
    for name, shape in sorted(_layout()):  # sorted: values independent of module build order
        tensors[name] = _init_tensor(name, shape, gen).contiguous()
    _save_atomic(
        tensors,
        path,
        {**marker, "modelspec.architecture": "stable-diffusion-v1", "lyco.note": "random weights; test fixture only"},
    )
    return path


def lora_targets(model_patcher, clip) -> tuple[dict[str, str], dict[str, str]]:
    """kohya LoRA names -> model keys, chosen from ComfyUI's own key maps.

    UNet: attn1/attn2 q/k/v/out.0 and ff.net.0.proj / ff.net.2 of every transformer block,
    named the kohya (diffusers-path) way when ComfyUI maps such a name, else the ldm-path way.
    CLIP: q/k/v/out_proj, fc1, fc2 of every CLIP-L layer as ``lora_te_text_model_encoder_layers_*``.
    """
    import comfy.lora

    unet_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    clip_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})

    by_target: dict[str, list[str]] = {}
    for name, target in unet_map.items():
        if isinstance(target, str) and name.startswith("lora_unet_") and _UNET_TARGET.match(target):
            by_target.setdefault(target, []).append(name)
    unet = {}
    for target, names in sorted(by_target.items()):
        diffusers = [n for n in names if re.match(r"lora_unet_(down_blocks|mid_block|up_blocks)_", n)]
        unet[sorted(diffusers or names)[0]] = target

    te = {
        name: target
        for name, target in clip_map.items()
        if isinstance(target, str)
        and name.startswith("lora_te_text_model_encoder_layers_")
        and _CLIP_TARGET.match(target)
    }
    return unet, dict(sorted(te.items()))


def make_tiny_lora(
    path: Path | str, checkpoint_path: Path | str, seed: int = 1, rank: int = 4, alpha: float = 4.0
) -> Path:
    """Write a kohya-layout LoRA (rank 4, alpha 4, non-zero up) matching the tiny checkpoint."""
    import torch

    path, checkpoint_path = Path(path), Path(checkpoint_path)
    ck_meta = read_safetensors_metadata(checkpoint_path) or {}
    ck_id = f"{ck_meta.get('lyco.fixture')}:{ck_meta.get('lyco.fixture_version')}:{ck_meta.get('lyco.seed')}"
    marker = {
        "lyco.fixture": LORA_KIND,
        "lyco.fixture_version": FIXTURE_VERSION,
        "lyco.seed": str(seed),
        "lyco.rank": str(rank),
        "lyco.alpha": str(alpha),
        "lyco.checkpoint": ck_id,
    }
    if _marker_matches(path, marker):
        return path

    import comfy.sd

    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint_path), output_vae=False)
    unet_names, te_names = lora_targets(model, clip)
    if not unet_names or not te_names:
        raise RuntimeError(f"no LoRA targets found (unet {len(unet_names)}, clip {len(te_names)})")
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    shapes.update({k: tuple(v.shape) for k, v in clip.cond_stage_model.state_dict().items()})
    del model, clip

    gen = torch.Generator(device="cpu").manual_seed(seed)
    tensors = {}
    for name, target in list(unet_names.items()) + list(te_names.items()):
        out_f, in_f = shapes[target][:2]
        down = torch.randn((rank, in_f), generator=gen) / math.sqrt(in_f)
        up = torch.randn((out_f, rank), generator=gen) * (0.5 / math.sqrt(rank))
        tensors[f"{name}.lora_down.weight"] = down.to(torch.float16).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.to(torch.float16).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float16)
    _save_atomic(
        tensors,
        path,
        {
            **marker,
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(rank),
            "ss_network_alpha": str(alpha),
            "lyco.unet_modules": str(len(unet_names)),
            "lyco.te_modules": str(len(te_names)),
        },
    )
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    here = Path(__file__).resolve().parent
    sys.path.append(str(here))  # for comfy_bootstrap only; appended so ComfyUI names win
    import comfy_bootstrap

    p = argparse.ArgumentParser(description="Generate the tiny SD1.5 checkpoint and kohya LoRA fixtures.")
    p.add_argument("--out", default=str(comfy_bootstrap.FIXTURE_CACHE), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    comfy_bootstrap.prepare_import(comfy_bootstrap.ensure_comfyui_root())
    out = Path(a.out)
    t0 = time.perf_counter()
    ck = make_tiny_sd15(out / "tiny_sd15.safetensors", seed=a.seed)
    t1 = time.perf_counter()
    lo = make_tiny_lora(out / "tiny_sd15_lora.safetensors", ck)
    t2 = time.perf_counter()
    print(f"{ck} ({ck.stat().st_size / 2**20:.1f} MiB, {t1 - t0:.1f} s)")
    print(f"{lo} ({lo.stat().st_size / 2**20:.1f} MiB, {t2 - t1:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
