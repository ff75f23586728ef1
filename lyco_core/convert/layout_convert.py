"""Layout conversion: the same adapter spelled for LyCORIS/kohya, PEFT or diffusers, exactly or not at all.

Names are mapped by names.py (mangled → dotted needs the model's keys). Each layout's writer keeps every module's
math: scales move between alpha tensors and PEFT configs (``alpha = scale·r``, patterns per module), scales a
layout cannot state are folded into a factor (full/full LoKr in LyCORIS), and modules the target cannot express
(input-side PEFT OFT in LyCORIS, output-side OFT in PEFT, Tucker LoCon in PEFT, LoHa in diffusers, …) are refused
together, naming each one, with the lossy routes that can (to-LoRA, full diff). Every converted additive module is
then rebuilt from the written tensors and compared with the original: the report carries that difference.
Reference: docs/formats.md, Writing: exactly or refuse.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..adapter import Adapter, adapter_from_tensors
from ..layouts import diffusers, lycoris, peft
from ..layouts.base import Written
from .deltas import inferred_shape, needs_weight
from .names import target_names
from .provenance import file_metadata
from .report import Progress, Report, Steps

LAYOUTS = ("lycoris", "peft", "diffusers")
_WRITERS = {"lycoris": lycoris.write, "peft": peft.write, "diffusers": diffusers.write}


def _biases(adapter: Adapter, model_keys: Iterable[str] | None) -> dict[str, bool] | None:
    """{module: whether its layer has a bias} from the model's keys, or None without them."""
    if model_keys is None:
        return None
    keys = set(model_keys)
    report = adapter.match(keys)
    return {name: report.target(name).bias_key in keys for name in report.matched}


def convert_layout(
    adapter: Adapter,
    layout: str,
    *,
    model_keys: Iterable[str] | None = None,
    component: str | None = None,
    paths: dict[str, str] | None = None,
) -> Written:
    """``adapter`` written in ``layout`` (tensors, PEFT config, layout metadata); AdapterError when not exact.
    ``model_keys`` or ``paths`` name mangled modules (names.py); ``model_keys`` also tells which layers have biases."""
    keys = None if model_keys is None else list(model_keys)
    return _write(adapter, layout, keys, component, paths)[0]


def _write(adapter, layout, keys, component, paths=None) -> tuple[Written, dict[str, str]]:
    targets = target_names(adapter, layout, keys, component, paths)
    written = _WRITERS[layout](adapter, targets, _biases(adapter, keys))
    return written, {name: prefix + path for name, (prefix, path) in targets.items()}


def convert(
    adapter: Adapter,
    layout: str,
    *,
    model_keys: Iterable[str] | None = None,
    component: str | None = None,
    paths: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> tuple[Adapter, Report]:
    """The converted adapter, read back as the target layout's reader sees it, and the check of its deltas
    (rebuilt in float64 from the old and the new tensors)."""
    written, names = _write(adapter, layout, None if model_keys is None else list(model_keys), component, paths)
    metadata = {**file_metadata(adapter.metadata), **written.metadata}
    result = adapter_from_tensors(written.tensors, metadata, written.config, f"{adapter.path} (as {layout})")
    report = Report("convert", f"{adapter.layout} → {layout}", notes=list(written.notes))
    steps = Steps(progress, len(adapter.modules))
    for name, module in adapter.modules.items():
        new = result.modules[names[name]]
        label = module.algo + ("+dora" if module.dora else "")
        if needs_weight(module):
            report.add(names[name], label, new.algo, note="parameters carried over")
        else:
            shape = inferred_shape(module)
            before = module.delta(shape, torch.device("cpu"), torch.float64)
            after = new.delta(shape, torch.device("cpu"), torch.float64)
            report.add(
                names[name], label, new.algo, float((before - after).square().sum()), float(before.square().sum())
            )
        steps.step()
    return result, report.finish()
