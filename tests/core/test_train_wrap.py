"""wrap(): the initial delta is exactly zero, merge/unmerge/detach restore bits, the balanced conv decomposition
equals its composed weight, scaling and can_adapt."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lyco_core.train import LoKrConfig, LoraConfig, OFTConfig, wrap
from tests.host.tolerances import close, forward_agreement

from .train_fixtures import one_thread, CASES, inputs, output_tolerance, randomize, tiny_model  # noqa: F401  (autouse fixture)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_initial_delta_is_exactly_zero(case):
    _, config = case
    model = tiny_model()
    expected = model(*inputs())
    tuner = wrap(model, config)
    for name, trainable in tuner.adapter().modules.items():
        layer = tuner.adapter().layers[name]
        trainable.train()
        assert torch.equal(trainable(layer.weight), layer.weight), name
        if trainable.changes_bias():
            assert torch.equal(trainable.bias_function(layer.bias), layer.bias), name
    for a, b in zip(tuner(*inputs()), expected):
        # ΔW is exactly 0 and the rebuilt weight equal: at most one extra rounding (an added zero branch)
        torch.testing.assert_close(a, b, **close(b, depth=1))


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_merge_unmerge_detach_restore_bits(case):
    _, config = case
    model = tiny_model()
    before = _snapshot(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    tuner = wrap(model, config)
    adapter = tuner.adapter()
    randomize(adapter)
    with torch.no_grad():
        unmerged = tuner(*inputs())
        tuner.merge()
        assert all(not torch.equal(adapter.layers[n].weight, before[f"{n}.weight"]) for n in adapter.modules)
        merged = tuner(*inputs())
    for a, b in zip(merged, unmerged):
        torch.testing.assert_close(a, b, rtol=0, atol=output_tolerance(unmerged))
    tuner.unmerge()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k in before)
    tuner.merge()
    kept = {n: {k: v.clone() for k, v in t.tensors().items()} for n, t in adapter.modules.items()}
    modules = tuner.detach()
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all("forward" not in layer.__dict__ and not hasattr(layer, "lyco_adapters") for layer in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(torch.equal(modules[n].tensors()[k], v) for n, t in kept.items() for k, v in t.items())


def test_unmerge_order_is_enforced_and_two_adapters_chain():
    model = tiny_model()
    before = _snapshot(model)
    tuner = wrap(model, LoraConfig(r=4, target_modules=["fc1"]), "a")
    wrap(tuner, LoKrConfig(r=4, target_modules=["fc1"]), "b")
    randomize(tuner.adapter("a"), seed=1)
    randomize(tuner.adapter("b"), seed=2)
    x, image = inputs()
    with torch.no_grad():
        both = tuner(x, image)[0]
        weight = tuner.adapter("b").modules["fc1"](tuner.adapter("a").modules["fc1"](model.fc1.weight))
        expected = model.ln(model.fc2(torch.tanh(F.linear(x, weight, model.fc1.bias))))
    # two float32 forwards of the same network (adapter b over a in the hooks, against the chained weight)
    torch.testing.assert_close(both, expected, rtol=0, atol=output_tolerance([expected]))
    tuner.merge("a")
    tuner.merge("b")
    with pytest.raises(ValueError, match="unmerge 'b' first"):
        tuner.unmerge("a")
    tuner.unmerge("b")
    tuner.detach("a")
    tuner.detach("b")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_restores_a_foreign_forward_override():
    model = tiny_model()
    marker = model.fc1.forward
    model.fc1.forward = lambda x: marker(x) * 2
    own = model.fc1.forward
    wrap(model, LoraConfig(r=2, target_modules=["fc1"])).detach()
    assert model.fc1.forward is own


def test_balanced_conv_equals_its_composed_weight():
    torch.manual_seed(0)
    layer = nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    model = nn.Sequential(layer)
    tuner = wrap(model, LoraConfig(r=2, lora_alpha=3, conv_decomposition="balanced"))
    trainable = tuner.adapter().modules["0"]
    randomize(tuner.adapter(), std=0.3)
    x = torch.randn(2, 6, 11, 13)
    with torch.no_grad():
        separable = model(x)  # two convolutions, 1×kw then kh×1
        composed = F.conv2d(
            x, layer.weight + trainable.composed_delta(), layer.bias, layer.stride, layer.padding, layer.dilation
        )
        up, down = trainable.locon_factors()  # the saved rank-(r·kh) LoCon rebuilds the same ΔW
        locon = (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape) * trainable.scaling
    # one conv over 6·3·5 products against 1×5 then 3×1 (two reductions)
    tolerance = forward_agreement((6 * 5, 2 * 3, 6 * 3 * 5)) * float(composed.abs().max())
    torch.testing.assert_close(separable, composed, rtol=0, atol=tolerance)
    composed_delta = trainable.composed_delta()  # a rank r·kh = 6 product against the composed kernels
    torch.testing.assert_close(locon, composed_delta, **close(composed_delta, depth=6, steps=2))


def test_scaling_and_can_adapt():
    tuner = wrap(tiny_model(), LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["fc1", "conv3"]))
    assert tuner.scaling() == {"fc1": pytest.approx(8 / 2), "conv3": pytest.approx(8 / 2)}
    assert tuner.can_adapt(nn.Embedding(3, 4)) and tuner.can_adapt(nn.Conv1d(2, 2, 3))
    assert not tuner.can_adapt(nn.LayerNorm(4))
    oft = wrap(tiny_model(), OFTConfig(oft_block_size=8, target_modules=["fc1"]))
    assert oft.scaling() == {"fc1": None}
    assert not oft.can_adapt(nn.Embedding(3, 4))
    assert not oft.can_adapt(nn.Conv2d(4, 4, 3, groups=2))
