"""Shared shape of a reference-parity case, produced by the oracle modules (real lycoris-lora / peft runs).

A case is a saved adapter file (or PEFT folder) plus what the reference library says the adapted model's
tensors are. The parity tests feed ``case.base`` to ``lyco_core.load_adapter(case.path).patch(...)`` and compare
with ``case.reference`` per strength.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class ParityCase:
    name: str                                   # unique id, e.g. "lycoris-loha-tucker"
    path: Path                                  # adapter .safetensors or PEFT folder
    layout: str                                 # expected Adapter.layout
    algos: dict[str, str]                       # expected {module name as written in the file: algo}
    base: dict[str, torch.Tensor]               # model state dict before adaptation (fp32)
    reference: dict[float, dict[str, torch.Tensor]]  # strength -> {state-dict key: effective tensor}
    dora: dict[str, bool] = field(default_factory=dict)  # expected DoRA flag per module (only listed ones checked)
    key_map: dict[str, str] | None = None       # module name -> weight key; None lets lyco_core match by itself
    tol: float = 1e-4                           # max |ours - ref| / max |ref - base| per key
    note: str = ""                              # why the tolerance is looser, if it is


def relative_error(ours: torch.Tensor, ref: torch.Tensor, base: torch.Tensor) -> float:
    """max|ours - ref| / max|ref - base| (the delta-relative error the spec reports), in float64."""
    ours, ref, base = (t.detach().to(torch.float64) for t in (ours, ref, base))
    denom = (ref - base).abs().max().item()
    num = (ours - ref).abs().max().item()
    if denom == 0.0:
        return num
    return num / denom
