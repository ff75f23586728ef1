"""Real UNet geometry from ComfyUI itself: a full-size SD1.5 UNet with seeded random weights, and SDXL's shapes.

SD1.5: ``supported_models.SD15`` with the standard SD1.5 UNet config (~860 M parameters), stored in fp16 and computed
in float32 (ComfyUI's manual cast, as on a CPU), wrapped in a ``ModelPatcher`` whose load and offload device is the
bench device. SDXL: ``supported_models.SDXL`` built on the meta device, only to count its Linear/Conv weight shapes.
"""

from __future__ import annotations

import torch

UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SDXL_CONFIG = {
    **UNET_CONFIG,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
}
del SDXL_CONFIG["num_heads"]


def sdxl_shapes() -> dict[tuple[int, ...], int]:
    """{weight shape: how many Linear/Conv weights of the SDXL UNet have it}."""
    import comfy.supported_models

    config = comfy.supported_models.SDXL(SDXL_CONFIG)
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({}, device=torch.device("meta"))
    counts: dict[tuple[int, ...], int] = {}
    for key, param in model.diffusion_model.named_parameters():
        if param.ndim in (2, 4) and key.endswith(".weight"):
            counts[tuple(param.shape)] = counts.get(tuple(param.shape), 0) + 1
    return counts


def build_sd15(device: torch.device, seed: int = 0):
    """(ModelPatcher, {kohya module name: weight shape}) for every Linear/Conv weight of the UNet."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(UNET_CONFIG)
    config.set_inference_dtype(torch.float16, torch.float32)
    model = config.get_model({}, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = {}
    with torch.no_grad():
        for key, param in model.diffusion_model.named_parameters():
            fan_in = param[0].numel() if param.ndim > 1 else 1
            param.normal_(0.0, fan_in**-0.5 if param.ndim > 1 else 0.02, generator=gen)
            if param.ndim in (2, 4) and key.endswith(".weight"):
                shapes["lora_unet_" + key[: -len(".weight")].replace(".", "_")] = tuple(param.shape)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    return patcher, shapes


def step_inputs(device: torch.device, latent: int, batch: int = 2, seed: int = 0):
    """(x, timestep, context) for one sampling step (cond + uncond) at ``latent``×``latent``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, 4, latent, latent, generator=gen, device=device)
    t = torch.full((batch,), 500.0, device=device)
    context = torch.randn(batch, 77, 768, generator=gen, device=device)
    return x, t, context
