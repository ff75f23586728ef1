"""Merge N adapters (any mix of methods and layouts) with per-adapter weights into one LoRA or one full-diff adapter.

Modules are grouped by the layer they patch (component + path, whatever the layout spells, names.py). Per layer,
with the base weight W: ``W_0 = W``, ``W_k = f_k(W_{k−1}, w_k)`` in input order (what chained loaders do: each
method's own strength law, W-dependent methods on the weight the earlier ones left), and ``ΔW = W_N − W``.
Without the base every module must be additive and ``ΔW = Σ_k w_k·ΔW_k``. Then ``--full`` writes ``diff`` (and
``diff_b``) exactly; a rank policy writes the truncated SVD of ΔW (bias deltas dropped, reported). Layers whose
delta is a vector (norm) are written as norm modules either way. A layer patched by plain LoRAs only stays in
factor space: ``Σ w_k·s_k·U_k·D_k = [w_1·s_1·U_1 … w_n·s_n·U_n]·[D_1; …; D_n]``, truncated by ``svd.refactor``
without forming ΔW.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from ..adapter import Adapter, adapter_from_tensors
from ..errors import AdapterError
from .deltas import (
    BaseLike,
    BaseWeights,
    base_for,
    inferred_shape,
    module_delta,
    needs_weight,
    refuse_without_base,
)
from ..naming import kohya_prefix
from .names import module_id
from .provenance import carried
from .report import Progress, Report, Steps
from ..algorithms.base import flat2
from .svd import LowRank, RankPolicy, factorize, refactor
from .to_lora import bias_note, lora_tensors

Member = tuple[int, str]  # (index of the adapter, module name)


def _group(adapters: Sequence[Adapter]) -> dict[tuple[str, str], list[Member]]:
    groups: dict[tuple[str, str], list[Member]] = {}
    for index, adapter in enumerate(adapters):
        for name in adapter.modules:
            groups.setdefault(module_id(adapter, name).identity(), []).append((index, name))
    return groups


def _output_names(adapters: Sequence[Adapter], groups) -> dict[tuple[str, str], str]:
    """The first adapter's spelling when all share a layout, else LyCORIS/kohya names for every layer."""
    if len({a.layout for a in adapters}) == 1:
        return {identity: members[0][1] for identity, members in groups.items()}
    te_split = any(identity[0] == "te2" for identity in groups)
    return {identity: kohya_prefix(identity[0], te_split) + identity[1] for identity in groups}


def _shape(adapters, members: list[Member], bases: list[BaseWeights | None]) -> tuple[torch.Size, bool]:
    """(the layer's weight shape, whether it is certain: from the base, or from a module that states it)."""
    for index, name in members:
        if bases[index] is not None and name in bases[index]:
            return bases[index].shape(name), True
    modules = [adapters[i].modules[n] for i, n in members]
    shapes = [inferred_shape(m) for m in modules]
    if len({math.prod(s) for s in shapes}) > 1:
        listed = ", ".join(f"{n} {list(s)}" for (_, n), s in zip(members, shapes))
        raise AdapterError(
            f"the modules of one layer disagree on its size: {listed}", expected="adapters made for the same model"
        )
    known = [s for m, s in zip(modules, shapes) if m.kernel_stored()]
    return (known[0], True) if known else (shapes[0], False)


def _factor_sum(adapters, weights, members, shape: torch.Size, policy: RankPolicy, device) -> LowRank | None:
    """The truncation of a layer patched by plain LoRAs only (two factors, no DoRA, no bias delta), from the stacked
    factors; None otherwise."""
    modules = [(weights[i], adapters[i].modules[n]) for i, n in members]
    if any(m.low_rank_factors() is None or m.dora or m.changes_bias() for _, m in modules):
        return None
    factors = [(w * m.scale_value(), *m.low_rank_factors()) for w, m in modules]
    ups = [scale * flat2(up.to(device, torch.float32)) for scale, up, _ in factors]
    downs = [flat2(down.to(device, torch.float32)) for _, _, down in factors]
    return refactor(torch.cat(ups, 1), torch.cat(downs, 0), 1.0, policy, shape)


def _layer_delta(adapters, weights, members, bases, shape, device):
    """(ΔW, Δb) of one layer after every member in order (see the module docstring)."""
    first_base = next((bases[i] for i, n in members if bases[i] is not None and n in bases[i]), None)
    first_name = next((n for i, n in members if bases[i] is not None and n in bases[i]), None)
    if first_base is None:
        parts = [
            module_delta(adapters[i].modules[n], strength=weights[i], shape=shape, device=device) for i, n in members
        ]
        biases = [b for _, b in parts if b is not None]
        return sum(d for d, _ in parts), (sum(biases) if biases else None)
    weight = first_base.weight(first_name).to(device, torch.float32)
    bias = first_base.bias(first_name)
    bias = None if bias is None else bias.to(device, torch.float32)
    current, current_bias = weight.clone(), None if bias is None else bias.clone()
    for index, name in members:
        delta, bias_delta = module_delta(
            adapters[index].modules[name], current, current_bias, strength=weights[index], device=device
        )
        current = current + delta
        if bias_delta is not None and current_bias is not None:
            current_bias = current_bias + bias_delta
    return current - weight, None if bias is None or torch.equal(current_bias, bias) else current_bias - bias


def merge(
    adapters: Sequence[Adapter],
    weights: Sequence[float],
    policy: RankPolicy | None = None,
    *,
    base: BaseLike | None = None,
    progress: Progress | None = None,
    device: str = "cpu",
) -> tuple[Adapter, Report]:
    """One adapter holding ``Σ`` of the inputs' deltas: full-diff when ``policy`` is None, else a LoRA."""
    if len(adapters) != len(weights) or not adapters:
        raise AdapterError("give one weight per adapter, and at least one adapter")
    bases = [base_for(a, base) for a in adapters]
    missing = [
        f"{a.path}: {n}"
        for a, b in zip(adapters, bases)
        for n, m in a.modules.items()
        if needs_weight(m) and (b is None or n not in b)
    ]
    if missing:
        raise refuse_without_base(missing, "merge")
    groups = _group(adapters)
    names = _output_names(adapters, groups)
    report = Report("merge", "full diff" if policy is None else policy.describe())
    steps = Steps(progress, len(groups))
    tensors: dict[str, torch.Tensor] = {}
    for identity, members in groups.items():
        name = names[identity]
        source = "+".join(dict.fromkeys(adapters[i].modules[n].algo for i, n in members))
        shape, certain = _shape(adapters, members, bases)
        if policy is None and not certain:
            raise AdapterError(
                f"layer {name}: a full diff needs the weight's exact shape, and LoHa/LoKr store a "
                f"convolution's kernel flattened",
                expected="the model (--base MODEL, its header is enough; or a connected MODEL/CLIP)",
            )
        low = None if policy is None else _factor_sum(adapters, weights, members, shape, policy, device)
        bias_delta = None
        if low is None:
            delta, bias_delta = _layer_delta(adapters, weights, members, bases, shape, device)
            delta, bias_delta = delta.cpu(), None if bias_delta is None else bias_delta.cpu()
            if delta.ndim == 1 or policy is None:
                kind = ("w_norm", "b_norm") if delta.ndim == 1 else ("diff", "diff_b")
                tensors[f"{name}.{kind[0]}"] = delta
                if bias_delta is not None:
                    tensors[f"{name}.{kind[1]}"] = bias_delta
                report.add(name, source, "norm" if delta.ndim == 1 else "diff")
                steps.step()
                continue
            low = factorize(delta, policy)
        if low.ref_sq > 0:
            tensors.update(lora_tensors(name, low))
        report.add(
            name,
            source,
            f"lora r{low.rank}" if low.ref_sq > 0 else "dropped",
            low.err_sq,
            low.ref_sq,
            bias_note(bias_delta) if low.ref_sq > 0 else "zero delta",
        )
        steps.step()
    report.finish()
    merged_from = ", ".join(f"{os.path.basename(a.path)}:{w:g}" for a, w in zip(adapters, weights))
    total = report.total_error()
    comment = f"lyco_core merge of {merged_from} ({report.detail})" + (
        f"; total relative error {total:.3e}" if total is not None else ""
    )
    metadata = carried(adapters[0].metadata, comment, **{"modelspec.merged_from": merged_from})
    triggers = [p for a in adapters for p in a.metadata.get("modelspec.trigger_phrase", "").split(",") if p.strip()]
    if triggers:
        metadata["modelspec.trigger_phrase"] = ", ".join(dict.fromkeys(p.strip() for p in triggers))
    if not tensors:
        raise AdapterError("the merge left nothing: every layer's delta is zero")
    return adapter_from_tensors(tensors, metadata, None, "merge"), report
