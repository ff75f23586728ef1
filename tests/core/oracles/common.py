"""Shared shape of a reference-parity case, produced by the oracle modules (real lycoris-lora / peft runs).

A case is a saved adapter file (or PEFT folder) plus what the reference library says the adapted model's
tensors are. The parity tests feed ``case.base`` to ``lyco_core.load_adapter(case.path).patch(...)`` and compare
with ``case.reference`` per strength.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.host.tolerances import delta_agreement


@dataclass
class ParityCase:
    name: str  # unique id, e.g. "lycoris-loha-tucker"
    path: Path  # adapter .safetensors or PEFT folder
    layout: str  # expected Adapter.layout
    algos: dict[str, str]  # expected {module name as written in the file: algo}
    base: dict[str, torch.Tensor]  # model state dict before adaptation (fp32)
    reference: dict[float, dict[str, torch.Tensor]]  # strength -> {state-dict key: effective tensor}
    dora: dict[str, bool] = field(default_factory=dict)  # expected DoRA flag per module (only listed ones checked)
    key_map: dict[str, str] | None = None  # module name -> weight key; None lets lyco_core match by itself
    # The bound on max|ours − ref| / max|ref − base| per key is derived, not fixed: two float32 computations of
    # W' = W + ΔW agree within delta_agreement = 2ε·(max|W'|/max|ΔW| + steps·depth) (tests/host/tolerances.py).
    # depth: the longest reduction in ΔW (a rank, a Kronecker factor, an OFT block, a DoRA norm's fan-in);
    # steps: the chained operations (factor products, Cayley/Neumann terms, butterfly stages, R·W, a norm).
    # The defaults cover every LyCORIS case: ranks ≤ 8, Kronecker factors and OFT/BOFT blocks ≤ 16, and at most
    # four chained operations (BOFT: Cayley solve, two butterfly stages, R·W) → 2ε·(ratio + 64) ≈ 7.6e-6 + 2ε·ratio.
    depth: int = 16
    steps: int = 4
    note: str = ""  # about the case: how it was derived, what sets its depth and steps

    def tol(self, ref: torch.Tensor, base: torch.Tensor) -> float:
        """The rounding bound for one key: ``delta_agreement(ref, base, depth, steps=steps)`` in float32."""
        return delta_agreement(ref, base, self.depth, steps=self.steps)


def relative_error(ours: torch.Tensor, ref: torch.Tensor, base: torch.Tensor) -> float:
    """max|ours - ref| / max|ref - base| (the delta-relative error the spec reports), in float64."""
    ours, ref, base = (t.detach().to(torch.float64) for t in (ours, ref, base))
    denom = (ref - base).abs().max().item()
    num = (ours - ref).abs().max().item()
    if denom == 0.0:
        return num
    return num / denom


def read_failures(case: ParityCase, adapter) -> list[str]:
    """What an Adapter got wrong about the case's file: layout, module names, methods, DoRA flags, metadata type."""
    failures = []
    if adapter.layout != case.layout:
        failures.append(f"layout {adapter.layout} != {case.layout}")
    missing, extra = sorted(set(case.algos) - set(adapter.modules)), sorted(set(adapter.modules) - set(case.algos))
    if missing or extra:
        failures.append(f"modules missing {missing[:5]}, extra {extra[:5]}")
    wrong = {
        n: (m.algo, case.algos[n]) for n, m in adapter.modules.items() if n in case.algos and m.algo != case.algos[n]
    }
    if wrong:
        failures.append(f"(ours, expected) algo per module: {wrong}")
    wrong_dora = {
        n: (bool(adapter.modules[n].dora), flag)
        for n, flag in case.dora.items()
        if n in adapter.modules and bool(adapter.modules[n].dora) != flag
    }
    if wrong_dora:
        failures.append(f"(ours, expected) DoRA flag per module: {wrong_dora}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in adapter.metadata.items()):
        failures.append("metadata is not a dict of str -> str")
    return failures


def patch_failures(case: ParityCase, adapter, strength: float) -> list[str]:
    """Differences between ``adapter.patch(case.base, strength)`` and the reference; also checks that the input
    dict and its tensors are left untouched and that keys the reference leaves alone stay as they are."""
    import math

    pristine = {k: v.clone() for k, v in case.base.items()}
    identity = {k: id(v) for k, v in case.base.items()}
    new = adapter.patch(case.base, strength=strength, key_map=case.key_map)
    reference = case.reference[strength]
    failures = [f"m={strength}: returned key {k} is not in the weights" for k in sorted(set(new) - set(case.base))]
    for key, ref in reference.items():
        base = case.base[key]
        if key not in new:
            failures.append(f"m={strength} {key}: changed by the reference, not returned by patch")
        elif new[key] is base:
            failures.append(f"m={strength} {key}: patch returned the input tensor itself, not a new one")
        ours = new.get(key, base)
        if ours.shape != base.shape:
            failures.append(f"m={strength} {key}: shape {tuple(ours.shape)} != {tuple(base.shape)}")
            continue
        if ours.dtype != base.dtype:
            failures.append(f"m={strength} {key}: dtype {ours.dtype} != {base.dtype}")
        err, tol = relative_error(ours, ref, base), case.tol(ref, base)
        if not math.isfinite(err) or err > tol:
            failures.append(f"m={strength} {key}: relative error {err:.3e} > {tol:.3e}")
    for key, tensor in new.items():
        if key in case.base and key not in reference and not torch.allclose(tensor.double(), case.base[key].double()):
            failures.append(f"m={strength} {key}: changed, but the reference leaves it untouched")
    if {k: id(v) for k, v in case.base.items()} != identity:
        failures.append("patch replaced entries of the input dict")
    mutated = [k for k, v in case.base.items() if not torch.equal(v, pristine[k])]
    if mutated:
        failures.append(f"patch modified its input tensors: {mutated[:5]}")
    return failures
