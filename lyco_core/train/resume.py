"""Continuing from a saved adapter: its weights into freshly built trainables, its step count and loss curve from
its metadata, and (when the file has one) the optimizer/scheduler/RNG state from its sidecar
``<file stem>.train-state.pt``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..adapter import Adapter
from ..naming import PEFT_PREFIX
from .export import lycoris_name
from .loop import TrainState, load_state
from .wrap import AttachedAdapter

STATE_SUFFIX = ".train-state.pt"


def state_path(adapter_file) -> Path:
    """The sidecar training state written next to an adapter file."""
    path = Path(adapter_file)
    return path.with_name(path.stem + STATE_SUFFIX)


def load_weights(adapter: AttachedAdapter, source: Adapter, name_of: Callable[[str], str] = lycoris_name) -> None:
    """Copy ``source``'s module weights into ``adapter``'s trainables (matched by ``name_of(path)``, the PEFT key
    or the bare path). Every trainable must find its module; shapes must agree."""
    missing = []
    for path, trainable in adapter.modules.items():
        for candidate in (name_of(path), PEFT_PREFIX + path, path):
            if candidate in source.modules:
                trainable.load_from(source.modules[candidate])
                break
        else:
            missing.append(path)
    if missing:
        raise ValueError(
            f"{source.path}: no saved module for {len(missing)} of {len(adapter.modules)} trained "
            f"modules (e.g. {', '.join(missing[:3])}); resume with the config it was trained with"
        )


def resume_state(source: Adapter) -> TrainState:
    """The training state to continue from: the sidecar if it exists, else step count and loss curve from the
    metadata (``ss_steps``, ``lyco_loss_history``) with a fresh optimizer."""
    sidecar = state_path(source.path)
    if sidecar.is_file():
        return load_state(sidecar)
    history = json.loads(source.metadata.get("lyco_loss_history", "[]"))
    steps = int(source.metadata.get("ss_steps", len(history)) or 0)
    return TrainState(step=steps, loss_history=[float(x) for x in history])
