"""To LoRA/LoCon: every module's delta factored by truncated SVD under a rank policy (svd.py).

Per module: LoRA factors are re-factored without forming ΔW (``svd.refactor``); other additive methods rebuild ΔW
from their tensors; OFT/BOFT/GLoRA/IA3/DoRA take ``ΔW = f(W) − W`` on the base weights (refused without them);
norm modules stay as they are (a vector has no rank). A LoRA cannot hold a bias delta (full ``diff_b``, PEFT IA3 on
a biased layer, ``lora_B.bias``): it is dropped and the module says so. Output modules keep the input's names,
with ``alpha = r`` (scale 1) and ``lora_mid`` for Tucker convs.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..adapter import Adapter, adapter_from_tensors
from ..errors import AdapterError
from .deltas import BaseLike, base_for, module_delta, needs_weight, refuse_without_base
from .provenance import carried
from .report import Progress, Report, Steps
from .svd import LowRank, RankPolicy, factorize, refactor

_DORA_PARAMS = ("dora_scale", "magnitude")


def lora_tensors(name: str, low: LowRank) -> dict[str, torch.Tensor]:
    """The LoRA/LoCon tensors of one factorised module (``alpha = r``: scale 1)."""
    tensors = {
        f"{name}.lora_up.weight": low.up.contiguous().cpu(),
        f"{name}.lora_down.weight": low.down.contiguous().cpu(),
        f"{name}.alpha": torch.tensor(float(low.rank)),
    }
    if low.mid is not None:
        tensors[f"{name}.lora_mid.weight"] = low.mid.cpu()
    return tensors


def describe_methods(adapter: Adapter) -> str:
    return ", ".join(f"{algo}×{n}" for algo, n in sorted(adapter.method_counts().items()))


def bias_note(bias_delta: torch.Tensor | None) -> str:
    return "bias delta dropped" if bias_delta is not None and bool(bias_delta.abs().max() > 0) else ""


def to_lora(
    adapter: Adapter,
    policy: RankPolicy,
    *,
    base: BaseLike | None = None,
    progress: Progress | None = None,
    device: str = "cpu",
) -> tuple[Adapter, Report]:
    """Every module as a plain LoRA/LoCon (DoRA folded into the delta, which needs the base weights)."""
    return rank_reduce(
        adapter, policy, base=base, progress=progress, keep_dora=False, operation="to-lora", device=device
    )


def rank_reduce(
    adapter: Adapter,
    policy: RankPolicy,
    *,
    base: BaseLike | None,
    progress: Progress | None,
    keep_dora: bool,
    operation: str,
    device: str = "cpu",
) -> tuple[Adapter, Report]:
    """The engine of to-LoRA and resize; ``keep_dora`` keeps a LoRA's DoRA magnitude and resizes its direction."""
    weights = base_for(adapter, base)

    def on_factors(module) -> bool:
        return module.low_rank_factors() is not None and (keep_dora or not module.dora)

    missing = [
        n
        for n, m in adapter.modules.items()
        if needs_weight(m) and not on_factors(m) and (weights is None or n not in weights)
    ]
    if missing:
        raise refuse_without_base(missing, operation, adapter.path)
    report = Report(operation, policy.describe())
    steps = Steps(progress, len(adapter.modules))
    tensors: dict[str, torch.Tensor] = {}
    flat = 0
    for name, module in adapter.modules.items():
        label = module.algo + ("+dora" if module.dora else "")
        known = weights is not None and name in weights
        if module.vector_delta:
            tensors.update({f"{name}.{k}": v for k, v in module.params.items()})
            report.add(name, label, "kept")
        else:
            note = ""
            if on_factors(module):
                shape = weights.shape(name) if known else None
                up, down = (factor.to(device, torch.float32) for factor in module.low_rank_factors())
                low = refactor(
                    up, down, module.scale_value(), policy, shape or torch.Size((up.shape[0], *down.shape[1:]))
                )
                if keep_dora:
                    tensors.update({f"{name}.{k}": module.params[k] for k in _DORA_PARAMS if k in module.params})
            else:
                delta, bias_delta = module_delta(
                    module,
                    weights.weight(name) if known else None,
                    weights.bias(name) if known else None,
                    shape=weights.shape(name) if known else None,
                    device=device,
                )
                low = factorize(delta, policy)
                note = bias_note(bias_delta)
                flat += not known and not module.kernel_stored()
            if low.ref_sq == 0:
                report.add(name, label, "dropped", note="zero delta")
            else:
                tensors.update(lora_tensors(name, low))
                report.add(
                    name,
                    label,
                    f"lora r{low.rank}" + (" tucker" if low.mid is not None else ""),
                    low.err_sq,
                    low.ref_sq,
                    note,
                )
        steps.step()
    if not tensors:
        raise AdapterError(f"{operation} left nothing: every module's delta is zero", file=adapter.path)
    report.finish()
    total = report.total_error()
    comment = f"lyco_core {operation} ({policy.describe()}) of {describe_methods(adapter)}" + (
        f"; total relative error {total:.3e}" if total is not None else ""
    )
    result = adapter_from_tensors(tensors, carried(adapter.metadata, comment), None, f"{adapter.path} ({operation})")
    counts = Counter(m.note for m in report.modules if m.note)
    report.notes.extend(f"{n} module(s): {note}" for note, n in counts.items())
    if flat:
        report.notes.append(
            f"{flat} LoHa/LoKr module(s) without base weights: a conv kernel, if any, stays "
            "flattened in lora_down (ComfyUI and this pack load that; LyCORIS' loader needs --base)"
        )
    return result, report
