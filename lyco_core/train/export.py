"""Trained adapters as lyco_core Adapters and files: LyCORIS/kohya layout (per-module alpha, ``ss_*`` training
metadata) or PEFT layout, written by ``lyco_core.save_adapter`` (which converts between layouts exactly or refuses).

The trained modules first become an Adapter in their own form: LyCORIS names (``name_of(path)``; default
``lycoris_<path with '_'>``, which ``lycoris.create_lycoris_from_weights`` maps back onto the same model) with each
module's tensors as LyCORIS stores them and an ``alpha`` whose ``alpha/r`` is the trained scaling — or, for the
PEFT variants of OFT/BOFT/IA3, PEFT names (``base_model.model.<path>.<param>``) with the config's PEFT fields.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from ..adapter import Adapter, adapter_from_tensors
from ..algorithms.base import AdapterModule, ScaleContext
from ..algorithms.saved import SavedCopy
from ..naming import PEFT_PREFIX, kohya_prefix
from ..save import save_adapter
from .methods import DenseTrainable
from .wrap import AttachedAdapter

PEFT_VERSION = "0.18.0"  # the oldest PEFT whose OFT Cayley–Neumann series equals ours


def lycoris_name(path: str) -> str:
    """``lycoris_<path with '.' written as '_'>``: LyCORIS' generic module name (kohya mangling, naming.py)."""
    return kohya_prefix("model") + path.replace(".", "_")


def lycoris_tensors(adapter: AttachedAdapter, name_of: Callable[[str], str] = lycoris_name) -> dict[str, torch.Tensor]:
    """``{file key: tensor}`` of ``adapter`` in LyCORIS layout (detached, on the CPU)."""
    return {
        f"{name_of(path)}.{param}": tensor.detach().to("cpu").contiguous()
        for path, trainable in adapter.modules.items()
        for param, tensor in trainable.lycoris_tensors().items()
    }


def as_adapter(
    adapter: AttachedAdapter,
    name_of: Callable[[str], str] = lycoris_name,
    metadata: dict[str, str] | None = None,
    layout: str = "lycoris",
) -> Adapter:
    """The trained adapter as a lyco_core Adapter (LyCORIS form, or PEFT form for PEFT-variant modules). For
    ``layout="peft"`` modules PEFT spells otherwise take that form (``peft_modules``)."""
    if any(t.saves_as_peft for t in adapter.modules.values()):
        names = {path: f"{PEFT_PREFIX}{path}" for path in adapter.modules}
        tensors = {
            f"{names[path]}.{param}": tensor.detach().to("cpu").contiguous()
            for path, trainable in adapter.modules.items()
            for param, tensor in trainable.tensors().items()
        }
        config = {**adapter.config.peft_dict(), "peft_version": PEFT_VERSION}
        result = adapter_from_tensors(tensors, metadata, config, file="<trained>")
    else:
        names = {path: name_of(path) for path in adapter.modules}
        result = adapter_from_tensors(lycoris_tensors(adapter, name_of), metadata, file="<trained>")
    if layout == "peft":
        result.modules.update(peft_modules(adapter, names, result))
    return result


@torch.no_grad()
def peft_modules(adapter: AttachedAdapter, names: dict[str, str], result: Adapter) -> dict[str, AdapterModule]:
    """The modules PEFT holds in another form than ours: a ``modules_to_save`` layer as the whole trained copy
    (``W' = W + diff``, ``b'`` alike, in the layer's dtype, from the base weights the tuner keeps), a LoRA on an
    ``nn.Embedding`` as PEFT's embedding LoRA (``A = upᵀ``, ``B = downᵀ``)."""
    replaced = {}
    for path, trainable in adapter.modules.items():
        name, layer = names[path], adapter.layers[path]
        ctx = ScaleContext(file="<trained>", peft=True, module_path=path)
        if isinstance(trainable, DenseTrainable) and trainable.saved:
            replaced[name] = SavedCopy(name, _trained_copy(trainable, layer), ctx)
        elif (peft := trainable.peft_module(result.modules[name])) is not None:
            replaced[name] = peft
    return replaced


def _trained_copy(trainable: DenseTrainable, layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{"weight": W'[, "bias": b']}`` of a fully trained layer (its weights as they are while merged)."""
    parts = {"weight": layer.weight, "bias": getattr(layer, "bias", None)}
    if not trainable.merged:
        module = trainable.inference()
        parts["weight"] = module.apply(layer.weight, 1.0)
        if parts["bias"] is not None and module.changes_bias():
            parts["bias"] = module.bias_update(parts["bias"], 1.0)
    return {
        key: tensor.detach().to("cpu", layer.weight.dtype).contiguous()
        for key, tensor in parts.items()
        if tensor is not None
    }


@dataclass
class TrainingRecord:
    """What a training run did, for ``ss_*`` metadata and resuming."""

    steps: int = 0
    learning_rate: float = 0.0
    text_encoder_lr: float | None = None
    optimizer: str = ""
    scheduler: str = ""
    warmup_steps: int = 0
    seed: int = 0
    dataset_size: int = 0
    batch_size: int = 1
    grad_accumulation: int = 1
    dtype: str = ""
    base_model: str = ""
    gradient_checkpointing: bool = False
    loss_history: list[float] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    @classmethod
    def of(cls, settings, **facts) -> TrainingRecord:
        """The record of a run with ``settings`` (a ``TrainSettings``): the fields both name are taken from it, so
        they are stated once; ``facts`` are what only the run knows (dataset size, base model, steps done, …)."""
        names = {f.name for f in fields(cls)}
        shared = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name in names}
        return cls(**{**shared, "steps": 0, **facts})


def training_metadata(config, record: TrainingRecord) -> dict[str, str]:
    """kohya-style ``ss_*`` keys (steps, lr, optimizer, seed, dataset size, network args, base model) plus
    ``lyco_train_config`` (the config as JSON) and ``lyco_loss_history`` (one loss per optimizer step);
    ``save_adapter`` adds ``ss_network_module``/``_dim``/``_alpha`` from the modules and merges its ``algo`` flags
    into these network args."""
    args = {"algo": config.method, **{k: v for k, v in config.to_dict().items() if k != "method"}}
    meta = {
        "ss_network_args": json.dumps(args),
        "ss_steps": str(record.steps),
        "ss_max_train_steps": str(record.steps),
        "ss_learning_rate": f"{record.learning_rate:g}",
        "ss_unet_lr": f"{record.learning_rate:g}",
        "ss_text_encoder_lr": "" if record.text_encoder_lr is None else f"{record.text_encoder_lr:g}",
        "ss_optimizer": record.optimizer,
        "ss_lr_scheduler": record.scheduler,
        "ss_lr_warmup_steps": str(record.warmup_steps),
        "ss_seed": str(record.seed),
        "ss_num_train_images": str(record.dataset_size),
        "ss_batch_size_per_device": str(record.batch_size),
        "ss_gradient_accumulation_steps": str(record.grad_accumulation),
        "ss_mixed_precision": record.dtype,
        "ss_gradient_checkpointing": str(record.gradient_checkpointing),
        "ss_sd_model_name": record.base_model,
        "ss_base_model_version": record.base_model,
        "ss_training_started_at": f"{record.started_at:.0f}",
        "ss_training_finished_at": f"{time.time():.0f}",
        "ss_training_comment": f"trained with ComfyUI-LyCO ({config.method})",
        "lyco_train_config": json.dumps(config.to_dict()),
        "lyco_loss_history": json.dumps([round(float(x), 6) for x in record.loss_history]),
    }
    return {k: v for k, v in meta.items() if v != ""}


def save_trained(
    adapter: AttachedAdapter,
    path,
    *,
    layout: str = "lycoris",
    record: TrainingRecord | None = None,
    dtype: str | torch.dtype | None = None,
    name_of: Callable[[str], str] = lycoris_name,
    overwrite: bool = False,
):
    """Write ``adapter`` with ``lyco_core.save_adapter`` (atomic; ``.safetensors`` for LyCORIS, a folder for PEFT)
    with the training metadata; returns the path. Raises AdapterError naming what the layout cannot hold."""
    metadata = training_metadata(adapter.config, record) if record is not None else {}
    keys = [
        f"{p}.{part}"
        for p, layer in adapter.layers.items()
        for part in ("weight", "bias")
        if getattr(layer, part, None) is not None
    ]
    written = {k: v for k, v in metadata.items() if k != "ss_network_args"}  # merged from the adapter's own
    return save_adapter(
        as_adapter(adapter, name_of, metadata, layout),
        path,
        layout,
        metadata=written,
        overwrite=overwrite,
        dtype=dtype,
        model_keys=keys,
    )
