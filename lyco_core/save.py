"""``save_adapter``: an Adapter (or raw adapter tensors) written atomically in a layout, with kohya/modelspec metadata.

Layouts: ``lycoris`` (one .safetensors, kohya names, per-module ``alpha``), ``peft`` (a folder:
``adapter_model.safetensors`` + ``adapter_config.json`` for ``PeftModel.from_pretrained``), ``diffusers`` (one
.safetensors, ``unet.``/``text_encoder.`` keys + ``lora_adapter_metadata``). Conversion rules: convert/.

Metadata written (kohya sd-scripts and ModelSpec conventions, which A1111, Forge and model sites read): the input's
own keys (``ss_*``, ``ssmd_*``, ``modelspec.*``, trigger phrases) are
kept; ``ss_network_module`` (``networks.lora`` for plain LoRA/LoCon, else ``lycoris.kohya``), ``ss_network_args``
(``algo`` and flags, merged into the input's args when the tensors are unchanged), ``ss_network_dim`` /
``ss_network_alpha`` (a number, or ``Dynamic`` when modules differ), ``ss_output_name``, ``modelspec.sai_model_spec``
/ ``.title`` / ``.date`` (kept when present; an architecture gains ``/lora``), then ``sshs_model_hash`` and
``sshs_legacy_hash`` computed as kohya does (hashes.py). Caller metadata overrides all but the hashes.
Alpha tensors stay float32 whatever ``dtype`` the factors are saved in.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch

from .adapter import Adapter, adapter_from_tensors
from .convert.deltas import inferred_shape
from .convert.layout_convert import LAYOUTS, convert_layout
from .convert.provenance import file_metadata
from .errors import AdapterError
from .hashes import kohya_hashes
from .io import SAFETENSORS_SUFFIXES, atomic_write_bytes, save_safetensors

PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _uniform(values: list[float]) -> str:
    distinct = sorted(set(values))
    if not distinct:
        return "None"
    return f"{distinct[0]:g}" if len(distinct) == 1 else "Dynamic"


def network_metadata(adapter: Adapter) -> dict[str, str]:
    """``ss_network_module``, ``ss_network_args``, ``ss_network_dim``, ``ss_network_alpha`` for the modules."""
    modules = list(adapter.modules.values())
    algos = Counter(m.algo for m in modules)
    lycoris_names = {m.algo: m.lycoris_algo or m.algo for m in modules}
    args = {"algo": lycoris_names[algos.most_common(1)[0][0]]}
    if len(algos) > 1:
        args["algos"] = ", ".join(f"{lycoris_names[a]}×{n}" for a, n in sorted(algos.items()))
    if any(m.tucker for m in modules):
        args["use_tucker"] = "True"
    if any(m.dora for m in modules):
        args["dora_wd"] = "True"
        args["wd_on_output"] = str(all(m.dora_axis() == "out" for m in modules if m.dora))
    ranked = [m for m in modules if m.rank() is not None and m.scaled]
    conv = [m for m in ranked if m.additive and len(inferred_shape(m)) > 2]
    if conv:
        args["conv_dim"] = _uniform([m.rank() for m in conv])
        args["conv_alpha"] = _uniform([m.scale_value() * m.rank() for m in conv])
    linear = [m for m in ranked if m not in conv] or ranked
    old_args = adapter.metadata.get("ss_network_args")
    try:
        merged = {**(json.loads(old_args) if old_args else {}), **args}
    except (json.JSONDecodeError, TypeError):
        merged = args
    return {
        "ss_network_module": "networks.lora" if all(m.kohya_lora() for m in modules) else "lycoris.kohya",
        "ss_network_args": json.dumps(merged),
        "ss_network_dim": _uniform([m.rank() for m in linear]),
        "ss_network_alpha": _uniform([m.scale_value() * m.rank() for m in linear]),
    }


def _modelspec(metadata: dict[str, str], title: str) -> dict[str, str]:
    spec = {
        "modelspec.sai_model_spec": metadata.get("modelspec.sai_model_spec", "1.0.1"),
        "modelspec.title": metadata.get("modelspec.title", title),
        "modelspec.date": metadata.get("modelspec.date", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")),
    }
    architecture = metadata.get("modelspec.architecture")
    if architecture and "/" not in architecture:
        spec["modelspec.architecture"] = architecture + "/lora"
    return spec


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return tensors
    return {k: v if not v.is_floating_point() or k.endswith(".alpha") else v.to(dtype) for k, v in tensors.items()}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise AdapterError(f"unknown dtype '{dtype}'", expected=", ".join(DTYPES))
    return DTYPES[dtype]


def _check_target(path: Path, layout: str, overwrite: bool) -> None:
    if layout == "peft":
        if path.suffix.lower() in SAFETENSORS_SUFFIXES or path.is_file():
            raise AdapterError("a PEFT adapter is a folder", file=str(path), expected="a folder name")
        taken = [f for f in (path / PEFT_WEIGHTS, path / PEFT_CONFIG) if f.exists()]
        if taken and not overwrite:
            raise AdapterError(
                "refusing to overwrite an existing PEFT adapter",
                file=str(taken[0]),
                expected="a new folder name, or overwrite=True",
            )
    elif path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise AdapterError(
            f"'{path.suffix}' is not a safetensors name", file=str(path), expected="a .safetensors file name"
        )
    elif path.exists() and not overwrite:
        raise AdapterError(
            "refusing to overwrite an existing file", file=str(path), expected="a new file name, or overwrite=True"
        )


def _write_peft(folder: Path, tensors, metadata, config) -> None:
    """Both files into ``folder``: a new folder appears whole (built aside, then renamed); an existing one gets each
    file replaced atomically."""

    def fill(target: Path) -> None:
        save_safetensors(target / PEFT_WEIGHTS, tensors, metadata, overwrite=True)
        text = json.dumps(config, indent=2, sort_keys=True).encode("utf-8")
        atomic_write_bytes(target / PEFT_CONFIG, lambda tmp: Path(tmp).write_bytes(text), overwrite=True)

    if folder.is_dir():
        fill(folder)
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(staging)
        os.rename(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def save_adapter(
    adapter_or_tensors: Adapter | dict[str, torch.Tensor],
    path: str | os.PathLike,
    layout: str = "lycoris",
    *,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    dtype: str | torch.dtype | None = None,
    model_keys=None,
    component: str | None = None,
) -> Path:
    """Write an adapter in ``layout`` at ``path`` (a folder for PEFT) and return that path.

    ``adapter_or_tensors``: an Adapter, or adapter tensors (any readable layout; ``metadata`` then also describes
    them). ``dtype`` ``fp32``/``fp16``/``bf16`` casts the factors (default: as they are). ``model_keys`` (the model's
    state-dict keys) map kohya names to dotted paths and tell which layers have a bias; ``component`` names the
    model part of generic (``lycoris_``/PEFT) modules. Never overwrites unless ``overwrite``; never leaves a partial
    file. Raises AdapterError naming the modules a layout cannot hold exactly.
    """
    if layout not in LAYOUTS:
        raise AdapterError(f"unknown layout '{layout}'", expected=", ".join(LAYOUTS))
    adapter = (
        adapter_or_tensors
        if isinstance(adapter_or_tensors, Adapter)
        else adapter_from_tensors(adapter_or_tensors, metadata)
    )
    target = Path(path)
    _check_target(target, layout, overwrite)
    written = convert_layout(adapter, layout, model_keys=model_keys, component=component)
    tensors = _cast(written.tensors, _dtype(dtype))
    title = target.name if layout == "peft" else target.stem
    source = file_metadata(adapter.metadata)
    meta = {
        **source,
        **network_metadata(adapter),
        **_modelspec(source, title),
        "ss_output_name": title,
        **written.metadata,
        **(metadata or {}),
    }
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = kohya_hashes(tensors, meta)
    if layout == "peft":
        _write_peft(target, tensors, {"format": "pt", **meta}, written.config)
    else:
        save_safetensors(target, tensors, meta, overwrite=overwrite)
    return target
