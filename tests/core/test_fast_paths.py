"""The in-place patch paths (``AdapterModule.apply_``) against the straightforward formulas.

Reference: ``W + m·delta()`` for additive methods (ΔW rebuilt as written in the spec), ``apply()`` for DoRA and the
rotations, and for OFT/BOFT also a dense block-diagonal / permutation-matrix product built here. Bounds: ≤ 1e-5 of
max|ΔW| in float32, derived per case from ε and the sizes (tests/host/tolerances.py); within one rounding of the
float32 result in fp16/bf16. Temporaries: no new allocation above one
scratch chunk (≤ ¼ of the float32 weight), except one float32 working copy of an fp16 weight where rows are not
independent.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lyco_core.algorithms.base import ScaleContext
from lyco_core.algorithms.boft import BOFT, butterfly_order
from lyco_core.algorithms.inplace import (
    bf16_pieces,
    bf16_split_product,
    chunk_elements,
    fast_bf16_gemm,
    scratch,
    single_rounding_gemm,
)
from lyco_core.algorithms.loha import LoHa
from lyco_core.algorithms.lokr import LoKr
from lyco_core.algorithms.lora import LoRA
from lyco_core.algorithms.oft import DiagOFT
from lyco_core.algorithms.rotation import cayley
from tests.host.tolerances import agreement, delta_agreement

CTX = ScaleContext(file="fast-paths")
PEFT_CTX = ScaleContext(file="fast-paths", config_alpha=16.0, config_rank=8, peft=True)


def _g(*shape, scale=1.0):
    return torch.randn(*shape, generator=_g.gen) * scale


_g.gen = torch.Generator().manual_seed(7)


def _cases():
    """(id, module, weight shape). Shapes exceed one scratch chunk so that chunking really happens."""
    lin, conv = (1280, 1024), (256, 128, 3, 3)
    return [
        (
            "lora",
            LoRA(
                "m", {"lora_up.weight": _g(1280, 32), "lora_down.weight": _g(32, 1024), "alpha": torch.tensor(8.0)}, CTX
            ),
            lin,
        ),
        (
            "locon-conv",
            LoRA("m", {"lora_up.weight": _g(256, 8, 1, 1), "lora_down.weight": _g(8, 128, 3, 3)}, CTX),
            conv,
        ),
        (
            "locon-tucker",
            LoRA(
                "m",
                {
                    "lora_up.weight": _g(256, 8, 1, 1),
                    "lora_down.weight": _g(8, 128, 1, 1),
                    "lora_mid.weight": _g(8, 8, 3, 3),
                    "alpha": torch.tensor(4.0),
                },
                CTX,
            ),
            conv,
        ),
        (
            "dora-out",
            LoRA(
                "m",
                {
                    "lora_up.weight": _g(1280, 32),
                    "lora_down.weight": _g(32, 1024),
                    "dora_scale": _g(1280, 1).abs() * 20,
                },
                CTX,
            ),
            lin,
        ),
        (
            "dora-in-conv",
            LoRA(
                "m",
                {
                    "lora_up.weight": _g(256, 8, 1, 1),
                    "lora_down.weight": _g(8, 128, 3, 3),
                    "dora_scale": _g(1, 128, 1, 1).abs() * 20,
                },
                CTX,
            ),
            conv,
        ),
        (
            "peft-dora",
            LoRA(
                "m",
                {"lora_up.weight": _g(1280, 8), "lora_down.weight": _g(8, 1024), "magnitude": _g(1280).abs() * 20},
                PEFT_CTX,
            ),
            lin,
        ),
        (
            "peft-dora-conv",
            LoRA(
                "m",
                {
                    "lora_up.weight": _g(256, 8, 1, 1),
                    "lora_down.weight": _g(8, 128, 3, 3),
                    "magnitude": _g(1, 256, 1, 1).abs() * 20,
                },
                PEFT_CTX,
            ),
            conv,
        ),  # PEFT's shape
        (
            "loha",
            LoHa(
                "m",
                {
                    "hada_w1_a": _g(1280, 16),
                    "hada_w1_b": _g(16, 1024),
                    "hada_w2_a": _g(1280, 16),
                    "hada_w2_b": _g(16, 1024),
                    "alpha": torch.tensor(4.0),
                },
                CTX,
            ),
            lin,
        ),
        (
            "loha-ranks",
            LoHa(
                "m",
                {
                    "hada_w1_a": _g(1280, 16),
                    "hada_w1_b": _g(16, 1024),
                    "hada_w2_a": _g(1280, 4),
                    "hada_w2_b": _g(4, 1024),
                    "alpha": torch.tensor(4.0),
                },
                CTX,
            ),
            lin,
        ),  # unequal ranks
        (
            "loha-tucker",
            LoHa(
                "m",
                {
                    "hada_w1_a": _g(8, 256),
                    "hada_w1_b": _g(8, 128),
                    "hada_t1": _g(8, 8, 3, 3),
                    "hada_w2_a": _g(8, 256),
                    "hada_w2_b": _g(8, 128),
                    "hada_t2": _g(8, 8, 3, 3),
                },
                CTX,
            ),
            conv,
        ),
        ("lokr-full", LoKr("m", {"lokr_w1": _g(8, 8), "lokr_w2": _g(160, 128)}, CTX), lin),
        (
            "lokr-decomposed",
            LoKr(
                "m",
                {
                    "lokr_w1_a": _g(8, 4),
                    "lokr_w1_b": _g(4, 8),
                    "lokr_w2_a": _g(160, 4),
                    "lokr_w2_b": _g(4, 128),
                    "alpha": torch.tensor(2.0),
                },
                CTX,
            ),
            lin,
        ),
        (
            "lokr-tucker-conv",
            LoKr(
                "m",
                {
                    "lokr_w1": _g(8, 8),
                    "lokr_w2_a": _g(4, 32),
                    "lokr_w2_b": _g(4, 16),
                    "lokr_t2": _g(4, 4, 3, 3),
                    "alpha": torch.tensor(2.0),
                },
                CTX,
            ),
            conv,
        ),
        (
            "oft",
            DiagOFT(
                "m",
                {"oft_blocks": _g(40, 32, 32, scale=0.05), "alpha": torch.tensor(1e-3), "rescale": _g(1280, 1).abs()},
                CTX,
            ),
            lin,
        ),
        ("oft-diag", DiagOFT("m", {"oft_diag": cayley(_g(8, 32, 32, scale=0.05), plus_first=True)}, CTX), conv),
        ("boft", BOFT("m", {"oft_blocks": _g(4, 64, 20, 20, scale=0.05), "rescale": _g(1280, 1).abs()}, CTX), lin),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]

# (depth, steps) per case for the float32 rounding bound 2ε·(max|W'|/max|ΔW| + steps·depth): depth the longest
# reduction (rank, Kronecker factor, OFT/BOFT block), steps the chained operations (B·A 1; a Tucker core +1; LoHa's
# two products 2; LoKr's w = a·b before the Kronecker product +1; Cayley + R·W 2, BOFT's 4 stages +3). DoRA's norm
# reduces over the fan-in n (1024, 128·3·3 = 1152) — counted as √n ≤ 34 (the probabilistic bound λ·√n·u of
# forward_agreement): the worst case n would give 2ε·2300 ≈ 2.7e-4, 27 times the former fixed 1e-5, for a norm both
# paths compute the same way (measured: ≤ 2ε·1 beyond the ratio).
DEPTH_STEPS = {
    "lora": (32, 1),
    "locon-conv": (8, 1),
    "locon-tucker": (8, 2),
    "dora-out": (32, 2),
    "dora-in-conv": (34, 2),
    "peft-dora": (32, 2),
    "peft-dora-conv": (34, 2),
    "loha": (16, 2),
    "loha-ranks": (16, 2),
    "loha-tucker": (8, 4),
    "lokr-full": (1, 1),
    "lokr-decomposed": (4, 2),
    "lokr-tucker-conv": (4, 3),
    "oft": (32, 2),
    "oft-diag": (32, 2),
    "boft": (20, 5),
}


def _delta_tol(name: str) -> float:
    """The float32 rounding of ΔW alone, as a fraction of max|ΔW|: ``2ε·steps·depth``."""
    depth, steps = DEPTH_STEPS[name]
    return agreement(depth, ratio=0.0, steps=steps)


def _tol(name: str, reference: torch.Tensor, weight: torch.Tensor) -> float:
    """``max|ours − reference| / max|reference − weight|`` bound: ``delta_agreement`` with the case's sizes."""
    depth, steps = DEPTH_STEPS[name]
    return delta_agreement(reference, weight, depth, steps=steps)


def _reference(module, weight: torch.Tensor, strength: float) -> torch.Tensor:
    if module.additive and not module.dora:
        return weight + strength * module.delta(weight.shape, weight.device, weight.dtype)
    return module.apply(weight, strength)


@pytest.mark.parametrize("strength", [1.0, 0.7, -0.4])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp32_in_place_matches_formula(case, strength):
    name, module, shape = case
    weight = _g(*shape)
    reference = _reference(module, weight, strength)
    work = weight.clone()
    out = module.apply_(work, strength)
    assert out is work and out.dtype == torch.float32
    error = (out - reference).abs().max() / (reference - weight).abs().max()
    assert error <= _tol(name, reference, weight)  # e.g. lora: 2ε·(1.7 + 32) ≈ 4e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_half_in_place_within_one_rounding(case, dtype):
    name, module, shape = case
    weight = _g(*shape).to(dtype)
    exact = _reference(module, weight.float(), 0.7)
    out = module.apply_(weight.clone(), 0.7)
    assert out.dtype == dtype
    eps = torch.finfo(dtype).eps
    # one rounding to the half dtype, plus the float32 rounding of ΔW computed before it
    bound = eps * exact.abs() + _delta_tol(name) * (exact - weight.float()).abs().max()
    assert bool(((out.float() - exact).abs() <= bound).all())


@pytest.mark.parametrize(
    "dtype,file_dtype",
    [
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float16),
        (torch.bfloat16, torch.float32),
    ],
)
@pytest.mark.parametrize(
    "shape,tucker",
    [((1280, 1024), False), ((256, 128, 3, 3), False), ((256, 128, 3, 3), True)],
    ids=["linear", "conv", "tucker"],
)
def test_half_factors_go_straight_into_a_half_weight(shape, tucker, dtype, file_dtype):
    """Factors into an fp16/bf16 weight — of its own dtype, or (bf16 weights) fp16/float32 factors and folded
    Tucker cores as exact bf16 pieces: one addmm_ into W where the backend rounds once (probed), else the float32
    chunk path; either way within one rounding, and on this CPU nothing but the pieces is allocated."""
    kernel = shape[2:]
    up = _g(shape[0], 16, *[1] * len(kernel))
    down = _g(16, shape[1], *([1] * len(kernel) if tucker else kernel), scale=0.1)
    params = {"lora_up.weight": up.to(file_dtype), "lora_down.weight": down.to(file_dtype), "alpha": torch.tensor(8.0)}
    if tucker:
        params["lora_mid.weight"] = _g(16, 16, *kernel).to(file_dtype)
    module = LoRA("m", params, CTX)
    weight = _g(*shape).to(dtype)
    exact = _reference(module, weight.float(), 0.7)
    work = weight.clone()
    with _NewStorages() as new:
        out = module.apply_(work, 0.7)
    assert out is work
    # one rounding to the half dtype, plus ΔW's float32 rounding: rank 16 (times 3 × 3 bf16 pieces when fused:
    # depth 144), up·down and a Tucker core: 2 steps → 2ε·288 ≈ 3.4e-5 of max|ΔW|
    delta_tol = agreement(len(bf16_pieces(up)) ** 2 * 16, ratio=0.0, steps=2)
    bound = torch.finfo(dtype).eps * exact.abs() + delta_tol * (exact - weight.float()).abs().max()
    assert bool(((out.float() - exact).abs() <= bound).all())
    fused = module.half_pair(weight) is not None
    assert fused == (file_dtype == dtype and not tucker or dtype == torch.bfloat16 and fast_bf16_gemm(weight.device))
    if fused:  # the pieces: at most 3 × 3 bf16 copies of a rank-16 factor
        assert new.largest <= 9 * 2 * 16 * max(weight.shape[0], weight[0].numel())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_bf16_pieces_reproduce_the_product_term_for_term(dtype):
    """The bf16 pieces sum to every fp16/float32 value exactly (extremes and tiny values included), so the
    pieced product equals the factors' product in float64 up to summation order."""
    tiny = 6e-8 if dtype == torch.float16 else 1e-30
    extremes = torch.tensor([65504.0, -65504.0, tiny, -tiny, 6.1e-5, 1 / 3, -2 / 3, 0.0])
    left = torch.cat([_g(64, 24, scale=3.0), extremes.repeat(8, 1).t().reshape(64, 1)], 1).to(dtype)
    right = torch.cat([_g(24, 48, scale=0.01), extremes.repeat(6).reshape(1, 48)], 0).to(dtype)
    for x in (left, right):
        pieces = bf16_pieces(x)
        assert len(pieces) == (2 if dtype == torch.float16 else 3)
        assert all(p.dtype == torch.bfloat16 for p in pieces)
        assert torch.equal(sum(p.double() for p in pieces), x.double())
    pieced_left, pieced_right = bf16_split_product(left, right)
    assert pieced_left.shape[1] == pieced_right.shape[0] == len(bf16_pieces(left)) ** 2 * left.shape[1]
    exact = left.double() @ right.double()
    # two float64 sums of the same exact products, in another order: each within depth·u of Σ|products|
    bound = agreement(pieced_left.shape[1], torch.float64) * (left.double().abs() @ right.double().abs())
    assert bool(((pieced_left.double() @ pieced_right.double() - exact).abs() <= bound).all())


def test_half_gemm_needs_matching_dtypes():
    weight = torch.zeros(8, 8, dtype=torch.float16)
    assert not single_rounding_gemm(weight, torch.zeros(8, 2), torch.zeros(2, 8, dtype=torch.float16))
    assert not single_rounding_gemm(weight.float(), torch.zeros(8, 2), torch.zeros(2, 8))
    assert not single_rounding_gemm(
        torch.zeros(8, 16, dtype=torch.float16)[:, ::2],
        torch.zeros(8, 2, dtype=torch.float16),
        torch.zeros(2, 8, dtype=torch.float16),
    )


@pytest.mark.parametrize(
    "case", [c for c in CASES if c[0] in ("lora", "loha", "lokr-full", "oft", "boft")], ids=lambda c: c[0]
)
def test_strided_and_sliced_weights_are_written_through(case):
    name, module, shape = case
    fused = _g(shape[0] * 2, shape[1])
    expected = fused.clone()
    expected[shape[0] :] = _reference(module, fused[shape[0] :], 0.5)
    tolerance = _tol(name, expected, fused) * (expected - fused).abs().max().item()
    module.apply_(fused.narrow(0, shape[0], shape[0]), 0.5)  # a contiguous slice: updated where it lies
    assert (fused - expected).abs().max() <= tolerance
    wide = _g(shape[0], shape[1] * 2)
    expected = wide.clone()
    expected[:, 1::2] = _reference(module, wide[:, 1::2].contiguous(), 0.5)
    tolerance = _tol(name, expected, wide) * (expected - wide).abs().max().item()
    module.apply_(wide[:, 1::2], 0.5)  # strided: one working copy, written back
    assert (wide - expected).abs().max() <= tolerance


def _dense_oft(blocks_r: torch.Tensor, weight: torch.Tensor, rescale: torch.Tensor) -> torch.Tensor:
    return (torch.block_diag(*blocks_r).t() @ weight.reshape(weight.shape[0], -1)).reshape(weight.shape) * rescale


def test_oft_matches_dense_block_diagonal_product():
    _, module, shape = CASES[IDS.index("oft")]
    weight = _g(*shape)
    rotation = module.rotation(weight)
    interpolated = 0.7 * rotation + 0.3 * torch.eye(rotation.shape[-1])
    dense = _dense_oft(interpolated, weight, module.params["rescale"])
    out = module.apply_(weight.clone(), 0.7)
    assert (out - dense).abs().max() / (dense - weight).abs().max() <= _tol("oft", dense, weight)


def test_boft_matches_dense_butterfly_product():
    _, module, shape = CASES[IDS.index("boft")]
    weight = _g(*shape)
    rotations = module.rotation(weight)
    stages, _, bs, _ = rotations.shape
    x = weight.clone()
    for stage in range(stages):
        permutation = torch.eye(shape[0])[butterfly_order(shape[0], (2**stage) * bs // 2, "cpu")]
        stage_r = 0.7 * rotations[stage] + 0.3 * torch.eye(bs)
        x = permutation.t() @ torch.block_diag(*stage_r) @ permutation @ x
    dense = x * module.params["rescale"]
    out = module.apply_(weight.clone(), 0.7)
    assert (out - dense).abs().max() / (dense - weight).abs().max() <= _tol("boft", dense, weight)


@pytest.mark.parametrize(
    "module",
    [
        DiagOFT("m", {"oft_blocks": _g(40, 32, 32, scale=0.05)}, CTX),
        BOFT("m", {"oft_blocks": _g(4, 64, 20, 20, scale=0.05)}, CTX),
    ],
    ids=["oft", "boft"],
)
def test_rotation_is_solved_once_per_dtype(module, monkeypatch):
    solves = []
    original = module.rotation
    monkeypatch.setattr(module, "rotation", lambda weight: solves.append(weight.dtype) or original(weight))
    weight = _g(1280, 64)
    for strength in (0.3, 0.3, 0.4, -0.2, 1.0):  # a strength change only re-interpolates the cached rotation
        module.apply_(weight.clone(), strength)
        module.apply_(weight.half(), strength)  # fp16 weights compute in float32 too: same rotation
    module.apply_(weight.double(), 0.3)
    assert solves == [torch.float32, torch.float64]


def test_cpu_scratch_is_reused_across_calls():
    cpu = torch.device("cpu")
    first = scratch("test", 1000, torch.float32, cpu)
    assert scratch("test", 500, torch.float32, cpu).data_ptr() == first.data_ptr()
    assert scratch("test", 500, torch.float64, cpu).data_ptr() != first.data_ptr()
    huge = chunk_elements(cpu) + 1  # never kept: allocated per call
    one, other = (scratch("test", huge, torch.float32, cpu) for _ in range(2))
    assert one.data_ptr() != other.data_ptr()


class _NewStorages(TorchDispatchMode):
    """Largest storage (bytes) any op creates that none of its inputs already owned."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owned = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in owned:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_temporaries_stay_below_one_float32_weight(case):
    _, module, shape = case
    weight = _g(*shape)
    with _NewStorages() as fp32:
        module.apply_(weight, 0.7)
    chunk = chunk_elements(weight.device)
    assert fp32.largest <= min(chunk * 4, weight.numel())  # scratch chunks, each ≤ ¼ of the weight
    half = weight.half()
    with _NewStorages() as fp16:
        module.apply_(half, 0.7)
    whole_copy = case[0] == "dora-in-conv"  # rows not independent: one float32 working copy
    assert fp16.largest <= (weight.numel() if whole_copy else min(chunk, weight.numel())) * 4
