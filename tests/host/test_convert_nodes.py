"""The conversion nodes inside a real ComfyUI on the tiny SD1.5 checkpoint: load → to-LoRA → save → load again with
our loader and with ComfyUI's native LoraLoader; OFT → LoRA so the native loader reproduces LyCORIS' own weights;
merge, bake (Save-Checkpoint-ready MODEL) and extraction from two MODELs; safety of Save Adapter.

The pack is reached only through ComfyUI (``comfy.pack_module``), never imported from the repository.
"""

from __future__ import annotations

import importlib
import time

import pytest
import torch

import adapter_fixtures as af
from tolerances import agreement, delta_agreement

NODE_IDS = (
    "LyCOAdapterLoad",
    "LyCOAdapterConvert",
    "LyCOAdapterToLoRA",
    "LyCOAdapterResize",
    "LyCOAdapterMerge",
    "LyCOExtractAdapter",
    "LyCOSaveAdapter",
    "LyCOApplyAdapter",
    "LyCOBakeCheckpoint",
)
MEASURED: dict[str, str] = {}


@pytest.fixture(scope="module")
def tiny(comfy):
    model, clip, _ = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)
    return model, clip


def run(comfy, node_id, *args, **kwargs):
    return comfy.lyco_nodes[node_id].execute(*args, **kwargs)


def patched(patcher, key: str) -> torch.Tensor:
    """The weight ComfyUI computes for ``key`` on a full load (fp32), from the patcher's patch list."""
    lora = importlib.import_module("comfy.lora")
    weight = patcher.model_state_dict()[key].float().clone()
    return lora.calculate_weight(patcher.patches[key], weight, key) if key in patcher.patches else weight


def relist(name: str) -> None:
    folder_paths = importlib.import_module("folder_paths")
    folder_paths.filename_list_cache.pop("loras", None)
    assert name in folder_paths.get_filename_list("loras"), name


def rel(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> float:
    return float((a - b).norm() / (b - base).norm())


def test_nodes_registered(comfy):
    assert set(NODE_IDS) <= set(comfy.lyco_nodes)


def test_load_to_lora_save_and_load_with_our_and_native_loader(comfy, tiny):
    model, clip = tiny
    adapter, info = run(comfy, "LyCOAdapterLoad", comfy.base.lora_name).result
    assert "lora ×112" in info
    t0 = time.perf_counter()
    small, report = run(comfy, "LyCOAdapterToLoRA", adapter, "rank", 2, 0.99, 0, False).result
    seconds = time.perf_counter() - t0
    assert "total relative error" in report and {m.rank() for m in small.modules.values()} == {2}
    MEASURED["to-lora rank 4→2"] = f"{report.splitlines()[0]} (node wall {seconds:.2f} s)"
    out = run(comfy, "LyCOSaveAdapter", small, "lyco_test/tolora", "lycoris", "fp32", False)
    path = out.result[0]
    assert path.endswith("lyco_test/tolora.safetensors") and "saved 112 modules" in out.ui.as_dict()["text"][0]
    relist("lyco_test/tolora.safetensors")

    ours_m, ours_c, _ = (
        comfy.lyco_nodes["LyCOLoadAdapter"].execute(model, clip, "lyco_test/tolora.safetensors", 1.0, 1.0).result
    )
    native_m, native_c = comfy.nodes.LoraLoader().load_lora(model, clip, "lyco_test/tolora.safetensors", 1.0, 1.0)
    orig_m, orig_c = comfy.nodes.LoraLoader().load_lora(model, clip, comfy.base.lora_name, 1.0, 1.0)
    assert len(native_m.patches) == 40 and len(native_c.patcher.patches) == 72
    modules = {
        m.name: m
        for m in comfy.pack_module.lyco_core.convert.to_lora(
            adapter, comfy.pack_module.lyco_core.convert.RankPolicy(rank=2)
        )[1].modules
    }
    for key in list(native_m.patches)[:4]:
        base = model.model_state_dict()[key].float()
        ours, native, original = patched(ours_m, key), patched(native_m, key), patched(orig_m, key)
        # ours and ComfyUI's float32 W + up·down (rank 2, one product) of the same file
        bound = delta_agreement(native, base, 2) * float((native - base).abs().max())
        assert float((ours - native).abs().max()) <= bound
        assert 0 < rel(native, original, base) < 1  # rank 2 of a rank-4 delta: the reported SVD tail
    worst = max(m.error for m in modules.values())
    assert 0 < worst < 1
    key = next(iter(native_c.patcher.patches))
    ours, native = patched(ours_c.patcher, key), patched(native_c.patcher, key)
    base = native_c.patcher.model_state_dict()[key].float()
    assert float((ours - native).abs().max()) <= delta_agreement(native, base, 2) * float((native - base).abs().max())


def test_oft_to_lora_makes_the_native_loader_exact(comfy, tiny, tmp_path):
    model, clip = tiny
    unet_sd, clip_sd = model.model_state_dict(), clip.cond_stage_model.state_dict()
    base = {}
    for layer in af.ADAPTER_LAYERS:
        state = unet_sd if layer.side == "unet" else clip_sd
        base.update({k: state[k].float().clone() for k in (layer.key, layer.bias_key) if k in state})
    fixture = af.build_lycoris(tmp_path, "lyco_oft", base)
    adapter = comfy.pack_module.lyco_core.load_adapter(fixture.path)
    with pytest.raises(Exception, match="needs the base weights"):
        run(comfy, "LyCOAdapterToLoRA", adapter, "rank", 512, 0.99, 0, False)
    lora, report = run(
        comfy, "LyCOAdapterToLoRA", adapter, "energy", 4096, 0.9999999, 0, False, model=model, clip=clip
    ).result
    assert "oft → lora" in report
    run(comfy, "LyCOSaveAdapter", lora, "lyco_test/oft_as_lora", "lycoris", "fp32", False)
    relist("lyco_test/oft_as_lora.safetensors")
    native_m, native_c = comfy.nodes.LoraLoader().load_lora(model, clip, "lyco_test/oft_as_lora.safetensors", 1, 1)
    for key, reference in fixture.reference[1.0].items():
        patcher = native_m if key.startswith("diffusion_model.") else native_c.patcher
        # error of the method, not rounding: the energy policy keeps 1 − 1e-7 of ‖ΔW‖², a tail up to √1e-7 ≈ 3e-4
        assert rel(patched(patcher, key), reference, base[key]) < 1e-3, key


def test_merge_bake_and_convert(comfy, tiny):
    model, clip = tiny
    adapter, _ = run(comfy, "LyCOAdapterLoad", comfy.base.lora_name).result
    small, _ = run(comfy, "LyCOAdapterToLoRA", adapter, "rank", 2, 0.99, 0, False).result
    t0 = time.perf_counter()
    merged, report = run(comfy, "LyCOAdapterMerge", adapter, 0.7, small, 0.3, "lora", "rank", 4, 0.99, 0, False).result
    MEASURED["merge lora r4 + lora r2 → lora r4"] = (
        f"{report.splitlines()[0]} (node wall {time.perf_counter() - t0:.2f} s)"
    )
    assert "lora → lora r4" in report or "lora r4" in report
    full, report = run(
        comfy, "LyCOAdapterMerge", adapter, 0.5, adapter, 0.5, "full diff", "rank", 4, 0.99, 0, False
    ).result
    assert {m.algo for m in full.modules.values()} == {"full"}
    baked_m, baked_c, text = run(comfy, "LyCOBakeCheckpoint", model, clip, full, 1.0, 1.0).result
    assert "baked 112 of 112" in text
    orig_m, _ = comfy.nodes.LoraLoader().load_lora(model, clip, comfy.base.lora_name, 1.0, 1.0)
    key = next(iter(orig_m.patches))
    assert baked_m.patches[key][-1][1][0] == "set"
    orig = patched(orig_m, key)
    orig_base = orig_m.model_state_dict()[key].float()
    # the rank-4 LoRA's W + up·down against the same ΔW as a full diff (0.5·ΔW + 0.5·ΔW): rank 4, the product,
    # the sum of the halves and the add to W, 3 steps (measured: equal)
    same = delta_agreement(orig, orig_base, 4, steps=3) * float((orig - orig_base).abs().max())
    assert float((patched(baked_m, key) - orig).abs().max()) <= same
    applied_m, _, text = run(comfy, "LyCOApplyAdapter", model, full, 1.0, 1.0, clip=clip).result
    assert "UNet 40" in text and float((patched(applied_m, key) - orig).abs().max()) <= same
    peft_named, report = run(comfy, "LyCOAdapterConvert", adapter, "diffusers", "auto", model=model, clip=clip).result
    assert peft_named.layout == "diffusers" and "exact" in report


def test_extract_from_two_models(comfy, tiny):
    model, clip = tiny
    tuned, tuned_clip, _ = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)
    unet = tuned.model.diffusion_model
    layer = unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q  # 320×320: factors (16,20)×(16,20)
    gen = torch.Generator().manual_seed(3)
    delta = 0.05 * torch.kron(torch.randn(16, 16, generator=gen), torch.randn(20, 20, generator=gen))
    with torch.no_grad():
        layer.weight += delta.to(layer.weight.dtype)
    lokr, report = run(comfy, "LyCOExtractAdapter", model, tuned, "lokr", -1, "rank", 64, 0.99, 0, False).result
    assert list(lokr.modules) == ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert lokr.modules[next(iter(lokr.modules))].full_matrix
    error = float(report.split("total relative error ")[1].split(",")[0])
    # the Kronecker delta comes back; the rest is the weight dtype's rounding: the rank-1 SVD of the rearranged
    # 256×400 ΔW (depth 256) and the product (2 steps), with the rounding of W + ΔW (ratio max|W'|/max|ΔW|)
    ratio = float(layer.weight.abs().max() / delta.abs().max())
    assert error <= agreement(256, layer.weight.dtype, ratio=ratio, steps=2)
    MEASURED["extract lokr (exact Kronecker delta)"] = report.splitlines()[0]


def test_save_refuses_overwrite_and_bad_names(comfy):
    adapter, _ = run(comfy, "LyCOAdapterLoad", comfy.base.lora_name).result
    run(comfy, "LyCOSaveAdapter", adapter, "lyco_test/once", "lycoris", "fp16", False)
    with pytest.raises(Exception, match="refusing to overwrite"):
        run(comfy, "LyCOSaveAdapter", adapter, "lyco_test/once", "lycoris", "fp16", False)
    run(comfy, "LyCOSaveAdapter", adapter, "lyco_test/once", "lycoris", "fp16", True)
    with pytest.raises(Exception, match="inside the loras folder"):
        run(comfy, "LyCOSaveAdapter", adapter, "../escape", "lycoris", "fp16", False)


def test_report_measurements(capsys):
    with capsys.disabled():
        for label, line in MEASURED.items():
            print(f"\n[measured] {label}: {line}")
