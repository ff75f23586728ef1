"""Part: the per-forward patch under dynamic VRAM (ComfyUI 0.22+; here 0.33) — ours vs native, as the host runs it.

With dynamic VRAM on (the default on NVIDIA GPUs), every forward of a patched layer stages its patches and
recomputes the weight: ``LowVramPatch.memory_required()``, a buffer, ``prepare(buffer, copy=False, commit=True)``
(rebuilding each patch as ``type(v)(v.loaded_keys, staged(v.weights))``), ``prepare(buffer, copy=True,
commit=False)`` (the copy), then the call on the weight in the compute dtype, then ``clear_prepared()``. This
times that whole sequence per call for the same file tensors as ``part_patch_math`` (SDXL shapes, the two half
compute dtypes, strength 0.8 as over a sampling run), so the rebuild, the staging copy and the math all count.
Hosts without the prefetch (0.3.75) report the part as skipped.
"""

from __future__ import annotations

import importlib
import logging
import statistics

import torch

import harness
import part_patch_math as math_part
import synth

MODES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _sequence(lowvram_patch, pristine, device):
    def call():
        buffer = torch.empty(lowvram_patch.memory_required(), dtype=torch.uint8, device=device)
        lowvram_patch.prepare(buffer, None, copy=False, commit=True)
        lowvram_patch.prepare(buffer, None, copy=True, commit=False)
        lowvram_patch(pristine.clone())
        lowvram_patch.clear_prepared()

    return call


def run(env, quick: bool) -> dict:
    lowvram_class = importlib.import_module("comfy.model_patcher").LowVramPatch
    if not hasattr(lowvram_class, "prepare"):
        return {"skipped": f"ComfyUI in {env.root.name} has no dynamic-VRAM prefetch (LowVramPatch.prepare)"}
    logging.getLogger().setLevel(logging.CRITICAL)
    repeats, warmup = (2, 1) if quick else (7, 2)
    shapes = math_part.LINEAR[:2] + math_part.CONV[:1] if quick else math_part.LINEAR + math_part.CONV
    gen = torch.Generator().manual_seed(0)
    cases = []
    for method in synth.METHODS:
        for shape in shapes:
            patches = math_part._patches(env, method, shape, gen)
            if patches is None:
                continue
            for mode, dtype in MODES.items():
                pristine = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05).to(env.device, dtype)
                calls = {}
                for name, patch in zip(("ours", "native"), patches):
                    table = {math_part.KEY: [(0.8, patch, 1.0, None, None)]}
                    calls[name] = _sequence(lowvram_class(math_part.KEY, table), pristine, env.device)
                with harness.logged_errors() as errors:
                    calls["native"]()
                timings = harness.rounds(calls, repeats, warmup, env.device)
                failed = bool(errors)
                cases.append(
                    {
                        "method": method,
                        "shape": list(shape),
                        "mode": mode,
                        "native_failed": failed,
                        "ours_ms": timings.median("ours") * 1e3,
                        "native_ms": timings.median("native") * 1e3,
                        "ratio": None if failed else timings.ratio("ours", "native"),
                    }
                )
                print(
                    f"  prefetch {method:13s} {str(shape):22s} {mode}  ratio {math_part._fmt(cases[-1]['ratio'])}",
                    flush=True,
                )
    summary = {}
    for method in synth.METHODS:
        measured = [c["ratio"] for c in cases if c["method"] == method and c["ratio"] is not None]
        summary[method] = {
            "ratio": statistics.median(measured) if measured else None,
            "worst_ratio": max(measured) if measured else None,
            "native_failed_cases": sum(c["native_failed"] for c in cases if c["method"] == method),
            "cases": sum(c["method"] == method for c in cases),
        }
    return {"cases": cases, "methods": summary}
