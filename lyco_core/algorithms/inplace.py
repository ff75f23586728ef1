"""Building blocks of the in-place patch paths (``AdapterModule.apply_``): working tensors and bounded chunks.

The in-place paths keep the math in the compute dtype (float32, or float64 for float64 weights) and write the
result once. A weight that already is a contiguous compute-dtype tensor (what ComfyUI hands an adapter on a full
load) is updated where it lies. Any other weight (fp16/bf16 in ComfyUI's low-VRAM path, a strided slice of a fused
weight) is converted in row chunks through one reused buffer and written back chunk by chunk with a single rounding
(``row_chunks``) — or, for methods whose rows are not independent (BOFT, DoRA on the input axis), through one
compute-dtype working copy (``working_tensor``). Scratch space comes in chunks of at most ``chunk_elements``
values: on CPU ``THREAD_CHUNK_ELEMENTS`` per torch thread (each thread's share of a chunk and of its two or three
scratch companions stays in its own L2 cache; 2^17 was the best of 2^15…2^20 measured for LoRA, LoHa and OFT),
``DEVICE_CHUNK_ELEMENTS`` elsewhere. CPU scratch buffers are kept and reused across calls (``scratch``).
A product of fp16/bf16 factors into a weight of their dtype needs no conversion at all where the backend's GEMM
accumulates in float32 and rounds once (``single_rounding_gemm``): same result, no scratch; fp16 or float32
factors into a bf16 weight go the same way as exact bf16 pieces (``half_gemm_factors``).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator

import torch

THREAD_CHUNK_ELEMENTS = 1 << 17  # 512 KiB in float32
DEVICE_CHUNK_ELEMENTS = 1 << 24  # GPUs: chunks only bound memory (64 MiB in float32); launches, not caches, cost


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """float64 stays float64, everything else computes in float32."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def working_tensor(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` itself when it is a contiguous compute-dtype tensor, else one contiguous compute-dtype copy."""
    dtype = compute_dtype(weight)
    if weight.dtype == dtype and weight.is_contiguous():
        return weight
    return weight.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def chunk_elements(device: torch.device) -> int:
    """The most values one scratch chunk holds on ``device``."""
    return THREAD_CHUNK_ELEMENTS * torch.get_num_threads() if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


def span_length(total: int, unit: int, device: torch.device) -> int:
    """How many items of ``unit`` values each fit one chunk on ``device``, and at most a quarter of all
    ``total·unit`` values (so even on small weights a few scratch chunks stay below one weight); at least one."""
    budget = min(chunk_elements(device), total * unit // 4)
    return min(total, max(1, budget // max(unit, 1)))


def spans(total: int, unit: int, device: torch.device) -> Iterator[slice]:
    """Consecutive slices of ``range(total)`` of ``span_length`` items each (the last may be shorter)."""
    return steps(total, span_length(total, unit, device))


def steps(total: int, step: int) -> Iterator[slice]:
    """Consecutive slices of ``range(total)`` of ``step`` items each (the last may be shorter)."""
    for start in range(0, total, step):
        yield slice(start, min(start + step, total))


_POOL = threading.local()


def scratch(name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat scratch tensor of ``numel`` values, one per ``name`` (the distinct buffers one call keeps live).

    On CPU a buffer of up to ``chunk_elements`` values is kept per thread and reused by later calls: a fresh
    allocation of that size is a new memory mapping whose pages fault in again on every call (measured: about
    0.2 ms per MiB, as much as the math of a 640×640 patch). Elsewhere a new tensor (CUDA's caching allocator
    already reuses its blocks). The pool is bounded by construction: per thread one buffer of at most
    ``chunk_elements`` values per (name, dtype) — the few names the fast paths use, a few MiB in all — freed
    with its thread.
    """
    if device.type != "cpu" or numel > chunk_elements(device):
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = _POOL.__dict__.setdefault("buffers", {})
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


def view_of(buffer: torch.Tensor, *shape: int) -> torch.Tensor:
    """The leading values of a flat scratch ``buffer`` (reused across chunks, so no allocation per chunk) as a
    contiguous tensor of ``shape``."""
    return buffer[: math.prod(shape)].view(shape)


def row_chunks(weight: torch.Tensor, unit: int = 1, split: bool = False) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, work)`` over the weight's rows in groups of ``unit``, ``work`` = ``flat(weight[rows])`` as a
    contiguous compute-dtype ``(k, cols)`` tensor that the caller updates in place.

    A contiguous compute-dtype weight is worked on where it lies: one chunk, or chunks of at most
    ``chunk_elements`` values when ``split``. Any other weight (fp16/bf16, strided) is converted chunk by chunk
    through one reused buffer, each chunk written back with one rounding once the caller is done with it.
    """
    rows = weight.shape[0]
    cols = weight[0].numel() if rows else 0
    in_place = weight.dtype == compute_dtype(weight) and weight.is_contiguous()
    if in_place and not split:
        yield slice(0, rows), weight.view(rows, cols)
        return
    length = span_length(rows // unit, unit * cols, weight.device)
    buffer = None if in_place else scratch("rows", length * unit * cols, compute_dtype(weight), weight.device)
    for groups in spans(rows // unit, unit * cols, weight.device):
        span = slice(groups.start * unit, groups.stop * unit)
        part = weight[span]
        if in_place:
            yield span, part.view(part.shape[0], cols)
            continue
        work = view_of(buffer, part.shape[0], cols)
        work.view(part.shape).copy_(part)
        yield span, work
        part.copy_(work.view(part.shape))


def half_gemm_factors(
    weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(L, R)`` for ``flat(weight).addmm_(L, R)`` with ``L @ R`` = ``left @ right`` in float32 accumulation
    and one rounding into the fp16/bf16 weight, or None where the float32 chunk path must run.

    Factors of the weight's own dtype serve as they are. Into a bf16 weight, fp16 and float32 factors (fp16
    files, Tucker-folded factors) become their exact bf16 pieces (``bf16_split_product``) where bf16 GEMMs are
    fast (``fast_bf16_gemm``). Either way only where the backend's GEMM rounds once (``single_rounding_gemm``).
    """
    if left.dtype == right.dtype == weight.dtype:
        pair = (left, right)
    elif (
        weight.dtype == torch.bfloat16
        and left.dtype in _BF16_PIECES
        and right.dtype in _BF16_PIECES
        and fast_bf16_gemm(weight.device)
    ):
        pair = bf16_split_product(left, right)
    else:
        return None
    return pair if single_rounding_gemm(weight, *pair) else None


_BF16_PIECES = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}


def bf16_pieces(x: torch.Tensor) -> list[torch.Tensor]:
    """bf16 tensors that sum to ``x`` exactly: 1 for bf16, 2 for fp16, 3 for float32.

    Each piece is the bf16 rounding of what the pieces before it left over (``p_k = bf16(x − Σ_{j<k} p_j)``,
    every difference exact in float32). The rest is a multiple of x's last bit and at most half a bf16 ulp of
    the piece before it, so each piece takes 8 more significant bits: fp16 (11 bits) needs two pieces, float32
    (24 bits) three, and the last piece holds its rest exactly (float32 values from 2⁻¹¹⁰ up; bf16 has float32's
    exponent range).
    """
    rest = x.to(torch.float32, copy=True)  # via float32: fp16 → bf16 directly is a slow scalar path on CPU
    pieces = []
    for index in range(_BF16_PIECES[x.dtype]):
        pieces.append(rest.to(torch.bfloat16))
        if index + 1 < _BF16_PIECES[x.dtype]:
            rest.sub_(pieces[-1].float())
    return pieces


def bf16_split_product(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 ``(L', R')`` with ``L' @ R'`` = ``left @ right`` term for term: ``L' = [L_i]`` and ``R' = [R_j]``
    over every pair of pieces ``(i, j)`` (``bf16_pieces``; rank r·pieces(left)·pieces(right)), so
    ``Σ_k L'[o,k]·R'[k,c] = Σ_q (Σ_i L_i)[o,q]·(Σ_j R_j)[q,c]``, and each product of two bf16 values (8 + 8
    significant bits) is exact in float32: a float32-accumulating GEMM sees the products of the float32 GEMM.
    """
    lefts, rights = bf16_pieces(left), bf16_pieces(right)
    return (
        torch.cat([piece for piece in lefts for _ in rights], dim=1),
        torch.cat([piece for _ in lefts for piece in rights], dim=0),
    )


def fast_bf16_gemm(device: torch.device) -> bool:
    """Whether bf16 GEMMs run on bf16 units here (CUDA with bf16, CPUs with AMX or AVX512-BF16): only then do
    several bf16 pieces beat one float32 product."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(
            getattr(torch.cpu, probe, lambda: False)()
            for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        )
    return False


def single_rounding_gemm(weight: torch.Tensor, *factors: torch.Tensor) -> bool:
    """Whether ``weight.addmm_(a, b)`` on these fp16/bf16 tensors may stand in for the float32 path: same dtype
    throughout, contiguous, and a backend that accumulates in float32 and rounds once.

    The backend is probed once per device type and dtype on a fixed random product (K = 256) against float64,
    with the fast-path bound ``|out − exact| ≤ eps·|exact| + 1e-5·max|ΔW|``: float32 accumulation (CPU BLAS,
    oneDNN) stays inside it, a half-precision accumulator misses it by orders of magnitude.
    """
    dtype = weight.dtype
    if dtype not in (torch.float16, torch.bfloat16) or not weight.is_contiguous():
        return False
    if any(f.dtype != dtype or f.device != weight.device for f in factors):
        return False
    return _accumulates_in_float32(weight.device.type, dtype)


@functools.cache
def _accumulates_in_float32(device_type: str, dtype: torch.dtype) -> bool:
    """The probe of ``single_rounding_gemm``, run once per device type and dtype (the answer is the hardware's)."""
    device = torch.device(device_type)
    gen = torch.Generator().manual_seed(0)
    base, left, right = (torch.randn(*shape, generator=gen) for shape in ((64, 64), (64, 256), (256, 64)))
    base, left, right = (t.to(device, dtype) for t in (base, left.mul_(0.1), right.mul_(0.1)))
    exact = base.double().addmm(left.double(), right.double(), alpha=0.7)
    out = base.clone().addmm_(left, right, alpha=0.7).double()
    bound = torch.finfo(dtype).eps * exact.abs() + 1e-5 * (exact - base.double()).abs().max()
    return bool(((out - exact).abs() <= bound).all())
