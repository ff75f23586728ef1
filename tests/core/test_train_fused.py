"""The fused LoHa/LoKr weight updates (train/methods/fused.py): in float64 their values and hand-written gradients
equal autograd's through the plain formulas — for the bare functions (and torch's numerical gradcheck), and for
every LoHa/LoKr trainable variant against the algorithm's own ΔW (rank dropout included)."""

from __future__ import annotations

import pytest
import torch

from lyco_core.train import LoHaConfig, LoKrConfig, wrap
from lyco_core.train.methods.base import row_mask
from lyco_core.train.methods.fused import hadamard_update, kronecker_update
from tests.host.tolerances import close
from .train_fixtures import one_thread, CASES, randomize, tiny_model  # noqa: F401  (autouse fixture)


def _leaves(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]


def _value_and_grads(fn, leaves, seed=1):
    """``fn(*leaves)`` and the gradients of a random projection of it."""
    out = fn(*leaves)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad((out * probe).sum(), leaves)
    return out.detach(), grads


def _assert_same(fused, plain, leaves):
    (out, grads), (expected, expected_grads) = (_value_and_grads(f, leaves) for f in (fused, plain))
    # float64 against float64: the reductions are ≤ 10 long (a rank, a row of 10, the probe's sum over rows),
    # three chained products (factor products, their Hadamard/Kronecker product, the chain rule)
    torch.testing.assert_close(out, expected, **close(expected, depth=10, dtype=torch.float64, steps=3))
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **close(expected_grad, depth=10, dtype=torch.float64, steps=3))


def test_hadamard_update_matches_autograd_of_the_formula():
    leaves = _leaves((6, 10), (6, 3), (3, 10), (6, 3), (3, 10))
    _assert_same(
        lambda w, l1, r1, l2, r2: hadamard_update(w, l1, r1, l2, r2, 0.7),
        lambda w, l1, r1, l2, r2: w + 0.7 * (l1 @ r1) * (l2 @ r2),
        leaves,
    )
    assert torch.autograd.gradcheck(lambda *t: hadamard_update(*t, 0.7), leaves)


def test_kronecker_update_matches_autograd_of_the_formula():
    leaves = _leaves((12, 3, 5), (4, 3), (3, 5))  # a conv weight: 4·3 rows of 3·5 values
    _assert_same(
        lambda w, first, second: kronecker_update(w, first, second, 1.5),
        lambda w, first, second: w + 1.5 * torch.kron(first, second).reshape(w.shape),
        leaves,
    )
    assert torch.autograd.gradcheck(lambda *t: kronecker_update(*t, 1.5), leaves)


def test_only_the_needed_gradients_are_formed():
    weight = torch.randn(6, 10, dtype=torch.float64)  # a frozen base weight: no gradient for it
    left1, right1, left2, right2 = _leaves((6, 3), (3, 10), (6, 3), (3, 10))
    right2.requires_grad_(False)
    hadamard_update(weight, left1, right1, left2, right2, 2.0).sum().backward()
    assert weight.grad is None and right2.grad is None and left2.grad is not None


FUSED_CASES = [c for c in CASES if c[0].startswith(("loha", "lokr"))] + [
    ("loha-rank-dropout", LoHaConfig(r=4, alpha=2, rank_dropout=0.5, target_modules=["fc1", "conv3"])),
    (
        "lokr-rank-dropout",
        LoKrConfig(r=4, alpha=2, rank_dropout=0.5, rank_dropout_scale=True, target_modules=["fc1", "conv3"]),
    ),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_trainables_match_autograd_through_the_algorithm(case):
    """W' of each trainable (train mode) and its gradients in every factor and in W, against the algorithm's
    ``W + ΔW`` (``delta``, rows masked as rank dropout masks them) under plain autograd."""
    _, config = case
    tuner = wrap(tiny_model().double(), config)
    randomize(tuner.adapter(), std=0.3)
    for name, trainable in tuner.adapter().modules.items():
        trainable.train()
        weight = tuner.adapter().layers[name].weight.detach().clone().requires_grad_()
        leaves = [weight, *trainable.parameters()]

        def fused(weight, *_):
            torch.manual_seed(5)
            return trainable(weight)

        def plain(weight, *_):
            torch.manual_seed(5)
            module = trainable.inference()
            delta = module.delta(weight.shape, weight.device, weight.dtype)
            if trainable.rank_dropout:
                delta = delta * row_mask(delta.shape[0], trainable.rank_dropout, trainable.rank_dropout_rescales, delta)
            return weight + delta

        _assert_same(fused, plain, leaves)
