"""fp16 intermediate weights: what ComfyUI 0.33 hands our patches on GPUs.

On 0.33 a full load casts each patched weight to ``comfy.model_management.lora_compute_dtype(device)`` before the
patches run — fp16 on GPUs that do fp16 — and the low-VRAM path always runs them on the weight in the compute
dtype. Our patches compute in float32 inside and round once into the weight's dtype, so for every method and
layout the result must be the float32 result on that same (already fp16) weight, rounded once:
``|got − ours_fp32| ≤ u·|ours_fp32|`` per element with the fp16 unit roundoff u = 2⁻¹¹ (plus 2⁻²⁵ for subnormals).
``ours_fp32`` is the path the parity tests hold to the reference libraries.

Here the host is forced into that mode on the CPU: ``LORA_COMPUTE_DTYPES[cpu] = float16`` (0.33; 0.3.75 has no
such setting and always hands float32 on a full load — that part is skipped and says so), then a real
``load_models_gpu`` full load. The low-VRAM form (``LowVramPatch`` on an fp16 weight) runs on both hosts. Native
``LoraLoader`` is measured beside ours on the same forced full load and written to the artifact table.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from comfy_bootstrap import REPO_ROOT
from test_loader_parity import read_full_load
from tolerances import agreement

FP16_UNIT_ROUNDOFF = 2.0**-11
STRENGTH = 0.6
ARTIFACT = REPO_ROOT / "test-artifacts" / "fp16_intermediate.md"
RESULTS: dict[str, tuple[float, float]] = {}
# beyond one fp16 rounding, the float32 result itself may differ from our path's float32 intermediate by each side's
# own rounding of it and one float32 operation (the add to W), relative to max|W'|: 2ε₃₂·(1 + 1) ≈ 4.8e-7
SLACK = agreement(1, torch.float32)


def excess(got: torch.Tensor, exact: torch.Tensor) -> float:
    """max of |got − exact| beyond one fp16 rounding of ``exact``, relative to max|exact| (0 = correctly rounded)."""
    diff = (got.float() - exact).abs_()
    allowance = exact.abs().mul_(FP16_UNIT_ROUNDOFF).add_(2.0**-25)
    return (diff - allowance).clamp_min_(0).max().item() / max(exact.abs().max().item(), 1e-30)


def _ours(comfy, parity_files, name):
    node = comfy.lyco_nodes["LyCOLoadAdapter"]
    return node.execute(
        parity_files.model, parity_files.clip, parity_files.fixtures[name].lora_name, STRENGTH, STRENGTH
    ).result[:2]


def _fp32_on(patcher, key, weight16: torch.Tensor) -> torch.Tensor:
    """Our float32 result on the fp16-rounded weight (``comfy.lora.calculate_weight`` on a float32 copy)."""
    lora = importlib.import_module("comfy.lora")
    return lora.calculate_weight(patcher.patches[key], weight16.float(), key)


def _patched_keys(model, clip):
    return [(patcher, key) for patcher in (model, clip.patcher) for key in patcher.patches]


@pytest.fixture
def forced_fp16():
    mm = importlib.import_module("comfy.model_management")
    if not hasattr(mm, "lora_compute_dtype"):
        version = importlib.import_module("comfyui_version").__version__
        pytest.skip(f"ComfyUI {version} has no lora_compute_dtype: a full load always hands float32 weights")
    cpu = torch.device("cpu")
    had = mm.LORA_COMPUTE_DTYPES.get(cpu)
    assert mm.lora_compute_dtype(cpu) == torch.float32  # the CPU default
    mm.LORA_COMPUTE_DTYPES[cpu] = torch.float16
    try:
        yield
    finally:
        if had is None:
            mm.LORA_COMPUTE_DTYPES.pop(cpu, None)
        else:
            mm.LORA_COMPUTE_DTYPES[cpu] = had


def _names():
    import adapter_fixtures as af

    return [*af.LYCORIS_SPECS, *af.PEFT_NAMES]


@pytest.mark.parametrize("name", _names())
def test_full_load_with_fp16_intermediate_rounds_once(comfy, parity_files, forced_fp16, name):
    model, clip = _ours(comfy, parity_files, name)
    keys = sorted(k for _, k in _patched_keys(model, clip))
    got, restored = read_full_load(model, clip, keys, parity_files.originals)
    assert restored
    worst = 0.0
    for patcher, key in _patched_keys(model, clip):
        exact = _fp32_on(patcher, key, parity_files.originals[key].to(torch.float16))
        worst = max(worst, excess(got[key], exact))

    n_model, n_clip = comfy.nodes.LoraLoader().load_lora(
        parity_files.model, parity_files.clip, parity_files.fixtures[name].lora_name, STRENGTH, STRENGTH
    )
    native, _ = read_full_load(n_model, n_clip, keys, parity_files.originals)
    native_worst = max(
        excess(native[k], _fp32_on(p, k, parity_files.originals[k].to(torch.float16)))
        for p, k in _patched_keys(model, clip)
    )
    RESULTS[name] = (worst, native_worst)
    assert worst <= SLACK, f"{name}: {worst:.3e} beyond one fp16 rounding of the float32 result"


@pytest.mark.parametrize("name", _names())
def test_lowvram_patch_on_fp16_weight_rounds_once(comfy, parity_files, name):
    lowvram_patch = importlib.import_module("comfy.model_patcher").LowVramPatch
    model, clip = _ours(comfy, parity_files, name)
    for patcher, key in _patched_keys(model, clip):
        weight16 = parity_files.originals[key].to(torch.float16)
        got = lowvram_patch(key, patcher.patches)(weight16.clone())
        assert got.dtype == torch.float16
        worst = excess(got, _fp32_on(patcher, key, weight16))
        assert worst <= SLACK, f"{name} {key}: {worst:.3e} beyond one fp16 rounding of the float32 result"


def test_write_fp16_table():
    if not RESULTS:
        pytest.skip("no forced-fp16 results on this host (see the skip reason of the tests above)")
    version = importlib.import_module("comfyui_version").__version__
    lines = [
        f"# fp16 intermediate weights (ComfyUI {version}, lora_compute_dtype forced to fp16 on CPU)",
        "",
        f"Full load at strength {STRENGTH}; error beyond one fp16 rounding of our float32 result on the same",
        "fp16 weight, relative to max|W'| (0 = correctly rounded).",
        "",
        "| fixture | ours | native LoraLoader |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {o:.1e} | {nat:.1e} |" for n, (o, nat) in sorted(RESULTS.items())]
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text("\n".join(lines) + "\n", encoding="utf-8")
