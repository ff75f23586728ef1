"""Rounding tolerances derived from the dtype's epsilon and the sizes involved, never from one machine's result.

One place for the fact, imported by both suites the way each already imports shared test code:
``tests/host`` (its own rootdir, on ``sys.path`` as a plain folder) with ``from tolerances import ...`` like
``comfy_bootstrap``; ``tests/core`` (repository root on ``sys.path``) with ``from tests.host.tolerances import ...``
like ``tests.core.oracles``. It imports nothing but ``torch``, so it is safe on either side (no ``lyco_core``, no
ComfyUI).

Model (Higham's standard one): every float operation in ``dtype`` is exact then rounded, relative error at most the
unit roundoff ``u = ε/2`` (``ε = torch.finfo(dtype).eps``: 2⁻²³ float32, 2⁻⁵² float64, 2⁻¹⁰ float16, 2⁻⁷
bfloat16). A sum of ``depth`` products is off by at most ``depth·u`` times the sum of their magnitudes; rounding a
stored result costs ``u`` of it. Two computations of the same value (say ours and a reference library's, or a
fused and an unfused form) each have that error, in any order of summation and on any CPU (blocking, FMA, SIMD
width only change *which* rounding happens, not the bound), so they differ by at most twice it. The helpers below
count that generously, as ``ε`` (= 2u) per side instead of ``u``, because the magnitude of the summands is only
estimated by the magnitude of the result.

Errors that a method makes by design (an SVD truncated to a chosen rank, a quantisation, an fp16 weight) are not
rounding; those assertions keep their own bounds and say so ("error of the method, not rounding").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

FLOAT32 = torch.float32
FLOAT64 = torch.float64


def eps(dtype: torch.dtype = FLOAT32) -> float:
    """``ε = torch.finfo(dtype).eps``, the distance from 1 to the next representable number."""
    return float(torch.finfo(dtype).eps)


def agreement(depth: int = 1, dtype: torch.dtype = FLOAT32, *, ratio: float = 1.0, steps: int = 1) -> float:
    """Bound on ``|a − b| / scale`` for two ``dtype`` computations ``a``, ``b`` of the same value::

        2ε·(ratio + steps·depth)

    Each side rounds its stored result once (``≤ ε·|result|``, and ``ratio = max|result| / scale`` brings that to
    the scale the error is measured against) and runs ``steps`` chained operations, each a sum of ``depth``
    products (``≤ depth·ε`` of the scale each: ``depth`` is the reduction length — a rank, a fan-in, a block
    size; ``steps`` the number of operations in the chain — Neumann terms, BOFT stages, the factors of a
    product). For ``ratio = steps = depth = 1`` in float32 this is 4.8e-7.
    """
    return 2.0 * eps(dtype) * (ratio + steps * depth)


def _worst_ratio(ref: torch.Tensor, base: torch.Tensor | None) -> float:
    ref = ref.detach().double()
    if base is None or not ref.numel():
        return 1.0
    denom = float((ref - base.detach().double()).abs().max())
    return float(ref.abs().max()) / denom if denom else 0.0  # an unchanged key: held to equality by the caller


def delta_agreement(
    ref: torch.Tensor | Mapping[str, torch.Tensor],
    base: torch.Tensor | Mapping[str, torch.Tensor],
    depth: int,
    *,
    dtype: torch.dtype = FLOAT32,
    steps: int = 1,
) -> float:
    """Bound on the delta-relative error ``max|ours − ref| / max|ref − base|`` of two ``dtype`` computations of the
    same ``W' = W + ΔW``::

        2ε·(max|W'| / max|ΔW| + steps·depth)

    (``agreement`` with ``ratio = max|W'|/max|ΔW|``: rounding ``W'`` costs ``ε·|W'|``, which is large against a
    small change). ``ref``/``base`` are tensors or state dicts (then the worst over ``ref``'s keys).
    """
    if isinstance(ref, Mapping):
        return max((delta_agreement(v, base[k], depth, dtype=dtype, steps=steps) for k, v in ref.items()), default=0.0)
    return agreement(depth, dtype, ratio=_worst_ratio(ref, base), steps=steps)


def forward_agreement(depths: tuple[int, ...] | list[int], dtype: torch.dtype = FLOAT32) -> float:
    """Bound on ``max|y₁ − y₂| / max|y|`` for two ``dtype`` forwards of the same network (merged against unmerged
    weights, ours against a reference library's model), whose output passes through layers that each reduce over
    ``depths[l]`` terms (a fan-in, a norm's group)::

        2ε·(1 + Σ_l √depth_l)

    The worst case would be ``Σ depth_l``; across a whole forward the per-term roundings of independent sums add
    like a random walk, which is the probabilistic bound ``λ·√n·u`` (Higham & Mary, SIAM J. Sci. Comput. 2019)
    with λ = 4 per side here (2ε = 4u). Use ``agreement`` for a single adapter computation (a rank, a block)."""
    return 2.0 * eps(dtype) * (1 + sum(d**0.5 for d in depths))


def close(
    expected: torch.Tensor,
    depth: int = 1,
    dtype: torch.dtype = FLOAT32,
    *,
    steps: int = 1,
    scale: float | None = None,
) -> dict[str, float]:
    """``rtol``/``atol`` for ``torch.testing.assert_close(actual, expected, **close(expected, ...))``: ``rtol`` is
    ``agreement(depth, dtype, steps=steps)``, ``atol`` the same times ``scale`` (default ``max|expected|``), so
    elements near zero — where cancellation leaves only the absolute error of the sum — are held to the bound
    measured against the tensor's scale: ``|a − e| ≤ 2ε·(1 + steps·depth)·(max|e| + |e|)``."""
    tol = agreement(depth, dtype, steps=steps)
    if scale is None:
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return {"rtol": tol, "atol": tol * scale}
