"""Bypass mode inside a real ComfyUI: the loaders' ``bypass`` option runs adapters in the layers' forward passes.

On the tiny SD1.5 checkpoint loaded in float32, one UNet step (and a CLIP encode) with the adapter bypassed equals
(to float32 rounding) the same step with the adapter merged by ComfyUI's full load, for LoRA/LoCon (+Tucker), LoHa and LoKr (+Tucker),
in full and low-VRAM loads, chained, and through the loader node; weight-dependent methods are refused.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

CPU = torch.device("cpu")
LINEAR = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
CONV = "input_blocks.1.0.in_layers.2"
POINTWISE = "input_blocks.1.1.proj_in"
CLIP_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def _name(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def _tensors(method: str, shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """LyCORIS-layout tensors of ``method`` for each (kohya name → weight shape)."""
    gen = torch.Generator().manual_seed(seed)

    def g(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    out = {}
    for name, shape in shapes.items():
        o, i, k = shape[0], shape[1], tuple(shape[2:])
        ones = (1,) * len(k)
        if method == "lora":
            p = {"lora_up.weight": g(o, 4, *ones), "lora_down.weight": g(4, i, *k), "alpha": torch.tensor(2.0)}
        elif method == "locon_tucker" and k and k[0] > 1:
            p = {"lora_up.weight": g(o, 4, *ones), "lora_down.weight": g(4, i, *ones), "lora_mid.weight": g(4, 4, *k)}
        elif method == "loha":
            p = {"hada_w1_a": g(o, 4), "hada_w1_b": g(4, i * (k[0] * k[1] if k else 1)), "hada_w2_a": g(o, 4),
                 "hada_w2_b": g(4, i * (k[0] * k[1] if k else 1)), "alpha": torch.tensor(2.0)}
        elif method == "lokr" and k and k[0] > 1:
            p = {"lokr_w1": g(4, 4), "lokr_w2_a": g(2, o // 4), "lokr_w2_b": g(2, i // 4), "lokr_t2": g(2, 2, *k)}
        elif method == "lokr":
            p = {"lokr_w1": g(4, 4), "lokr_w2_a": g(o // 4, 2), "lokr_w2_b": g(2, i * (k[0] * k[1] if k else 1) // 4)}
        elif method == "oft":
            p = {"oft_blocks": g(o // 32, 32, 32)}
        else:
            continue
        out.update({f"{name}.{key}": value for key, value in p.items()})
    return out


@pytest.fixture(scope="module")
def env(comfy, comfy_base):
    sd = importlib.import_module("comfy.sd")
    pack = comfy.pack_module_name
    model, clip, _ = sd.load_checkpoint_guess_config(
        str(comfy_base.path / "models" / "checkpoints" / comfy_base.ckpt_name), output_vae=False,
        model_options={"dtype": torch.float32}, te_model_options={"dtype": torch.float32})[:3]
    state = model.model_state_dict()
    shapes = {_name(p): tuple(state[f"diffusion_model.{p}.weight"].shape) for p in (LINEAR, CONV, POINTWISE)}
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500.0]), torch.randn(1, 77, 768, generator=gen))
    return {"model": model, "clip": clip, "shapes": shapes, "inputs": inputs,
            "core": importlib.import_module(f"{pack}.lyco_core"),
            "host": importlib.import_module(f"{pack}.nodes.host"),
            "bypass": importlib.import_module(f"{pack}.nodes.bypass"),
            "node": comfy.lyco_nodes["LyCOLoadAdapter"]}


def _step(patcher, inputs, lowvram: int = 0) -> torch.Tensor:
    patcher.patch_model(device_to=CPU, lowvram_model_memory=lowvram)
    try:
        with torch.no_grad():
            x, t, context = inputs
            return patcher.model.apply_model(x, t, c_crossattn=context).clone()
    finally:
        patcher.unpatch_model(device_to=CPU)


def _close(got, merged, base):
    """Equal up to float32 rounding carried through the network: bypass rounds the branch and the base output
    apart, merging rounds W + m·ΔW (per layer both agree to 1e-6 of the output, tests/core/test_bypass.py)."""
    tolerance = 1e-4 * (merged - base).abs().max() + 1e-5 * merged.abs().max()
    return (got - merged).abs().max().item() <= tolerance.item(), (got - merged).abs().max().item()


@pytest.mark.parametrize("method", ["lora", "locon_tucker", "loha", "lokr"])
def test_bypass_equals_merged_step(env, method):
    adapter = env["core"].adapter_from_tensors(_tensors(method, env["shapes"]), file=f"bypass-{method}")
    base = _step(env["model"], env["inputs"])
    merged_model, _, _ = env["host"].apply_adapter(adapter, env["model"], None, 0.8, 0.0)
    bypass_model, _, coverage = env["bypass"].apply_bypass(adapter, env["model"], None, 0.8, 0.0)
    assert len(coverage.unet) == len(adapter.modules)
    assert not bypass_model.patches and len(bypass_model.object_patches) == len(adapter.modules)
    merged = _step(merged_model, env["inputs"])
    assert (merged - base).abs().max() > 1e-3
    for lowvram in (0, 1):
        ok, error = _close(_step(bypass_model, env["inputs"], lowvram), merged, base)
        assert ok, f"{method} lowvram={lowvram}: max |bypass − merged| = {error}"
    assert torch.equal(_step(env["model"], env["inputs"]), base)  # unpatch restored the plain forward


def test_chained_bypass_loaders_add_up(env):
    first = env["core"].adapter_from_tensors(_tensors("lora", env["shapes"], seed=1), file="first")
    second = env["core"].adapter_from_tensors(_tensors("lokr", env["shapes"], seed=2), file="second")
    base = _step(env["model"], env["inputs"])
    merged_model = env["host"].apply_adapter(first, env["model"], None, 0.7, 0.0)[0]
    merged_model = env["host"].apply_adapter(second, merged_model, None, -0.4, 0.0)[0]
    bypass_model = env["bypass"].apply_bypass(first, env["model"], None, 0.7, 0.0)[0]
    bypass_model = env["bypass"].apply_bypass(second, bypass_model, None, -0.4, 0.0)[0]
    assert len(bypass_model.object_patches) == len(first.modules)  # one wrapper per layer, two branches each
    ok, error = _close(_step(bypass_model, env["inputs"]), _step(merged_model, env["inputs"]), base)
    assert ok, error


def test_clip_bypass_equals_merged(env):
    clip = env["clip"]
    gen = torch.Generator().manual_seed(4)
    tensors = {f"{CLIP_Q}.lora_up.weight": torch.randn(768, 4, generator=gen) * 0.05,
               f"{CLIP_Q}.lora_down.weight": torch.randn(4, 768, generator=gen) * 0.05}
    adapter = env["core"].adapter_from_tensors(tensors, file="clip")
    tokens = clip.tokenize("a photo of a cat")
    base = clip.encode_from_tokens(tokens)
    merged = env["host"].apply_adapter(adapter, None, clip, 0.0, 1.0)[1].encode_from_tokens(tokens)
    bypassed = env["bypass"].apply_bypass(adapter, None, clip, 0.0, 1.0)[1].encode_from_tokens(tokens)
    ok, error = _close(bypassed, merged, base)
    assert ok, error
    assert torch.equal(clip.encode_from_tokens(tokens), base)


def test_weight_dependent_methods_are_refused(env):
    adapter = env["core"].adapter_from_tensors(_tensors("oft", {_name(LINEAR): env["shapes"][_name(LINEAR)]}),
                                               file="oft")
    with pytest.raises(env["core"].AdapterError, match="oft cannot run in bypass mode"):
        env["bypass"].apply_bypass(adapter, env["model"], None, 1.0, 0.0)


def test_loader_node_bypass_option(env, comfy_base):
    folder_paths = importlib.import_module("folder_paths")
    save_file(_tensors("lora", env["shapes"]), str(comfy_base.path / "models" / "loras" / "bypass_lora.safetensors"))
    folder_paths.filename_list_cache.pop("loras", None)
    node = env["node"]
    assert "bypass" in node.INPUT_TYPES()["optional"]
    model, clip, text = node.execute(env["model"], env["clip"], "bypass_lora.safetensors", 1.0, 1.0, bypass=True).result
    assert not model.patches and len(model.object_patches) == 3 and "UNet 3" in text
    merged_model = node.execute(env["model"], env["clip"], "bypass_lora.safetensors", 1.0, 1.0).result[0]
    assert len(merged_model.patches) == 3 and not merged_model.object_patches
