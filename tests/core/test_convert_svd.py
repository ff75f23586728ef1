"""The math under to-LoRA, resize and extract: truncated SVD under each rank policy (checked against
torch.linalg.svd's optimal tail), the randomized path, the LoRA fast path on factors, Tucker, the nearest
Kronecker product and LyCORIS' / PEFT's factorization rules."""

from __future__ import annotations

import math

import pytest
import torch

from lyco_core.algorithms.factorization import factorization
from lyco_core.convert.kron import nearest_kronecker
from lyco_core.convert.svd import RankPolicy, factorize, refactor
from lyco_core.errors import AdapterError

from tests.host.tolerances import agreement

from .convert_fixtures import low_rank


def optimal_tail(delta: torch.Tensor, rank: int) -> float:
    """‖ΔW − ΔW_r‖_F / ‖ΔW‖_F of the best rank-r approximation (Eckart–Young), from torch.linalg.svd in float64."""
    s = torch.linalg.svdvals(delta.reshape(delta.shape[0], -1).double())
    return math.sqrt(float(s[rank:].square().sum() / s.square().sum()))


def rel(low) -> float:
    return math.sqrt(low.err_sq / low.ref_sq)


@pytest.mark.parametrize("kernel", [(), (3, 3)], ids=["linear", "conv3x3"])
def test_known_rank_is_recovered_exactly(kernel):
    delta = low_rank(40, 24, 5, seed=1, decay=0.8, kernel=kernel)
    for policy in (RankPolicy(rank=5, exact=True), RankPolicy(energy=0.999999), RankPolicy(ratio=1e-3)):
        low = factorize(delta, policy)
        # exact rank 5: only rounding, an SVD over the smaller side (24, or 40 for the conv) and U·S·Vᵀ (2 steps)
        bound = agreement(min(delta.shape[0], delta[0].numel()), steps=2)
        assert low.rank == 5 and rel(low) <= bound, (policy, low.rank, rel(low), bound)
        assert low.up.shape == (40, 5, *[1] * len(kernel)) and low.down.shape == (5, 24, *kernel)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_lower_rank_error_is_the_svd_tail(rank):
    delta = torch.randn(48, 36, generator=torch.Generator().manual_seed(2))
    low = factorize(delta, RankPolicy(rank=rank, exact=True))
    assert rel(low) == pytest.approx(optimal_tail(delta, rank), rel=1e-4)  # error of the method, not rounding
    rebuilt = low.up @ low.down
    # error of the method, not rounding
    assert float((delta - rebuilt).norm() / delta.norm()) == pytest.approx(rel(low), rel=1e-4)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_energy_policy_keeps_at_least_the_requested_energy(energy):
    delta = low_rank(64, 48, 40, seed=3, decay=0.9)
    low = factorize(delta, RankPolicy(energy=energy))
    assert 1 - low.err_sq / low.ref_sq >= energy - 1e-6  # error of the method, not rounding
    smaller = factorize(delta, RankPolicy(rank=low.rank - 1, exact=True)) if low.rank > 1 else None
    assert smaller is None or 1 - smaller.err_sq / smaller.ref_sq < energy  # and it is the smallest such rank


def test_energy_and_ratio_on_the_randomized_path():
    delta = low_rank(240, 200, 60, seed=15, decay=0.9)  # the rank sought (< 50) takes the randomized path
    spectrum = torch.linalg.svdvals(delta.double())
    optimal = int(((spectrum.square().cumsum(0) / spectrum.square().sum()) < 0.95).sum()) + 1
    low = factorize(delta, RankPolicy(energy=0.95))
    # error of the method, not rounding
    assert 1 - low.err_sq / low.ref_sq >= 0.95 - 1e-6 and optimal <= low.rank <= optimal + 1
    assert factorize(delta, RankPolicy(ratio=0.5)).rank == int((spectrum >= 0.5 * spectrum[0]).sum())
    assert factorize(delta, RankPolicy(energy=0.999999, max_rank=20)).rank == 20


def test_ratio_policy_and_caps():
    delta = low_rank(30, 30, 12, seed=4, decay=0.5)
    assert factorize(delta, RankPolicy(ratio=0.1)).rank == 4  # 0.5^3 = 0.125 ≥ 0.1 > 0.5^4
    assert factorize(delta, RankPolicy(energy=1.0, max_rank=3)).rank == 3
    assert factorize(delta, RankPolicy(rank=100)).rank == 30
    conv = low_rank(16, 8, 6, seed=5, kernel=(3, 3))
    assert factorize(conv, RankPolicy(rank=2, conv_rank=5)).rank == 5


@pytest.mark.parametrize("bad", [dict(), dict(rank=2, energy=0.9), dict(rank=0), dict(energy=1.5), dict(ratio=0)])
def test_policy_validation(bad):
    with pytest.raises(AdapterError):
        RankPolicy(**bad)


def test_randomized_svd_reaches_the_optimal_tail():
    # rank ≤ min(dims)/4 takes the randomized path; a slowly decaying spectrum is its hard case
    delta = low_rank(240, 200, 200, seed=6, decay=0.96)
    for rank in (8, 24, 50):
        fast = factorize(delta, RankPolicy(rank=rank))
        assert fast.rank == rank
        assert rel(fast) <= optimal_tail(delta, rank) * (1 + 1e-3) + 1e-6, rank  # error of the method, not rounding
    again = factorize(delta, RankPolicy(rank=8))
    assert torch.equal(again.up, factorize(delta, RankPolicy(rank=8)).up)  # seeded: reproducible files


def test_lora_fast_path_equals_svd_of_the_formed_delta():
    gen = torch.Generator().manual_seed(7)
    up, down = torch.randn(50, 12, generator=gen), torch.randn(12, 20, 3, 3, generator=gen)
    delta = (0.75 * up @ down.reshape(12, -1)).reshape(50, 20, 3, 3)
    for rank in (3, 12):
        fast = refactor(up, down, 0.75, RankPolicy(rank=rank), delta.shape)
        assert fast.down.shape == (rank, 20, 3, 3) and fast.up.shape == (50, rank, 1, 1)
        # error of the method, not rounding
        assert rel(fast) == pytest.approx(optimal_tail(delta, rank), rel=1e-4, abs=1e-6)
        rebuilt = fast.up.reshape(50, rank) @ fast.down.reshape(rank, -1)
        truth = math.sqrt(float((delta.reshape(50, -1) - rebuilt).square().sum() / delta.square().sum()))
        assert truth == pytest.approx(rel(fast), rel=1e-3, abs=1e-6)  # error of the method, not rounding


def test_tucker_recovers_a_multilinear_low_rank_conv():
    gen = torch.Generator().manual_seed(8)
    core = torch.randn(4, 4, 3, 3, generator=gen)
    left, right = torch.randn(4, 24, generator=gen), torch.randn(4, 16, generator=gen)
    delta = torch.einsum("pqhw,po,qi->oihw", core, left, right)
    low = factorize(delta, RankPolicy(rank=4, tucker=True))
    # exact multilinear rank 4: rounding of the mode SVDs (unfoldings 24×144, 16×216: depth ≤ 24), then the core
    # contracted with both factors and back (3 steps)
    assert low.mid is not None and low.mid.shape == (4, 4, 3, 3) and rel(low) <= agreement(24, steps=3)
    lossy = factorize(delta, RankPolicy(rank=2, tucker=True))
    assert 0 < rel(lossy) < 1


def test_nearest_kronecker_recovers_an_exact_kronecker_product():
    gen = torch.Generator().manual_seed(9)
    w1, w2 = torch.randn(6, 4, generator=gen), torch.randn(8, 8 * 9, generator=gen)
    delta = torch.kron(w1, w2)
    a, c = nearest_kronecker(delta, 6, 4)
    assert a.shape == (6, 4) and c.shape == (8, 72)
    # rank-1 SVD of the rearranged 24×576 ΔW (depth 24), then the Kronecker product: 2 steps
    assert float((torch.kron(a, c) - delta).norm() / delta.norm()) <= agreement(24, steps=2)


def test_nearest_kronecker_is_optimal_for_a_generic_matrix():
    gen = torch.Generator().manual_seed(10)
    delta = torch.randn(12, 20, generator=gen)
    a, c = nearest_kronecker(delta, 3, 4)
    err = float((torch.kron(a, c) - delta).norm())
    rearranged = delta.reshape(3, 4, 4, 5).permute(0, 2, 1, 3).reshape(12, 20)
    s = torch.linalg.svdvals(rearranged.double())
    assert err == pytest.approx(math.sqrt(float(s[1:].square().sum())), rel=1e-4)  # error of the method, not rounding


def test_factorization_matches_lycoris_and_peft():
    lycoris_general = pytest.importorskip("lycoris.functional.general")
    peft_lokr = pytest.importorskip("peft.tuners.lokr.layer")
    for dim in list(range(1, 130)) + [320, 360, 640, 768, 1280, 2048, 5120]:
        for factor in (-1, 2, 4, 8, 16, 64):
            assert factorization(dim, factor) == tuple(lycoris_general.factorization(dim, factor)), (dim, factor)
            assert factorization(dim, factor, sort_divisor=False) == tuple(peft_lokr.factorization(dim, factor))
