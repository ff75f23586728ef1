"""Bake adapters into a checkpoint: ``W ← f_k(W, w_k)`` for each adapter k in order (each method's own law, as
chained loaders apply them), keys and dtypes unchanged, so the result is a checkpoint of the same model
(what ComfyUI's Save Checkpoint writes). Modules are matched to the checkpoint's keys by path (keymap.py)."""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Mapping, Sequence

import torch

from ..adapter import Adapter
from ..errors import AdapterError
from .report import Progress, Report


def bake(
    model: Mapping[str, torch.Tensor],
    adapters: Sequence[Adapter],
    weights: Sequence[float],
    *,
    progress: Progress | None = None,
) -> tuple[dict[str, torch.Tensor], Report]:
    """The checkpoint's full state dict with every adapter applied; inputs untouched."""
    if len(adapters) != len(weights) or not adapters:
        raise AdapterError("give one weight per adapter, and at least one adapter")
    report = Report("bake", ", ".join(f"{os.path.basename(a.path)}:{w:g}" for a, w in zip(adapters, weights)))
    matched = [a.match(model.keys()) for a in adapters]
    total = sum(len(m.matched) for m in matched)
    changed: dict[str, torch.Tensor] = {}
    offset = 0
    for adapter, weight, match in zip(adapters, weights, matched):

        def tick(done, _count, base=offset):
            if progress is not None:
                progress(base + done, total)

        changed.update(adapter.patch(ChainMap(changed, model), weight, progress=tick))
        offset += len(match.matched)
        for name in match.matched:
            report.add(name, adapter.modules[name].algo, "baked")
        if match.unmatched:
            report.notes.append(
                f"{os.path.basename(adapter.path)}: {len(match.unmatched)} modules match no weight "
                f"(e.g. {next(iter(match.unmatched))}: {next(iter(match.unmatched.values()))})"
            )
    report.finish()
    return {key: changed.get(key, model[key]) for key in model}, report
