"""Our patches under ComfyUI's dynamic-VRAM prefetch (0.22+, on by default on NVIDIA GPUs with torch ≥ 2.8).

There, for every patched layer, ``LowVramPatch.memory_required()`` sizes a staging buffer and ``prepare()`` rebuilds
each weight-adapter patch through ``comfy.lora.prefetch_prepared_value`` as ``type(v)(v.loaded_keys,
prefetched(v.weights))``, its tensors turned into views of that buffer (filled by a later ``prepare(copy=True)``);
the forward then runs the rebuilt patches. This runs the same sequence on the CPU, with ComfyUI's own classes:

* every reference-library fixture (each method and layout; ``adapter_fixtures``) loaded by ``LyCOLoadAdapter`` at
  strengths ≠ 1, alone and stacked under a second, W-dependent adapter, on the UNet and on CLIP;
* the weight a forward would get: ``LowVramPatch(key, patcher.patches)`` on the weight in float32 and in fp16
  (what ``lora_compute_dtype`` hands on GPUs) — before any prefetch, and after ``prepare(copy=False, commit=True)``
  then ``prepare(copy=True, commit=False)`` into one uint8 buffer, exactly as ``comfy.ops`` does;
* sliced targets (a module on a third of a fused q/k/v weight, offset ``(0, start, rows)``).

Checked: the rebuilt patches are ours, read their tensors from the staging buffer, and the weights are bit-identical
to those before the prefetch; the slice result equals the module applied to that slice alone, with the other rows
untouched. On a host without prefetch (0.3.75) the test is skipped and says so.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import adapter_fixtures as af

STRENGTHS = (0.6, -0.5)
STACKED_UNDER = "lyco_oft_rescaled"  # a W-dependent second adapter: its result depends on the first one's


def _lowvram_patch_class():
    cls = importlib.import_module("comfy.model_patcher").LowVramPatch
    if not hasattr(cls, "prepare"):
        version = importlib.import_module("comfyui_version").__version__
        pytest.skip(
            f"ComfyUI {version} has no dynamic-VRAM prefetch (LowVramPatch.prepare): patches are never "
            "rebuilt there; the loader parity tests cover its low-VRAM path"
        )
    return cls


def _prefetched(lowvram_patch) -> torch.Tensor:
    """Stage the patch list as ``comfy.ops`` does (views first, then the copy); returns the buffer."""
    buffer = torch.empty(lowvram_patch.memory_required(), dtype=torch.uint8)
    lowvram_patch.prepare(buffer, None, copy=False, commit=True)
    lowvram_patch.prepare(buffer, None, copy=True, commit=False)
    return buffer


def _inside(tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
    start = buffer.data_ptr()
    return start <= tensor.data_ptr() < start + buffer.numel()


def _check_rebuilt(lowvram_patch, buffer, where: str) -> int:
    """Every prepared patch is ours (rebuilt, not the original object), its tensors in the buffer; returns count."""
    ours = 0
    for original, prepared in zip(lowvram_patch.patches[lowvram_patch.key], lowvram_patch.prepared_patches):
        if type(original[1]).__name__ != "LycoPatch":
            continue
        value = prepared[1]
        assert type(value) is type(original[1]) and value is not original[1], where
        assert value.module.params.keys() == original[1].module.params.keys(), where
        assert all(_inside(t, buffer) for t in value.module.params.values()), f"{where}: a tensor outside the buffer"
        assert prepared[0] == original[0] and prepared[3] == original[3], where
        ours += 1
    return ours


def _same_through_prefetch(cls, key, patches, weight: torch.Tensor, where: str) -> int:
    before = cls(key, patches)(weight.clone())
    lowvram_patch = cls(key, patches)
    buffer = _prefetched(lowvram_patch)
    rebuilt = _check_rebuilt(lowvram_patch, buffer, where)
    after = lowvram_patch(weight.clone())
    assert after.dtype == before.dtype, where
    assert torch.equal(after, before), (
        f"{where}: prefetched patches give other weights, max |diff| "
        f"{(after.float() - before.float()).abs().max().item():.3e}"
    )
    return rebuilt


def _patchers(model, clip):
    return {"unet": model, "clip": clip.patcher}


@pytest.mark.parametrize("stacked", [False, True], ids=["alone", "stacked"])
def test_prefetched_patches_give_the_same_weights(comfy, parity_files, stacked):
    cls = _lowvram_patch_class()
    node = comfy.lyco_nodes["LyCOLoadAdapter"]
    files = parity_files.fixtures
    checked, rebuilt = 0, 0
    for name, fixture in files.items():
        for s in STRENGTHS:
            model, clip = parity_files.model, parity_files.clip
            if stacked:
                model, clip, _ = node.execute(model, clip, fixture.lora_name, s, s).result
                model, clip, _ = node.execute(model, clip, files[STACKED_UNDER].lora_name, 0.8, 0.8).result
            else:
                model, clip, _ = node.execute(model, clip, fixture.lora_name, s, s).result
            for side, patcher in _patchers(model, clip).items():
                for key, patch_list in patcher.patches.items():
                    if not any(type(p[1]).__name__ == "LycoPatch" for p in patch_list):
                        continue
                    base = parity_files.originals.get(key)
                    if base is None:
                        base = importlib.import_module("comfy.utils").get_attr(patcher.model, key).detach()
                    for dtype in (torch.float32, torch.float16):
                        where = f"{name} s={s} {side} {key} {dtype}"
                        rebuilt += _same_through_prefetch(cls, key, patcher.patches, base.to(dtype), where)
                        checked += 1
    assert checked >= 2 * len(files) * len(STRENGTHS), checked
    assert rebuilt >= checked


@pytest.mark.parametrize("name", [n for n in af.LYCORIS_SPECS if n != "lyco_norm"] + list(af.PEFT_NAMES))
def test_prefetched_patches_on_fused_slices(comfy, parity_files, name):
    """A module on the middle third of a fused (3·out, in) weight: same result through the prefetch, equal to the
    module on that slice alone, other rows untouched."""
    cls = _lowvram_patch_class()
    node = comfy.lyco_nodes["LyCOLoadAdapter"]
    model, clip, _ = node.execute(
        parity_files.model, parity_files.clip, parity_files.fixtures[name].lora_name, 0.7, 0.7
    ).result
    gen = torch.Generator().manual_seed(af.seed_of(name))
    tried = 0
    for patcher in _patchers(model, clip).values():
        for key, patch_list in patcher.patches.items():
            ours = [p for p in patch_list if type(p[1]).__name__ == "LycoPatch" and p[1].part == "weight"]
            if not ours or key not in parity_files.base:
                continue
            weight = parity_files.base[key]
            rows = weight.shape[0]
            fused = torch.cat(
                [torch.randn(weight.shape, generator=gen), weight, torch.randn(weight.shape, generator=gen)]
            )
            fused_key = key + ".fused"
            sliced = {fused_key: [(p[0], p[1], p[2], (0, rows, rows), p[4]) for p in ours], key: ours}
            where = f"{name} {key} slice"
            _same_through_prefetch(cls, fused_key, sliced, fused, where)
            alone = cls(key, sliced)(weight.clone())
            got = cls(fused_key, sliced)(fused.clone())
            assert torch.equal(got[rows : 2 * rows], alone), where
            assert torch.equal(got[:rows], fused[:rows]) and torch.equal(got[2 * rows :], fused[2 * rows :]), where
            tried += 1
    assert tried, f"{name}: no patched weight to slice"
