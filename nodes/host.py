"""The only room that speaks ComfyUI: adapter files from the ``loras`` folder, key maps, patch objects that run
lyco_core's math inside ModelPatcher, and the per-load coverage report.

Patching: ``model.clone().add_patches({key: LycoPatch}, strength)`` — the user strength is ComfyUI's
``strength_patch``; each LycoPatch applies its module's own strength law (linear for additive methods, rotation
interpolation for OFT/BOFT, DoRA's law) in place on the weight ComfyUI hands it (full load, low-VRAM per-forward
recomputation, and offset slices of fused weights alike). Methods whose result depends on W (OFT, BOFT, GLoRA,
IA3, DoRA) see the weight as earlier patches in the chain left it: stacked loaders apply in chain order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

import comfy.lora
import comfy.model_management
import comfy.weight_adapter
import folder_paths

from ..lyco_core import Adapter, AdapterError, load_adapter
from ..lyco_core.algorithms.inplace import compute_dtype
from ..lyco_core.bounded_cache import BoundedCache
from ..lyco_core.keymap import Side, WeightIndex, WeightSlice, place
from ..lyco_core.naming import COMPONENTS
from ..lyco_core.train.resume import STATE_SUFFIX

log = logging.getLogger("ComfyUI-LyCO")
_adapters = BoundedCache(8)


# --- files -----------------------------------------------------------------------------------------------------
def adapter_names() -> list[str]:
    """Names in ComfyUI's ``loras`` folders (PEFT folders appear as ``dir/adapter_model.safetensors``), less the
    training states Train LyCORIS Adapter writes beside its checkpoints (``*.train-state.pt``: optimizer state for
    resuming, no adapter; ComfyUI lists them because ``.pt`` is a model extension)."""
    return [name for name in folder_paths.get_filename_list("loras") if not name.endswith(STATE_SUFFIX)]


def adapter_path(name: str) -> str:
    """Full path of a listed name; only names ComfyUI lists are served."""
    if name not in adapter_names():
        raise AdapterError(f"'{name}' is not in ComfyUI's loras folders", expected="a name from the loras list")
    return folder_paths.get_full_path_or_raise("loras", name)


def load_cached(name: str) -> Adapter:
    """The Adapter of a listed file, cached by path, mtime and size. Adapters are shared by every node and clone:
    nothing changes their tensors; the only state they gain is the OFT/BOFT rotation cache, derived from the
    tensors' values alone."""
    path = adapter_path(name)
    stat = os.stat(path)
    return _adapters.get((path, stat.st_mtime_ns, stat.st_size), lambda: load_adapter(path))


# --- the patch object ------------------------------------------------------------------------------------------
_IDENTITY_CODE = (lambda a: a).__code__


def _is_identity(function) -> bool:
    """None, or a one-argument function returning its argument — such as the ``lambda a: a`` that
    ``comfy.lora.calculate_weight`` puts in place of a missing key function (compared by bytecode)."""
    code = getattr(function, "__code__", None)
    return function is None or (
        code is not None
        and code.co_code == _IDENTITY_CODE.co_code
        and code.co_argcount == 1
        and not code.co_flags & 0x0C
    )


@dataclass(frozen=True, eq=False)
class PatchPlan:
    """The part of a LycoPatch that is not a tensor: the module as read, which part of the layer it patches
    ("weight" or "bias") and the names of the tensors that follow it in ``LycoPatch.weights``."""

    module: object
    part: str
    keys: tuple
    # (weight key, strength, dtype) whose result was found finite: low-VRAM loads recompute the same result every
    # forward, and the check's device sync is paid once
    finite: set = field(default_factory=set, compare=False)


class LycoPatch(comfy.weight_adapter.WeightAdapterBase):
    """One adapter module as a ComfyUI weight patch; immutable, shared by clones.

    Built as ComfyUI builds its own adapters, ``LycoPatch(loaded_keys, weights)`` with ``weights = (PatchPlan,
    *tensors)``: every tensor the math reads is in ``weights``. ComfyUI's dynamic-VRAM path (0.22+) rebuilds each
    patch as ``type(v)(v.loaded_keys, prefetched(v.weights))`` with the tensors copied into its staging buffer on
    the compute device and the plan passed through unchanged; the rebuilt patch runs the same module over those
    copies (``AdapterModule.with_params``). Use ``LycoPatch.of(module, part)`` to make one.
    """

    def __init__(self, loaded_keys, weights):
        plan, *tensors = weights
        self.loaded_keys, self.weights, self.part = loaded_keys, tuple(weights), plan.part
        module = plan.module
        if any(tensor is not module.params[key] for key, tensor in zip(plan.keys, tensors, strict=True)):
            module = module.with_params(dict(zip(plan.keys, tensors)))
        self.module = module
        self.name = f"lyco_{module.algo}"

    @classmethod
    def of(cls, module, part: str = "weight") -> LycoPatch:
        return cls(set(), (PatchPlan(module, part, tuple(module.params)), *module.params.values()))

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        """``weight ← W'`` in place (a narrowed slice stays a view, so fused weights work).

        The math is float32 whatever ``intermediate_dtype`` says (ComfyUI 0.33 hands fp16 intermediates on GPUs),
        with one rounding into the weight's dtype at the end. Without a key function this is the module's fused
        in-place path (``apply_``: an fp16/bf16 weight goes through float32 row chunks, or a float32-accumulating
        half GEMM where that gives the same result). A bias, or a key function, goes through
        ``W + function(W' − W)`` formed in float32 (ΔW materialised) and copied in once.

        Each call is a cancellation point (ComfyUI's interrupt flag). The first result for a key, strength and dtype
        is checked for NaN/Inf (AdapterError: the adapter's values overflow the weight's dtype); later identical
        recomputations are not.
        """
        if strength == 0:
            return weight
        comfy.model_management.throw_exception_if_processing_interrupted()
        checked = (key, float(strength), weight.dtype)
        if checked not in self.weights[0].finite:
            self._calculate(weight, strength, function)
            self.module.check_result(weight)
            self.weights[0].finite.add(checked)
            return weight
        return self._calculate(weight, strength, function)

    def _calculate(self, weight, strength, function):
        module = self.module
        if self.part == "weight" and _is_identity(function):
            # no_grad: outside inference mode ComfyUI hands a copy of a weight that may require grad (fresh
            # checkpoint UNet), and the fused out= kernels (OFT/BOFT) refuse autograd tensors
            with torch.no_grad():
                module.apply_(weight, float(strength))
            return weight
        if self.part == "bias":
            updated = module.bias_update(weight, float(strength))
        elif module.additive and not module.dora:
            updated = None
        else:
            updated = module.apply(weight, float(strength))
        if updated is not None and _is_identity(function):
            weight.copy_(updated)
            return weight
        base = weight.to(compute_dtype(weight))
        if updated is None:
            delta = module.delta(weight.shape, weight.device, base.dtype) * float(strength)
        else:
            delta = updated - base
        weight.copy_(base + (delta if function is None else function(delta)))
        return weight

    def h(self, x, base_out):
        """ComfyUI's own bypass (0.33+, ``comfy.weight_adapter.bypass``: its bypass LoRA loader,
        ``BypassInjectionManager``) runs ``g(f(x) + h(x, f(x)))``. Here ``h`` is the exact branch our loaders'
        bypass option runs, ``m·(ΔW ⋆ x + Δb)`` (lyco_core/bypass.py), with the layer geometry and strength ``m``
        (``multiplier``) that the host's hook set on this patch; ``g`` stays the identity. Methods whose result
        depends on W (OFT, BOFT, DoRA, GLoRA, IA3) raise AdapterError instead of silently adding nothing. A bias
        patch adds nothing: the weight patch's branch carries Δb."""
        from ..lyco_core.bypass import hook_call

        if self.part != "weight":
            return torch.zeros_like(base_out)
        call = hook_call(
            self.module,
            x,
            base_out,
            conv_dims=getattr(self, "conv_dim", 0),
            kw=getattr(self, "kw_dict", None),
            kernel=tuple(getattr(self, "kernel_size", None) or ()),
            in_channels=getattr(self, "in_channels", None),
            out_channels=getattr(self, "out_channels", None),
        )
        strength = float(getattr(self, "multiplier", 1.0))
        return self.module.bypass_delta(x.to(base_out.dtype), call, strength).to(base_out.dtype)


# --- key mapping and coverage ----------------------------------------------------------------------------------
@dataclass
class Coverage:
    """Per-load report: which modules patch the UNet, which the text encoder, which nothing (and why)."""

    file: str
    methods: dict
    unet: dict = field(default_factory=dict)  # module -> patch key
    clip: dict = field(default_factory=dict)
    unmatched: dict = field(default_factory=dict)  # module -> reason
    skipped: list = field(default_factory=list)  # text-encoder modules when no CLIP is given (model-only loads)
    unknown_keys: int = 0

    def line(self) -> str:
        methods = ", ".join(f"{k} ×{v}" for k, v in sorted(self.methods.items()))
        text = (
            f"{os.path.basename(self.file)}: {methods} · UNet {len(self.unet)} · CLIP {len(self.clip)} patched · "
            f"{len(self.unmatched)} unmatched · {self.unknown_keys} unknown keys"
        )
        if self.skipped:
            text += f" · {len(self.skipped)} text-encoder modules skipped (no CLIP input)"
        return text

    def details(self, limit: int = 12) -> str:
        lines = [self.line()]
        for name, reason in list(self.unmatched.items())[:limit]:
            lines.append(f"  unmatched {name}: {reason}")
        if len(self.unmatched) > limit:
            lines.append(f"  … and {len(self.unmatched) - limit} more unmatched")
        return "\n".join(lines)


def key_name(target) -> str:
    return target[0] if isinstance(target, tuple) else target


def _shapes(state: dict) -> dict:
    return {key: tensor.shape for key, tensor in state.items()}


def _sides(model, clip) -> tuple[list[Side], dict[str, dict]]:
    """The UNet and the text encoder as the one matcher sees them (weight keys and ComfyUI's key map each), and
    their state dicts by side label."""
    sides, states = [], {}
    if model is not None:
        states["unet"] = model.model_state_dict()
        keys = comfy.lora.model_lora_keys_unet(model.model, {})
        sides.append(Side("unet", WeightIndex(states["unet"]), keys, _shapes(states["unet"])))
    if clip is not None:
        states["clip"] = clip.cond_stage_model.state_dict()
        keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
        sides.append(Side("clip", WeightIndex(states["clip"]), keys, _shapes(states["clip"])))
    return sides, states


def _comfy_target(found: WeightSlice, weight: torch.Tensor):
    """ComfyUI's patch key for a slice: the key, or ``(key, (0, first row, rows))`` for part of one; None for a
    transposed view, which ComfyUI's patches cannot address."""
    if found.transposed:
        return None
    if found.whole:
        return found.key
    return found.key, (0, *found.rows(weight.shape))


def _text_encoder_module(target) -> bool:
    """Whether a module points into a text encoder: its spelling names one (naming.py), or its path is a
    transformers text model's."""
    return (bool(target.component) and COMPONENTS[target.component].text_encoder) or "text_model" in target.path


def build_patches(adapter: Adapter, model, clip) -> tuple[dict, dict, Coverage]:
    """({unet key: LycoPatch}, {clip key: LycoPatch}, Coverage) by ``keymap.place``, the matcher the core uses
    (ComfyUI's key map first, then our rules on the weights' own paths); shapes validated here, never first at
    sampling."""
    sides, states = _sides(model, clip)
    coverage = Coverage(adapter.path, adapter.method_counts(), unknown_keys=len(adapter.unknown_keys))
    patches = {"unet": {}, "clip": {}}
    for name, module in adapter.modules.items():
        target = adapter.module_path(name)
        side, found, reason = place(name, target, sides)
        if side is None:
            if "clip" not in states and _text_encoder_module(target):
                coverage.skipped.append(name)
            else:
                coverage.unmatched[name] = reason
            continue
        state = states[side.label]
        target = _comfy_target(found, state[found.key])
        if target is None:
            coverage.unmatched[name] = f"its weight is {found}; ComfyUI patches stored weights and rows of them only"
            continue
        bias_key = found.bias_key
        has_bias = bias_key is not None and bias_key in state
        try:
            module.fits(found.shape(state[found.key].shape), has_bias)
        except AdapterError as exc:
            raise exc.located(file=adapter.path, module=name) from None
        patches[side.label][target] = LycoPatch.of(module)
        if has_bias and module.changes_bias():
            bias_target = bias_key if found.whole else (bias_key, (0, *found.rows(state[found.key].shape)))
            patches[side.label][bias_target] = LycoPatch.of(module, "bias")
        getattr(coverage, side.label)[name] = key_name(target)
    return patches["unet"], patches["clip"], coverage


def no_match_error(adapter: Adapter, coverage: Coverage) -> AdapterError:
    if coverage.skipped and not coverage.unmatched:
        return AdapterError(
            f"all {len(coverage.skipped)} modules are text-encoder modules and no CLIP is connected",
            file=adapter.path,
            expected="a loader with a CLIP input for this file",
        )
    base = adapter.summary()["metadata"]["base_model"]
    example = next(iter(coverage.unmatched.items()), ("", ""))
    hint = f" The file says its base model is '{base}'" if base else ""
    return AdapterError(
        f"no module matches this model ({len(adapter.modules)} modules; e.g. {example[0]}: "
        f"{example[1]}). Likely an adapter for another base model, or a layout this model's "
        f"key map cannot place.{hint}",
        file=adapter.path,
        expected="an adapter trained for the connected model",
    )


def apply_adapter(adapter: Adapter, model, clip, strength_model: float, strength_clip: float):
    """(new model, new clip, Coverage). Inputs are never mutated: patches go on clones."""
    unet_patches, clip_patches, coverage = build_patches(adapter, model, clip)
    if not unet_patches and not clip_patches:
        raise no_match_error(adapter, coverage)
    new_model, new_clip = model, clip
    if model is not None and unet_patches:
        new_model = model.clone()
        accepted = set(new_model.add_patches(unet_patches, strength_model))
        drop_refused(coverage, "unet", unet_patches, accepted)
    if clip is not None and clip_patches:
        new_clip = clip.clone()
        accepted = set(new_clip.add_patches(clip_patches, strength_clip))
        drop_refused(coverage, "clip", clip_patches, accepted)
    log.info("[LyCO] %s", coverage.line())
    return new_model, new_clip, coverage


def drop_refused(coverage: Coverage, side: str, patches: dict, accepted: set) -> None:
    refused = {key_name(k) for k in patches if k not in accepted}
    for name, key in list(getattr(coverage, side).items()):
        if key in refused:
            del getattr(coverage, side)[name]
            coverage.unmatched[name] = f"the model refused the patch key {key}"
