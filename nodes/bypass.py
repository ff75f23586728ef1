"""Bypass loading: adapters run in the forward pass of their layers, the base weights are never touched.

For quantised or fp8 bases, merging means a float copy of every patched weight; bypass instead object-patches each
adapted layer's ``forward`` on a clone (``ModelPatcher.add_object_patch(f"{layer}.forward", …)``, restored by
ComfyUI on unpatch) with ``y = layer(x) + Σ m·(ΔW ⋆ x + Δb)`` (lyco_core/bypass.py). The layer's own forward still
runs — casts, low-VRAM offload, quantised kernels and merged patches of other loaders included. Chained bypass
loaders on one layer extend the same wrapper; a wrapper of another pack is kept and called first.

ComfyUI 0.33's own bypass (``comfy.weight_adapter.bypass``: its bypass LoRA loaders) installs ``ModelPatcher``
injections, which ComfyUI applies after object patches and removes before them: its hook wraps our wrapper
whichever loader came first in the chain, so a layer patched by both runs both branches. Our patches handed to
that bypass run through ``LycoPatch.h`` (nodes/host.py), the same branch as here.
"""

from __future__ import annotations

import comfy.utils

from ..lyco_core import Adapter, AdapterError
from ..lyco_core.bypass import check
from .host import key_name, build_patches, log, no_match_error


class BypassForward:
    """A layer's forward plus adapter branches ``(module, strength, call, output slice or None)``; immutable."""

    def __init__(self, layer, branches: tuple, inner=None):
        self.layer, self.branches, self.inner = layer, branches, inner

    def __call__(self, x, *args, **kwargs):
        if self.inner is not None:
            y = self.inner(x, *args, **kwargs)
        else:
            y = type(self.layer).forward(self.layer, x, *args, **kwargs)
        for module, strength, call, rows in self.branches:
            branch = module.bypass_delta(x.to(y.dtype), call, strength).to(y.dtype)
            if rows is None:
                y = y + branch
            else:
                y = y.clone()
                channel = y.narrow(1 if call.conv_dims else -1, rows[0], rows[1])
                channel += branch
        return y


def _branches(patcher, label: str, patches: dict, strength: float, coverage) -> dict:
    """{object-patch name: BypassForward} for one side; AdapterError for any module bypass cannot run."""
    root = patcher.model
    wrappers = {}
    for target, patch in patches.items():
        if patch.part != "weight":
            continue  # bias deltas (PEFT lora_B.bias) are part of each branch
        key = key_name(target)
        path = key[: -len(".weight")]
        layer = comfy.utils.get_attr(root, path)
        rows = None
        shape = tuple(layer.weight.shape)
        if isinstance(target, tuple):
            dim, start, length = target[1]
            if dim != 0:
                raise patch.module.fail(
                    f"bypass cannot apply to a slice along dimension {dim} of {key}",
                    expected="turn bypass off for this adapter",
                )
            rows, shape = (start, length), (length, *shape[1:])
        try:
            call = check(patch.module, layer, shape)
        except AdapterError as exc:
            raise exc.located(file=coverage.file) from None
        name = f"{path}.forward"
        current = wrappers.get(name) or patcher.object_patches.get(name)
        branch = (patch.module, strength, call, rows)
        if isinstance(current, BypassForward):
            wrappers[name] = BypassForward(layer, current.branches + (branch,), current.inner)
        else:
            wrappers[name] = BypassForward(layer, (branch,), current)
    log.debug("[LyCO] bypass %s: %d layers", label, len(wrappers))
    return wrappers


def apply_bypass(adapter: Adapter, model, clip, strength_model: float, strength_clip: float):
    """(new model, new clip, Coverage) with every module as a forward-time branch; inputs are never mutated.
    Raises AdapterError before touching anything if some module cannot run in bypass mode."""
    unet_patches, clip_patches, coverage = build_patches(adapter, model, clip)
    if not unet_patches and not clip_patches:
        raise no_match_error(adapter, coverage)
    plans = []
    if model is not None and unet_patches and strength_model != 0:
        plans.append((model, _branches(model, "unet", unet_patches, strength_model, coverage)))
    if clip is not None and clip_patches and strength_clip != 0:
        plans.append((clip, _branches(clip.patcher, "clip", clip_patches, strength_clip, coverage)))
    new_model, new_clip = model, clip
    for original, wrappers in plans:
        clone = original.clone()
        patcher = clone if original is model else clone.patcher
        for name, wrapper in wrappers.items():
            patcher.add_object_patch(name, wrapper)
        if original is model:
            new_model = clone
        else:
            new_clip = clone
    log.info("[LyCO] bypass · %s", coverage.line())
    return new_model, new_clip, coverage
