"""Extract an adapter from a base and a tuned model: ``ΔW = W_tuned − W_base`` per weight of at least two dims.

* ``lora``: the truncated SVD of ΔW under the rank policy (LoCon for convs, Tucker optional).
* ``lokr``: the nearest Kronecker product (kron.py) with LyCORIS' shapes (algorithms/factorization.py),
  ``(a,b) = factorization(out, factor)``, ``(c,d) = factorization(in, factor)``: ``W1 (a,c)``, ``W2 (b, d·∏k)``.
  The rank policy then decides W2: kept full when the chosen rank r ≥ max(b,d)/2 (LyCORIS' rule; both halves
  full → scale 1), else ``W2 ≈ w2_a·w2_b`` by SVD with ``alpha = r``. Files load in LyCORIS, ComfyUI and this
  pack alike.
Vectors that changed (norms, biases) and keys of only one model are reported, not extracted. Module names follow
kohya for the usual checkpoint roots (``model.diffusion_model.`` → ``lora_unet_``, ``cond_stage_model.transformer.``
→ ``lora_te_``, …), else ``lycoris_<key path>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..adapter import Adapter, adapter_from_tensors
from ..errors import AdapterError
from ..naming import kohya_prefix, spelled
from ..statedict import metadata_of, shape_of
from ..algorithms.factorization import factorization
from .kron import nearest_kronecker
from .provenance import carried
from .report import Progress, Report, Steps
from .svd import RankPolicy, factorize
from .to_lora import lora_tensors


def kohya_name(key: str) -> str:
    """The LyCORIS/kohya module name for a weight key of a checkpoint (see the module docstring)."""
    spelling, path = spelled("checkpoint", key[: -len(".weight")])
    return kohya_prefix(spelling.component if spelling else "model") + path.replace(".", "_")


def lokr_tensors(name: str, delta: torch.Tensor, policy: RankPolicy, factor: int) -> tuple[dict, float, str]:
    """(tensors, error², description) of the nearest-Kronecker LoKr of ``delta``."""
    out, inp = delta.shape[:2]
    a, b = factorization(out, factor)
    c, d = factorization(inp, factor)
    matrix = delta.reshape(out, -1)
    w1, w2 = nearest_kronecker(matrix, a, c)
    conv = delta.ndim > 2
    tensors = {f"{name}.lokr_w1": w1.contiguous()}
    low = factorize(w2, policy) if (policy.fixed(conv) or 0) < max(b, d) / 2 else None
    if low is not None and low.rank < max(b, d) / 2:
        w2 = low.up @ low.down
        tensors.update(
            {
                f"{name}.lokr_w2_a": low.up.contiguous(),
                f"{name}.lokr_w2_b": low.down.contiguous(),
                f"{name}.alpha": torch.tensor(float(low.rank)),
            }
        )
        label = f"lokr r{low.rank}"
    else:
        tensors.update(
            {f"{name}.lokr_w2": w2.reshape(b, d, *delta.shape[2:]).contiguous(), f"{name}.alpha": torch.tensor(1.0)}
        )
        label = "lokr full"
    err_sq = float((matrix - torch.kron(w1.contiguous(), w2.contiguous())).double().square().sum())
    return {k: v.cpu() for k, v in tensors.items()}, err_sq, label + f" {a}x{b}|{c}x{d}"


def extract(
    base: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    policy: RankPolicy,
    *,
    method: str = "lora",
    factor: int = -1,
    min_diff: float = 0.0,
    progress: Progress | None = None,
    name_of: Callable[[str], str] = kohya_name,
    device: str = "cpu",
) -> tuple[Adapter, Report]:
    """An adapter whose delta approximates ``tuned − base``; ``min_diff`` skips layers with
    ``‖ΔW‖_F ≤ min_diff·‖W‖_F``."""
    if method not in ("lora", "lokr"):
        raise AdapterError(f"unknown extraction method '{method}'", expected="lora or lokr")
    keys = [k for k in base if k.endswith(".weight") and k in tuned and len(shape_of(base, k)) >= 2]
    mismatched = [k for k in keys if shape_of(base, k) != shape_of(tuned, k)]
    if mismatched:
        raise AdapterError(
            f"{len(mismatched)} weights differ in shape between the models (e.g. {mismatched[0]})",
            expected="a tuned model of the same architecture",
        )
    report = Report("extract", f"{method}, {policy.describe()}" + (f", factor {factor}" if method == "lokr" else ""))
    steps = Steps(progress, len(keys))
    tensors: dict[str, torch.Tensor] = {}
    unchanged = 0
    for key in keys:
        w_base = base[key].to(device, torch.float32)
        delta = tuned[key].to(device, torch.float32) - w_base
        norm = float(delta.norm())
        if norm == 0 or norm <= min_diff * float(w_base.norm()):
            unchanged += 1
        elif method == "lora":
            low = factorize(delta, policy)
            tensors.update(lora_tensors(name_of(key), low))
            report.add(name_of(key), "diff", f"lora r{low.rank}", low.err_sq, low.ref_sq)
        else:
            parts, err_sq, label = lokr_tensors(name_of(key), delta, policy, factor)
            tensors.update(parts)
            report.add(name_of(key), "diff", label, err_sq, norm**2)
        steps.step()
    vectors = [k for k in tuned if k in base and len(shape_of(base, k)) < 2 and not torch.equal(base[k], tuned[k])]
    if unchanged:
        report.notes.append(f"{unchanged} weights unchanged (or below min_diff), skipped")
    if vectors:
        report.notes.append(f"{len(vectors)} changed vectors (biases, norms) not extracted, e.g. {vectors[0]}")
    only = [k for k in tuned if k not in base] + [k for k in base if k not in tuned]
    if only:
        report.notes.append(f"{len(only)} keys exist in one model only, e.g. {only[0]}")
    if not tensors:
        raise AdapterError(
            "the two models have no differing weight of two or more dimensions",
            expected="a base and a tuned model that differ",
        )
    report.finish()
    total = report.total_error()
    source = metadata_of(tuned) or metadata_of(base)
    extra = {}
    if source.get("modelspec.architecture") and not source["modelspec.architecture"].endswith("/lora"):
        extra["modelspec.architecture"] = source["modelspec.architecture"] + "/lora"
    comment = f"lyco_core extract ({report.detail}); total relative error {total:.3e}"
    metadata = carried({k: v for k, v in source.items() if k.startswith(("modelspec.", "ss_"))}, comment, **extra)
    return adapter_from_tensors(tensors, metadata, None, "extract"), report
