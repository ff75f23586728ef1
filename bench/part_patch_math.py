"""Part 1: per-module patch math — our LycoPatch vs ComfyUI's own adapter for the same file tensors, and the floor.

Every case runs ``comfy.lora.calculate_weight([patch], weight, key, intermediate_dtype)`` exactly as ComfyUI
calls it, on SDXL UNet shapes, in two situations:

* ``full`` — a full load: ComfyUI hands the adapter a float32 copy of the (fp16) weight, intermediate float32;
* ``lowvram-fp16`` / ``lowvram-bf16`` — ComfyUI's low-VRAM path recomputes the patch on every forward on the
  weight cast to the compute dtype, with that dtype as intermediate dtype.

``floor`` is one in-place ``weight.add_(delta)`` of a precomputed delta of the weight's size and dtype (the
memory-bound lower bound of any patch). On a full load the strength changes every round (0.8 + round/1000, both
sides alike), so nothing is served from a cache (a cold patch); in the low-VRAM modes it stays 0.8, as it does over
the forwards of a sampling run (our OFT/BOFT rotation cache is warm; ComfyUI's adapters cache nothing). Peak
memory: extra bytes during one call, in units of the float32 weight size.
"""

from __future__ import annotations

import logging
import statistics

import torch

import harness
import synth

LINEAR = [(640, 640), (1280, 1280), (1280, 5120), (5120, 1280)]
CONV = [(640, 640, 3, 3), (1280, 1280, 3, 3)]
MODES = {"full": torch.float32, "lowvram-fp16": torch.float16, "lowvram-bf16": torch.bfloat16}
MODULE = "lora_unet_bench"
KEY = "diffusion_model.bench.weight"


def _patches(env, method: str, shape, gen):
    """(ours, native) ComfyUI patch objects for one module of ``method`` on a weight of ``shape``, or None."""
    params = synth.module_tensors(method, shape, gen)
    if params is None:
        return None
    tensors = {f"{MODULE}.{k}": v for k, v in params.items()}
    adapter = env.core.adapter_from_tensors(tensors, file="bench")
    ours = env.host.LycoPatch.of(adapter.modules[MODULE])
    import comfy.lora

    native = comfy.lora.load_lora(tensors, {MODULE: KEY}, log_missing=False)[KEY]
    return ours, native


def _setup(env, shape, mode):
    """(pristine weight, working weight, floor delta) for one case."""
    dtype = MODES[mode]
    pristine = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05).half().to(env.device, dtype)
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(env.device, dtype) * 1e-3
    return pristine, pristine.clone(), delta


def _call(patch, weight, mode, strength):
    import comfy.lora

    return lambda: comfy.lora.calculate_weight(
        [(strength[0], patch, 1.0, None, None)], weight, KEY, intermediate_dtype=MODES[mode]
    )


def _case(env, method, shape, mode, ours, native, repeats, warmup):
    device = env.device
    pristine, weight, delta = _setup(env, shape, mode)
    strength = [0.8]
    candidates = {
        "ours": _call(ours, weight, mode, strength),
        "native": _call(native, weight, mode, strength),
        "floor": lambda: weight.add_(delta),
    }

    def reset(name, index):
        weight.copy_(pristine)
        strength[0] = 0.8 + index / 1000 if mode == "full" else 0.8

    timings = harness.rounds(candidates, repeats, warmup, device, reset)
    reset("native", 0)
    with harness.logged_errors() as errors:
        candidates["native"]()
    native_out = weight.float().clone()
    reset("ours", 0)
    candidates["ours"]()
    native_failed = bool(errors)
    changed = (weight.float() - pristine.float()).abs().max().item()
    row = {
        "method": method,
        "shape": list(shape),
        "mode": mode,
        "ours_ms": timings.median("ours") * 1e3,
        "native_ms": timings.median("native") * 1e3,
        "floor_ms": timings.median("floor") * 1e3,
        "floor_ratio": timings.ratio("ours", "floor"),
        "native_failed": native_failed,
        "vs_native_maxdiff_rel": (weight.float() - native_out).abs().max().item() / max(changed, 1e-30),
        "ratio": None if native_failed else timings.ratio("ours", "native"),
    }
    harness.later(lambda: _memory(env, row, ours, native))
    return row


def _memory(env, row, ours, native):
    """Peak extra memory of one call of each side, in float32 weights (``× W``)."""
    for name, patch in (("ours", ours), ("native", native)):
        pristine, weight, _ = _setup(env, tuple(row["shape"]), row["mode"])
        with harness.logged_errors():
            peak, _ = harness.measure(_call(patch, weight, row["mode"], [0.8]), env.device)
        row[f"{name}_peak_w"] = peak / (weight.numel() * 4)
    row["peak_mem_ratio"] = (
        None if row["native_failed"] or not row["native_peak_w"] else row["ours_peak_w"] / row["native_peak_w"]
    )


def run(env, quick: bool) -> dict:
    """{"cases": [...]}; per-method figures are added by ``finish`` once memory is measured."""
    logging.getLogger().setLevel(logging.CRITICAL)  # native adapters log (and swallow) their failures per call
    repeats, warmup = (2, 1) if quick else (9, 2)
    gen = torch.Generator().manual_seed(0)
    cases = []
    for method in synth.METHODS:
        for shape in LINEAR + CONV:
            patches = _patches(env, method, shape, gen)
            if patches is None:
                continue
            for mode in MODES:
                cases.append(_case(env, method, shape, mode, *patches, repeats, warmup))
                print(
                    f"  patch_math {method:13s} {str(shape):22s} {mode:13s} ratio "
                    f"{_fmt(cases[-1]['ratio'])} floor {cases[-1]['floor_ratio']:.2f}",
                    flush=True,
                )
    return {"cases": cases}


def finish(results: dict) -> None:
    results.update(summarise(results["cases"]))


def summarise(cases: list[dict]) -> dict:
    """Per method: medians over shapes and modes; ``worst_ratio`` is the slowest case relative to native."""
    summary = {}
    for method in synth.METHODS:
        rows = [c for c in cases if c["method"] == method]
        measured = [c for c in rows if c["ratio"] is not None]
        memory = [c["peak_mem_ratio"] for c in measured if c["peak_mem_ratio"] is not None]
        summary[method] = {
            "ratio": statistics.median(c["ratio"] for c in measured) if measured else None,
            "worst_ratio": max(c["ratio"] for c in measured) if measured else None,
            "floor_ratio": statistics.median(c["floor_ratio"] for c in rows),
            "floor_ratio_full": statistics.median(c["floor_ratio"] for c in rows if c["mode"] == "full"),
            "peak_mem_ratio": statistics.median(memory) if memory else None,
            "ours_peak_w_max": max(c["ours_peak_w"] for c in rows),
            "ours_peak_w_max_full": max(c["ours_peak_w"] for c in rows if c["mode"] == "full"),
            "native_failed_cases": sum(c["native_failed"] for c in rows),
            "cases": len(rows),
        }
    return summary


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"
