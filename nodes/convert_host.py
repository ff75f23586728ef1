"""ComfyUI glue for the conversion nodes: progress and cancellation, base weights and extraction state dicts from
MODEL/CLIP (placed with ComfyUI's own key maps, host.py), baking as ``set`` patches, and saving into ``loras``.

Base weights are the model's own tensors (``model_state_dict()``), as the checkpoint loaded them: patches added by
earlier loaders are not part of them. Modules that patch a slice of a fused weight (Flux q/k/v) are left out of
weight-dependent conversions and reported.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths

from ..lyco_core import Adapter, AdapterError
from ..lyco_core.convert.deltas import BaseWeights
from .host import build_patches
from .train_host import file_names


class NodeProgress:
    """``progress(done, total)`` for lyco_core: a cancellation point and ComfyUI's progress bar, per module."""

    def __init__(self, node_id=None):
        self.node_id, self.bar = node_id, None

    def __call__(self, done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        self.bar.update_absolute(done, total)


def _placed(adapter: Adapter, model, clip) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """({module: (side, weight key)}, modules on fused slices) through ComfyUI's key maps."""
    unet, te, coverage = build_patches(adapter, model, clip)
    fused = sorted(
        {patch.module.name for patches in (unet, te) for key, patch in patches.items() if isinstance(key, tuple)}
    )
    placed = {name: ("unet", key) for name, key in coverage.unet.items()}
    placed.update({name: ("clip", key) for name, key in coverage.clip.items()})
    return {n: v for n, v in placed.items() if n not in fused}, fused


def _states(model, clip) -> dict[str, dict]:
    states = {}
    if model is not None:
        states["unet"] = model.model_state_dict()
    if clip is not None:
        states["clip"] = clip.cond_stage_model.state_dict()
    return states


def base_source(model, clip, notes: list[str]):
    """``adapter → BaseWeights`` over MODEL/CLIP (None when neither is connected); fused-slice modules are noted."""
    if model is None and clip is None:
        return None
    states = _states(model, clip)

    def weights(adapter: Adapter) -> BaseWeights:
        placed, fused = _placed(adapter, model, clip)
        if fused:
            notes.append(
                f"{len(fused)} modules patch a slice of a fused weight and got no base weight (e.g. {fused[0]})"
            )
        state = {f"{side}:{key}": states[side][key] for side, key in placed.values()}
        state.update(
            {
                f"{side}:{key[: -len('weight')]}bias": states[side][key[: -len("weight")] + "bias"]
                for side, key in placed.values()
                if key[: -len("weight")] + "bias" in states[side]
            }
        )
        return BaseWeights(state, {name: f"{side}:{key}" for name, (side, key) in placed.items()})

    return weights


def module_paths(adapter: Adapter, model, clip) -> dict[str, str]:
    """{module: dotted path inside its component}, placed by ComfyUI's key maps: UNet layers in diffusers spelling
    where the model has a diffusers map (SD1/SD2/SDXL), else ComfyUI's own path; text-encoder layers below their
    ``<clip>.transformer.`` root."""
    placed, _ = _placed(adapter, model, clip)
    diffusers = {}
    if model is not None:
        for path, ldm in comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items():
            if path.endswith(".weight"):
                diffusers[f"diffusion_model.{ldm}"] = path[: -len(".weight")]
    paths = {}
    for name, (side, key) in placed.items():
        own = key[: -len(".weight")]
        if side == "unet":
            paths[name] = diffusers.get(key, own.removeprefix("diffusion_model."))
        else:
            paths[name] = own.partition(".transformer.")[2] or own
    return paths


def extraction_states(model, clip) -> dict:
    """One state dict over MODEL (``diffusion_model.*``) and CLIP (its own keys) for extraction."""
    state = {}
    for side in _states(model, clip).values():
        state.update(side)
    return state


def extraction_names(model, clip):
    """``weight key → module name``: the kohya names ComfyUI's own key maps give those layers."""
    name_of = file_names(model, clip)
    return lambda key: name_of(key[: -len(".weight")])


def bake_patches(adapter: Adapter, model, clip, strength_model: float, strength_clip: float, progress):
    """(model, clip, modules baked): clones whose adapted weights are replaced by ``W' = f(W, m)``, computed now
    (``set`` patches: the result no longer depends on load order or low-VRAM recomputation)."""
    placed, fused = _placed(adapter, model, clip)
    if fused:
        raise AdapterError(
            f"{len(fused)} modules patch slices of fused weights (e.g. {fused[0]}); apply them with the loader instead",
            file=adapter.path,
        )
    states, outputs = _states(model, clip), {"unet": model, "clip": clip}
    strengths = {"unet": strength_model, "clip": strength_clip}
    baked = 0
    for side, state in states.items():
        keys = {name: key for name, (s, key) in placed.items() if s == side}
        if not keys or strengths[side] == 0:
            continue
        view = {
            k: state[k]
            for k in set(keys.values()) | {k[: -len("weight")] + "bias" for k in keys.values()}
            if k in state
        }
        part = copy.copy(adapter)
        part.modules = {name: adapter.modules[name] for name in keys}
        new = part.patch(view, strengths[side], key_map=keys, progress=progress)
        clone = outputs[side].clone()
        clone.add_patches({key: ("set", (tensor,)) for key, tensor in new.items()}, 1.0)
        outputs[side], baked = clone, baked + len(keys)
    return outputs["unet"], outputs["clip"], baked


def save_target(name: str, layout: str) -> Path:
    """The path in ComfyUI's first ``loras`` folder for a relative ``name`` (``.safetensors`` added, or a PEFT
    folder); names leaving the folder are refused."""
    root = Path(folder_paths.get_folder_paths("loras")[0])
    clean = name.strip().replace("\\", "/")
    if not clean or os.path.isabs(clean) or ".." in Path(clean).parts:
        raise AdapterError(f"'{name}' is not a name inside the loras folder", expected="e.g. lyco/my_adapter")
    if clean.endswith(".safetensors"):
        clean = clean[: -len(".safetensors")]
    return root / (clean if layout == "peft" else clean + ".safetensors")
