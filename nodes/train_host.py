"""ComfyUI glue for training: trainables on ModelPatcher weight wrappers, file names from ComfyUI's own key maps,
the denoising loss over LATENT + CONDITIONING, progress with the current loss, cancellation, checkpoints.

Weights: each adapted layer ``<path>`` gets ``ModelPatcher.add_weight_wrapper("<path>.weight", trainable)``; ComfyUI
then calls the trainable on the cast weight in every forward (``comfy.ops.cast_bias_weight``), so the adapter trains
through ComfyUI's own layers (full load, any dtype). IA3 (PEFT) also wraps the bias.
Loss (as ComfyUI's trainer): clean latent ``x0``, ``u ~ U(0,1)``, ``σ = percent_to_sigma(u)``, ``ε ~ N(0, I)``,
``x_σ = noise_scaling(σ, ε, x0)``; the model's denoised prediction ``D(x_σ, σ, c)`` (``BaseModel.apply_model``) with
the sample's conditioning (its first entry, turned into model inputs by the model's own ``extra_conds``); ``loss =
mean((D − x0)²)`` over the batch (samples whose shapes agree run as one batched forward). Noise and σ are drawn from
a generator seeded by (seed, micro-batch), so a resumed run continues the same stream.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

import comfy.lora
import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils

from ..lyco_core.naming import COMPONENTS, kohya_prefix
from ..lyco_core.train import build_adapter

log = logging.getLogger("ComfyUI-LyCO")
UNET = "diffusion_model."
UNET_NAME = kohya_prefix("unet")  # the kohya names ComfyUI's key maps give the denoiser's and text encoders' layers
TEXT_ENCODER_NAMES = tuple(c.kohya for c in COMPONENTS.values() if c.text_encoder)


def training_clone(model_or_clip):
    """A clone of a MODEL (ModelPatcher) or CLIP to train on. Under dynamic VRAM (ComfyUI 0.22+ on NVIDIA GPUs,
    ``ModelPatcherDynamic``) weights stream through staging buffers on every forward; training needs them resident
    for autograd through the weight wrappers, so, as ComfyUI's own trainer does, a dynamic patcher is cloned into
    a plain one over the same weights (``clone(disable_dynamic=True)``). Elsewhere (CPU, older hosts) it is the
    ordinary clone."""
    patcher = getattr(model_or_clip, "patcher", model_or_clip)
    if getattr(patcher, "is_dynamic", lambda: False)():
        return model_or_clip.clone(disable_dynamic=True)
    return model_or_clip.clone()


class BiasWrapper:
    """The bias function of a trainable that changes the bias (ComfyUI's bias wrapper contract)."""

    def __init__(self, trainable):
        self.trainable = trainable

    def __call__(self, bias):
        return self.trainable.bias_function(bias)

    def passive_memory_usage(self):
        return 0

    def move_to(self, device):
        return 0


def build_on(patcher, config, dtype: torch.dtype, unet_only: bool):
    """The config's trainables for a ModelPatcher's model (the UNet side keeps to ``diffusion_model.*``), on its
    load device."""
    where = (lambda name: name.startswith(UNET)) if unet_only else None
    adapter = build_adapter(patcher.model, config, dtype=dtype, where=where)
    for trainable in adapter.modules.values():
        trainable.to(patcher.load_device)
    return adapter


class Passthrough:
    """A weight function that changes nothing: with one present, ComfyUI hands the forward a fresh copy."""

    def __call__(self, tensor):
        return tensor

    def passive_memory_usage(self):
        return 0

    def move_to(self, device):
        return 0


def install(patcher, adapter) -> None:
    """Attach every trainable of ``adapter`` to ``patcher`` as a weight (and bias) wrapper. Weights and biases that
    are inference tensors (ComfyUI loads models under ``torch.inference_mode``, and autograd may not keep those
    for backward) get a pass-through wrapper, so every forward uses a copy autograd can keep."""
    wrapped = set()
    for path, trainable in adapter.modules.items():
        patcher.add_weight_wrapper(f"{path}.weight", trainable)
        wrapped.add(f"{path}.weight")
        if trainable.changes_bias():
            patcher.add_weight_wrapper(f"{path}.bias", BiasWrapper(trainable))
            wrapped.add(f"{path}.bias")
    for name, module in patcher.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        for part in ("weight", "bias"):
            tensor = getattr(module, part, None)
            key = f"{name}.{part}"
            if tensor is not None and tensor.is_inference() and key not in wrapped:
                patcher.add_weight_wrapper(key, Passthrough())


def file_names(model, clip):
    """``path → file name``: the kohya name ComfyUI's own key maps give the layer (``lora_unet_…`` in diffusers
    spelling where the model has one, as sd-scripts writes; ``lora_te…`` for CLIP); a layer the maps leave out
    (e.g. a token embedding) gets ``lora_unet_``/``lora_te_`` + its mangled path (below ``<encoder>.transformer.``),
    which our loader resolves against the model."""
    names: dict[str, str] = {}
    if model is not None:
        own = {}
        for name, key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
            if isinstance(key, str) and name.startswith(UNET_NAME) and key.endswith(".weight"):
                path = key[: -len(".weight")]
                literal = UNET_NAME + path[len(UNET) :].replace(".", "_")
                if name != literal or path not in own:
                    own[path] = name
        names.update(own)
    if clip is not None:
        for name, key in comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}).items():
            if isinstance(key, str) and name.startswith(TEXT_ENCODER_NAMES) and key.endswith(".weight"):
                names.setdefault(key[: -len(".weight")], name)

    def name_of(path: str) -> str:
        if path in names:
            return names[path]
        if path.startswith(UNET):
            return UNET_NAME + path[len(UNET) :].replace(".", "_")
        return kohya_prefix("te") + path.split(".transformer.", 1)[-1].replace(".", "_")

    return name_of


def checkpoint_units(diffusion_model: nn.Module) -> list[nn.Module]:
    """The blocks gradient checkpointing wraps: each child of the diffusion model, ModuleLists expanded."""
    units = []
    for child in diffusion_model.children():
        units.extend(child.children() if isinstance(child, nn.ModuleList) else [child])
    return [u for u in units if any(True for _ in u.parameters())]


def _clone_tree(value):
    """A copy of a conditioning structure whose tensors are ordinary (not inference-mode) tensors."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tree(v) for v in value)
    return value


def _batch_key(x0: torch.Tensor, inputs: dict, index: int) -> tuple:
    """Samples with the same key can be concatenated: equal latent and input shapes, tensors only."""
    if not all(isinstance(v, torch.Tensor) for v in inputs.values()):
        return ("alone", index)
    return (tuple(x0.shape), tuple(sorted((k, tuple(v.shape)) for k, v in inputs.items())))


class DenoiseLoss:
    """``loss_fn(indices, draw)`` of the training loop for a ModelPatcher (see the module docstring)."""

    def __init__(self, patcher, latents: list[torch.Tensor], conds: list, seed: int, encode=None):
        self.patcher, self.seed = patcher, seed
        self.device = patcher.load_device
        self.latents = [latent.clone() for latent in latents]
        self.conds = [_clone_tree(c) for c in conds]
        self.encode = encode  # index -> conditioning, for text-encoder training (None: fixed conds)

    def __call__(self, indices, draw):
        model = self.patcher.model
        sampling = model.model_sampling
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        groups: dict[tuple, list] = {}
        for index in indices:
            x0 = model.process_latent_in(self.latents[index].to(self.device))
            percent = float(torch.rand((), generator=generator))
            sigma = torch.tensor([float(sampling.percent_to_sigma(percent))], device=self.device)
            noise = torch.randn(x0.shape, generator=generator).to(self.device)
            noisy = sampling.noise_scaling(sigma, noise, x0, False)
            cond = self.encode(index) if self.encode is not None else self.conds[index]
            prepared = comfy.samplers.encode_model_conds(
                model.extra_conds,
                comfy.sampler_helpers.convert_cond(cond),
                noisy,
                self.device,
                "positive",
                latent_image=x0,
                seed=draw,
            )
            inputs = {
                name: value.process_cond(batch_size=1, area=None).cond
                for name, value in prepared[0]["model_conds"].items()
            }
            groups.setdefault(_batch_key(x0, inputs, index), []).append((x0, sigma, noisy, inputs))
        options = self.patcher.model_options.get("transformer_options", {})
        total = 0.0
        for group in groups.values():  # samples whose shapes agree run as one batch
            x0, sigma, noisy = (torch.cat([item[k] for item in group]) for k in range(3))
            inputs = {
                name: torch.cat([item[3][name] for item in group]) if len(group) > 1 else value
                for name, value in group[0][3].items()
            }
            denoised = model.apply_model(noisy, sigma, transformer_options=options, **inputs)
            total = total + torch.nn.functional.mse_loss(denoised.float(), x0.float(), reduction="sum") / x0[0].numel()
        return total / len(indices)


def text_encoder(clip, captions: list[str]):
    """index → conditioning, encoded with gradients through ``clip`` (tokens cached per caption)."""
    tokens = {}

    def encode(index):
        text = captions[index]
        if text not in tokens:
            tokens[text] = clip.tokenize(text)
        # ComfyUI's text encoders add residuals in place (``x += …``); saving copies keeps autograd's inputs intact
        with torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda saved: saved):
            out = clip.encode_from_tokens(tokens[text], return_pooled=True, return_dict=True)
        cond = out.pop("cond")
        return [[cond, out]]

    return encode


class Progress:
    """ComfyUI's progress bar plus the current loss as the node's progress text; a cancellation point."""

    def __init__(self, total: int, node_id=None):
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id

    def __call__(self, step: int, total: int, loss: float) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(step, total)
        text = f"step {step}/{total} · loss {loss:.5f}"
        log.debug("[LyCO train] %s", text)
        if self.node_id is not None:
            try:
                from server import PromptServer

                PromptServer.instance.send_progress_text(text, self.node_id)
            except (ImportError, AttributeError):
                pass
