"""Part 2: the whole model — ``ModelPatcher.patch_model`` of a full SD1.5 UNet with one adapter of each method.

Ours is what our loader nodes do (``nodes.host.apply_adapter``: LycoPatch per module); native is ComfyUI's
``LoraLoader`` core (``comfy.sd.load_lora_for_models``) on the same file tensors, strength 0.8 for both. Timed:
``patch_model`` (full load: every patched weight copied to float32, patched, rounded back) and one low-VRAM sampling
step (``patch_model(lowvram_model_memory=1)``: every patched layer recomputes its patch in its forward), batch 2
(cond + uncond), interleaved with the same step without an adapter (``plain``: the casts and the layer math alone,
so ``lowvram_step_bound`` = plain ÷ native is the best step ratio any patch could reach). The low-VRAM *pass* is
that step without the layer math: every layer both patch (less those whose native patch fails) cast to the compute
dtype and its weight functions run, as ``comfy.ops`` does per forward; ``cast_pass_s`` is the casts alone. Layers
whose native adapter fails (it logs an error and leaves the layer unpatched) are counted. Memory (measured after all
timing):
peak and retained extra bytes of ``patch_model``; ``transient`` = peak − retained (the patched weights ComfyUI keeps
are the same size on both sides). Bypass: LoRA r32 on every layer, one step bypassed vs merged (full load), and
the cost of loading each.
"""

from __future__ import annotations

import logging

import torch

import harness
import synth
import unets


def _step(patcher, inputs):
    x, t, context = inputs
    with torch.no_grad():
        return patcher.model.apply_model(x, t, c_crossattn=context)


class _Loaded:
    """Patchers sharing one model: at most one is patched at a time."""

    def __init__(self, device, patchers: dict):
        self.device, self.patchers, self.current = device, patchers, None

    def patch(self, name: str, lowvram: int = 0):
        self.unpatch()
        self.patchers[name].patch_model(device_to=self.device, lowvram_model_memory=lowvram)
        self.current = self.patchers[name]

    def unpatch(self):
        if self.current is not None:
            self.current.unpatch_model(device_to=self.device)
            self.current = None

    def time_patching(self, repeats, warmup) -> harness.Timings:
        calls = {name: (lambda n=name: self.patch(n)) for name in self.patchers}
        timings = harness.rounds(calls, repeats, warmup, self.device, lambda name, index: self.unpatch())
        self.unpatch()
        return timings

    def time_steps(self, inputs, repeats, warmup, lowvram: int = 0) -> harness.Timings:
        calls = {name: (lambda n=name: _step(self.patchers[n], inputs)) for name in self.patchers}
        timings = harness.rounds(calls, repeats, warmup, self.device, lambda name, index: self.patch(name, lowvram))
        self.unpatch()
        return timings

    def time_lowvram_passes(self, layers: list[str], dtype, repeats, warmup) -> harness.Timings:
        """Per patcher, what a low-VRAM step does to ``layers`` besides the layer math itself: each weight cast
        to the compute dtype, then its weight functions (the patch recomputed) — as ``comfy.ops`` does it."""
        calls = {name: (lambda: _lowvram_pass(self.current.model, layers, dtype)) for name in self.patchers}
        timings = harness.rounds(calls, repeats, warmup, self.device, lambda name, index: self.patch(name, 1))
        self.unpatch()
        return timings

    def memory(self, store: dict, prefix: str = "") -> None:
        """``{prefix}{name}_peak_gb`` / ``…_kept_gb`` of one patch_model per patcher."""
        for name in self.patchers:
            self.unpatch()
            peak, kept = harness.measure(lambda n=name: self.patch(n), self.device)
            store[f"{prefix}{name}_peak_gb"], store[f"{prefix}{name}_kept_gb"] = peak / 1e9, kept / 1e9
        self.unpatch()


def _lowvram_pass(model, layers: list[str], dtype) -> None:
    with torch.no_grad():
        for layer in layers:
            module = model.get_submodule(layer)
            weight = module.weight.to(dtype=dtype, copy=True)
            for function in module.weight_function:
                weight = function(weight)


def _patched_layers(loaded: "_Loaded", dtype) -> list[str]:
    """Layers both adapters patch in a low-VRAM load (weight functions set by ``patch_model``), less those whose
    native patch fails (it logs an error and hands the weight back unpatched: no work to compare)."""
    found = []
    for name in ("ours", "native"):
        loaded.patch(name, 1)
        found.append({n for n, m in loaded.current.model.named_modules() if getattr(m, "weight_function", None)})
    working = []
    for layer in sorted(found[0] & found[1]):
        with harness.logged_errors() as errors:
            _lowvram_pass(loaded.current.model, [layer], dtype)
        if not errors:
            working.append(layer)
    loaded.unpatch()
    return working


def run(env, quick: bool) -> dict:
    import comfy.sd

    logging.getLogger().setLevel(logging.CRITICAL)  # native adapters log (and swallow) failures per layer
    device = env.device
    repeats, warmup = (1, 1) if quick else (3, 1)  # a warm-up round always: the first patch pays page faults
    patcher, shapes = unets.build_sd15(device)
    params = sum(p.numel() for p in patcher.model.diffusion_model.parameters())
    inputs = unets.step_inputs(device, 8 if quick else 32)
    results = {
        "model": f"SD1.5 UNet {params / 1e6:.0f} M params fp16 (float32 compute), {len(shapes)} Linear/Conv "
        f"weights, step latent {inputs[0].shape[-1]}² batch {inputs[0].shape[0]}",
        "methods": {},
    }
    compute_dtype = inputs[0].dtype
    for method in synth.METHODS:
        tensors = synth.adapter_file_tensors(method, shapes)
        native, _ = comfy.sd.load_lora_for_models(patcher, None, tensors, 0.8, 0.0)
        adapter = env.core.adapter_from_tensors(tensors, file=f"bench-{method}")
        ours, _, coverage = env.host.apply_adapter(adapter, patcher, None, 0.8, 0.0)
        loaded = _Loaded(device, {"ours": ours, "native": native})
        with harness.logged_errors() as errors:
            patching = loaded.time_patching(repeats, warmup)
        layers = _patched_layers(loaded, compute_dtype)
        stepping = _Loaded(device, {"ours": ours, "native": native, "plain": patcher})
        step = stepping.time_steps(inputs, repeats, 0 if quick else warmup, lowvram=1)
        passes = stepping.time_lowvram_passes(layers, compute_dtype, repeats, warmup)
        row = results["methods"][method] = {
            "weights": len(coverage.unet),
            "native_failed_weights": len(errors) // (repeats + warmup),
            "ours_s": patching.median("ours"),
            "native_s": patching.median("native"),
            "patch_ratio": patching.ratio("ours", "native"),
            "ours_step_s": step.median("ours"),
            "native_step_s": step.median("native"),
            "plain_step_s": step.median("plain"),
            "lowvram_step_ratio": step.ratio("ours", "native"),
            "lowvram_step_bound": step.ratio("plain", "native"),
            "lowvram_layers": len(layers),
            "ours_pass_s": passes.median("ours"),
            "native_pass_s": passes.median("native"),
            "cast_pass_s": passes.median("plain"),
            "lowvram_pass_ratio": passes.ratio("ours", "native"),
        }
        harness.later(lambda loaded=loaded, row=row: loaded.memory(row))
        print(
            f"  whole_model {method:13s} patch {row['patch_ratio']:.2f} step {row['lowvram_step_ratio']:.2f} "
            f"(no adapter {row['lowvram_step_bound']:.2f}) low-VRAM pass {row['lowvram_pass_ratio']:.2f}",
            flush=True,
        )
    results["bypass"] = _bypass(env, patcher, shapes, inputs, repeats, warmup)
    return results


def _bypass(env, patcher, shapes, inputs, repeats, warmup) -> dict:
    """LoRA r32 on every layer: a step with the adapter bypassed vs merged (full load), and loading each."""
    bypass = __import__(f"{env.host.__name__.rsplit('.', 1)[0]}.bypass", fromlist=["apply_bypass"])
    adapter = env.core.adapter_from_tensors(synth.adapter_file_tensors("lora", shapes), file="bench-bypass")
    loaded = _Loaded(
        env.device,
        {
            "bypass": bypass.apply_bypass(adapter, patcher, None, 0.8, 0.0)[0],
            "merged": env.host.apply_adapter(adapter, patcher, None, 0.8, 0.0)[0],
            "plain": patcher,
        },
    )
    loading = loaded.time_patching(repeats, warmup)
    forward = loaded.time_steps(inputs, repeats, warmup)
    outputs = {}
    for name in ("bypass", "merged"):
        loaded.patch(name)
        outputs[name] = _step(loaded.patchers[name], inputs)
    loaded.unpatch()
    diff = (outputs["bypass"] - outputs["merged"]).abs().max() / outputs["merged"].abs().max()
    row = {
        "forward_ratio": forward.ratio("bypass", "merged"),
        "vs_plain_forward_ratio": forward.ratio("bypass", "plain"),
        "bypass_step_s": forward.median("bypass"),
        "merged_step_s": forward.median("merged"),
        "load_ratio": loading.ratio("bypass", "merged"),
        "bypass_load_s": loading.median("bypass"),
        "merged_load_s": loading.median("merged"),
        "max_rel_diff": float(diff),
        "note": "weights stored fp16: merging rounds W' to fp16, bypass does not (fp32 exactness: tests)",
    }
    harness.later(lambda: loaded.memory(row, "load_"))
    return row


def finish(results: dict) -> None:
    """Memory ratios, once measured."""
    for row in results["methods"].values():
        transient = {n: row[f"{n}_peak_gb"] - row[f"{n}_kept_gb"] for n in ("ours", "native")}
        row["peak_mem_ratio"] = row["ours_peak_gb"] / row["native_peak_gb"]
        row["transient_mem_ratio"] = transient["ours"] / transient["native"] if transient["native"] > 0 else None
