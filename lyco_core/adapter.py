"""Adapter: a file (or PEFT folder) read into per-module algorithm objects, and ``patch`` to apply them.

Flow: io reads tensors and metadata → layouts.split_key names module and parameter → the layout registry decides
the naming convention and each module's scale context → the algorithm registry claims each module → ``patch``
matches modules to weight keys (keymap) and applies each module's own law at the given strength.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .algorithms import detect, flag_suffixes, known_suffixes
from .algorithms.base import AdapterModule
from .errors import AdapterError
from .foreign import recognise
from .io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, load_shapes, load_tensors
from .keymap import MatchReport, Side, WeightIndex, WeightSlice, place
from .layouts import ModulePath, detect_layout, split_key
from .metadata import highlights
from .statedict import shape_of

log = logging.getLogger("lyco_core")

CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_ONE_NUMBER = flag_suffixes()  # stored as one number of any dtype (alpha, flags)


def _resolve_paths(path: Path) -> tuple[Path, Path | None]:
    """(tensor file, adapter_config.json or None) for a file or a PEFT folder."""
    if path.is_dir():
        for name in PEFT_WEIGHT_NAMES:
            if (path / name).is_file():
                config = path / CONFIG_NAME
                return path / name, config if config.is_file() else None
        raise AdapterError(
            "folder holds no adapter_model.safetensors",
            file=str(path),
            expected="a PEFT adapter folder (adapter_model.safetensors + adapter_config.json)",
        )
    if not path.is_file():
        raise AdapterError("no such file", file=str(path))
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise AdapterError(
            f"unsupported file type '{path.suffix}'", file=str(path), expected="a .safetensors file or a PEFT folder"
        )
    config = path.parent / CONFIG_NAME
    return path, config if config.is_file() else None


def _read_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"unreadable adapter config ({exc})", file=str(path), expected="a JSON object") from exc
    if not isinstance(config, dict):
        raise AdapterError("adapter config is not a JSON object", file=str(path), expected="a PEFT adapter_config.json")
    return config


def _check_tensor(file: str, key: str, param: str, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        raise AdapterError(f"tensor of shape {list(tensor.shape)} holds no values", file=file, key=key,
                           expected="a non-empty tensor")  # fmt: skip
    if param in _ONE_NUMBER and tensor.numel() != 1:
        raise AdapterError(f"{param} holds {tensor.numel()} values", file=file, key=key, expected="one number")
    if not tensor.is_floating_point() and param not in _ONE_NUMBER:
        raise AdapterError(f"tensor has dtype {tensor.dtype}", file=file, key=key, expected="a floating-point tensor")
    if tensor.is_floating_point() and tensor.element_size() == 1:  # float8: no arithmetic kernels on CPU
        raise AdapterError(f"tensor has dtype {tensor.dtype}", file=file, key=key, expected="fp16, bf16, fp32 or fp64")
    if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
        raise AdapterError("tensor holds NaN or Inf values", file=file, key=key, expected="finite values")


def _as_stored(target: WeightSlice, module: AdapterModule) -> WeightSlice:
    """``target`` as the module sees its weight: transposed once more for a PEFT ``fan_in_fan_out`` module, whose
    layer stores ``Wᵀ`` (PEFT merges ``transpose(ΔW)`` into it)."""
    if not module.ctx.fan_in_fan_out:
        return target
    return dataclasses.replace(target, transposed=not target.transposed)


class Adapter:
    """An adapter file read and understood: ``layout``, ``modules`` {name as written: module (its ``params`` are
    the file's tensors under canonical parameter names)}, ``metadata``, ``config`` (PEFT), ``unknown_keys`` (tensor
    keys no algorithm reads — reported, never silently dropped)."""

    def __init__(
        self,
        path: str,
        layout: str,
        modules: dict[str, AdapterModule],
        metadata: dict[str, str],
        unknown_keys: list[str],
        layout_obj,
        config: dict[str, Any] | None = None,
    ):
        self.path, self.layout, self.modules, self.metadata = path, layout, modules, metadata
        self.unknown_keys = unknown_keys
        self.config = config  # the PEFT adapter_config.json, when the file came with one
        self._layout = layout_obj

    def __repr__(self) -> str:
        return f"<Adapter {os.path.basename(self.path)} {self.layout}: {self.method_counts()}>"

    def method_counts(self) -> dict[str, int]:
        return dict(Counter(m.algo + ("+dora" if m.dora else "") for m in self.modules.values()))

    # --- matching ------------------------------------------------------------------------------------------------
    def module_path(self, name: str) -> ModulePath:
        """Where module ``name`` points inside its model, per the file's layout."""
        return self._layout.module_path(name)

    def match(self, weight_keys, key_map: dict[str, str] | None = None, host_map: dict | None = None) -> MatchReport:
        """Which module patches which weight key, or which part of one (``report.target(name)``), by
        ``keymap.place`` — the matcher the nodes use too; ``host_map`` is a host's own key map (see
        ``keymap.Side``; given a state dict rather than its keys, the rows it names are checked against the
        weights' shapes). ``key_map`` {module name: key} overrides automatic matching."""
        report = MatchReport(unknown_keys=list(self.unknown_keys))
        keys = set(weight_keys)
        shapes = {k: shape_of(weight_keys, k) for k in keys} if host_map and isinstance(weight_keys, Mapping) else {}
        sides = None if key_map is not None else [Side("model", WeightIndex(keys), host_map or {}, shapes)]
        for name in self.modules:
            if key_map is not None:
                key = key_map.get(name)
                if key is None:
                    report.unmatched[name] = "not in key_map"
                elif key not in keys:
                    report.unmatched[name] = f"key_map names '{key}', which the weights do not have"
                else:
                    report.add(name, _as_stored(WeightSlice(key), self.modules[name]))
                continue
            _, target, reason = place(name, self.module_path(name), sides)
            if target is None:
                report.unmatched[name] = reason
            else:
                report.add(name, _as_stored(target, self.modules[name]))
        return report

    # --- applying ------------------------------------------------------------------------------------------------
    def patch(
        self,
        weights: dict[str, torch.Tensor],
        strength: float = 1.0,
        key_map: dict[str, str] | None = None,
        progress=None,
        host_map: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """New tensors (same shape and dtype) for every weight/bias key the adapter changes; inputs untouched.

        Each module applies its own strength law (see the algorithm files). A module matched to part of a weight
        (q, k or v of a fused ``in_proj_weight``: ``report.target``) sees those rows as its W and rewrites them
        alone; modules sharing one weight all land in its one new tensor. Strength 0 means off: nothing changes
        (LyCORIS' DoRA and rescaled OFT would still alter W at multiplier 0; we treat 0 as "adapter disabled").
        Modules that match no key are logged with the reason; matching nothing at all raises AdapterError, and so
        does a result holding NaN or Inf where the model's weight did not.
        ``progress(done, total)`` is called after each module and may raise to stop; ``host_map`` as in ``match``.
        """
        if any(p.is_meta for m in self.modules.values() for p in m.params.values()):
            raise AdapterError(
                "this Adapter was read header-only; load it again with header_only=False to patch", file=self.path
            )
        report = self.match(weights, key_map, host_map)
        if not report.matched:
            reasons = "; ".join(f"{n}: {r}" for n, r in list(report.unmatched.items())[:3])
            raise AdapterError(
                f"no module matches any weight of the model ({reasons})",
                file=self.path,
                expected="weights of the model this adapter was made for",
            )
        if report.unmatched:
            log.warning("%s: %s; unmatched: %s", self.path, report.line(), ", ".join(list(report.unmatched)[:10]))
        if strength == 0:
            return {}
        updated: dict[str, torch.Tensor] = {}
        for done, name in enumerate(report.matched, 1):
            module, target = self.modules[name], report.target(name)
            key, bias_key = target.key, target.bias_key if target.bias_key in weights else None
            try:
                weight = updated[key] if key in updated else weights[key].detach().clone()
                bias = updated.get(bias_key, weights[bias_key]) if bias_key else None
                module.fits(target.shape(weight.shape), bias is not None)
                module.check_result(module.apply_(target.of(weight), float(strength)), target.of(weights[key]))
                bias_rows = target.of(bias, weight.shape) if bias is not None else None  # the weight's rows
                new_bias = module.bias_update(bias_rows, float(strength)) if bias_rows is not None else None
                if new_bias is not None:
                    module.check_result(new_bias, target.of(weights[bias_key], weight.shape))
            except AdapterError as exc:
                raise exc.located(file=self.path, module=name) from None
            updated[key] = weight
            if new_bias is not None:
                full_bias = bias.detach().clone() if bias_key not in updated else bias
                target.of(full_bias, weight.shape).copy_(new_bias)
                updated[bias_key] = full_bias
            if progress is not None:
                progress(done, len(report.matched))
        return updated

    # --- describing ----------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Layout, method counts, rank/alpha ranges, DoRA/Tucker, metadata highlights and per-module details."""
        modules = {name: module.summary() for name, module in self.modules.items()}
        ranks = [m["rank"] for m in modules.values() if m["rank"] is not None]
        alphas = [m["alpha"] for m in modules.values() if m["alpha"] is not None]
        return {
            "file": self.path,
            "layout": self.layout,
            "modules": len(self.modules),
            "methods": self.method_counts(),
            "rank_range": [min(ranks), max(ranks)] if ranks else None,
            "alpha_range": [min(alphas), max(alphas)] if alphas else None,
            "dora": sum(m["dora"] for m in modules.values()),
            "tucker": sum(m["tucker"] for m in modules.values()),
            "unknown_keys": list(self.unknown_keys),
            "metadata": highlights(self.metadata),
            "per_module": modules,
        }


def load_adapter(path: str | os.PathLike, *, header_only: bool = False) -> Adapter:
    """Read an adapter file or PEFT folder; raise AdapterError with file, module, key and expectation if invalid.

    ``header_only=True`` (safetensors only) reads names, shapes, dtypes and scalar tensors (alpha) from the header:
    enough for ``summary()`` and ``match()`` of any size of file in milliseconds, not for ``patch()``.
    """
    tensor_path, config_path = _resolve_paths(Path(path))
    config = _read_config(config_path)
    if header_only and tensor_path.suffix.lower() in SAFETENSORS_SUFFIXES:
        tensors, metadata = load_shapes(tensor_path)
    else:
        tensors, metadata = load_tensors(tensor_path)
    return adapter_from_tensors(tensors, metadata, config, str(tensor_path))


def adapter_from_tensors(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    file: str = "<memory>",
) -> Adapter:
    """An Adapter from in-memory tensors (file keys), metadata and an optional PEFT config — what converters and
    the trainer produce before anything is written. ``file`` names it in errors and reports."""
    metadata = dict(metadata or {})
    if not tensors:
        raise AdapterError("file holds no tensors", file=file, expected="adapter tensors")
    canonical = known_suffixes()
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    key_of: dict[str, dict[str, str]] = {}  # module → parameter → the file's key
    unknown: list[str] = []
    for key, tensor in tensors.items():
        split = split_key(key, canonical)
        if split is None:
            unknown.append(key)
            continue
        module, param = split
        _check_tensor(file, key, param, tensor)
        first = key_of.setdefault(module, {}).setdefault(param, key)
        if first != key:
            raise AdapterError(
                f"'{first}' and '{key}' are two spellings of the parameter {param}",
                file=file,
                module=module,
                key=key,
                expected="one tensor per parameter",
            )
        grouped.setdefault(module, {})[param] = tensor
    layout_cls = detect_layout(list(grouped), config, metadata)
    layout = layout_cls(file, config, metadata)
    modules: dict[str, AdapterModule] = {}
    for name, params in grouped.items():
        algorithm = detect(params, layout_cls.name)
        if algorithm is None:
            unknown.extend(key_of[name].values())
            continue
        for param in algorithm.unread(params):
            unknown.append(key_of[name][param])
            del params[param]
        try:
            modules[name] = layout.checked(algorithm(name, params, layout.context(name, params)))
        except AdapterError as exc:
            raise exc.located(file=file, module=name) from None
    if not modules:
        other = recognise(tensors)
        if other is not None:
            raise AdapterError(f"this is {other[0]}, not an adapter", file=file, expected=other[1])
        raise AdapterError(
            f"no adapter module recognised among {len(tensors)} tensors (e.g. {', '.join(sorted(tensors)[:3])})",
            file=file,
            expected="LoRA/LoHa/LoKr/OFT/BOFT/GLoRA/IA3/full/norm tensor names",
        )
    full_metadata = dict(metadata)
    if config is not None:
        full_metadata.update({f"peft.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in config.items()})
    if unknown:
        log.warning(
            "%s: %d tensor keys are read by no adapter method: %s",
            file,
            len(unknown),
            ", ".join(sorted(unknown)[:5]),
        )
    return Adapter(file, layout_cls.name, modules, full_metadata, sorted(unknown), layout, config)
