"""Training-time dropouts behave as specified: rank dropout keeps each row of ΔW with probability 1−p (rescaled by
the kept fraction where the method rescales), module dropout leaves the layer unadapted with probability p, PEFT
OFT/BOFT block dropout turns exactly ⌊p·n⌋ blocks into the identity; nothing is dropped in eval mode."""

from __future__ import annotations

import torch

from lyco_core.train import BOFTConfig, LoHaConfig, LoKrConfig, OFTConfig, wrap
from tests.host.tolerances import delta_agreement
from .train_fixtures import one_thread, randomize, tiny_model  # noqa: F401  (autouse fixture)

DRAWS = 300


def _adapter(config):
    tuner = wrap(tiny_model(), config)
    adapter = tuner.adapter()
    randomize(adapter, std=0.3)
    name = next(iter(adapter.modules))
    return adapter.modules[name], adapter.layers[name].weight


@torch.no_grad()
def _rank_dropout_draws(config):
    trainable, weight = _adapter(config)
    trainable.eval()
    full = trainable(weight) - weight
    trainable.train()
    return full, [trainable(weight) - weight for _ in range(DRAWS)], weight


def test_rank_dropout_masks_rows_and_rescales_loha():
    torch.manual_seed(0)
    full, draws, weight = _rank_dropout_draws(LoHaConfig(r=4, rank_dropout=0.3, target_modules=["fc1"]))
    # each delta is read back as W' − W: rank 4, two products (LoHa), relative to ΔW with the ratio max|W'|/max|ΔW|
    tolerance = delta_agreement(weight + full, weight, depth=4, steps=2) * float(full.abs().max())
    dropped = 0
    for delta in draws:
        zero = (delta == 0).all(dim=1)
        kept = int((~zero).sum())
        dropped += int(zero.sum())
        # each kept row is the full row divided by the kept fraction of this draw
        rescale = len(zero) / kept
        torch.testing.assert_close(delta[~zero], full[~zero] * rescale, rtol=0, atol=tolerance * rescale)
    rate = dropped / (DRAWS * full.shape[0])
    assert abs(rate - 0.3) < 0.02, rate


def test_rank_dropout_without_rescale_lokr():
    torch.manual_seed(1)
    full, draws, weight = _rank_dropout_draws(LoKrConfig(r=4, rank_dropout=0.5, target_modules=["fc1"]))
    tolerance = delta_agreement(weight + full, weight, depth=4, steps=2) * float(full.abs().max())
    rate = sum(int((d == 0).all(dim=1).sum()) for d in draws) / (DRAWS * full.shape[0])
    assert abs(rate - 0.5) < 0.02, rate
    for delta in draws[:20]:
        kept = ~(delta == 0).all(dim=1)
        torch.testing.assert_close(delta[kept], full[kept], rtol=0, atol=tolerance)


@torch.no_grad()
def test_module_dropout_skips_the_whole_adapter():
    torch.manual_seed(2)
    trainable, weight = _adapter(LoKrConfig(r=4, module_dropout=0.4, target_modules=["fc1"]))
    trainable.eval()
    adapted = trainable(weight)
    assert all(torch.equal(trainable(weight), adapted) for _ in range(20))  # eval: never dropped
    trainable.train()
    outcomes = [trainable(weight) for _ in range(DRAWS)]
    skipped = sum(torch.equal(w, weight) for w in outcomes)
    assert all(torch.equal(w, weight) or torch.equal(w, adapted) for w in outcomes)
    assert abs(skipped / DRAWS - 0.4) < 0.08, skipped / DRAWS


@torch.no_grad()
def test_peft_oft_and_boft_block_dropout_set_blocks_to_identity():
    torch.manual_seed(3)
    for config, blocks in (
        (OFTConfig(r=8, oft_block_size=0, module_dropout=0.5, target_modules=["fc1"]), 8),
        (BOFTConfig(boft_block_num=8, boft_block_size=0, boft_dropout=0.3, target_modules=["fc1"]), 8),
    ):
        trainable, weight = _adapter(config)
        if hasattr(trainable, "boft_s"):
            trainable.boft_s.fill_(1.0)  # the row scale would touch every column
        trainable.train()
        expected = int(0.5 * blocks) if isinstance(config, OFTConfig) else int(0.3 * blocks)
        for _ in range(20):
            new = trainable(weight)
            columns = new.reshape(new.shape[0], blocks, -1) - weight.reshape(weight.shape[0], blocks, -1)
            untouched = int((columns.abs().amax(dim=(0, 2)) == 0).sum())
            assert untouched == expected


@torch.no_grad()
def test_lycoris_oft_module_dropout_is_whole_skip():
    torch.manual_seed(4)
    trainable, weight = _adapter(
        OFTConfig(oft_block_size=8, variant="lycoris", module_dropout=0.5, target_modules=["fc1"])
    )
    trainable.train()
    skipped = sum(torch.equal(trainable(weight), weight) for _ in range(DRAWS))
    assert abs(skipped / DRAWS - 0.5) < 0.08
