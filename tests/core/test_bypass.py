"""Bypass math (lyco_core/bypass.py): ``layer(x) + bypass_delta(x)`` equals the layer run with the merged weight
(float32: within the rounding of the merged weight's forward, 2ε·(1 + √n) of the output for a fan-in n, plus the
branch's own, 2ε·(1 + 2√n) of it — tests/host/tolerances.py), for every method
bypass accepts; the others are refused with a clear message."""

from __future__ import annotations

import pytest
import torch

from lyco_core.algorithms.base import ScaleContext
from lyco_core.algorithms.boft import BOFT
from lyco_core.algorithms.full import Full
from lyco_core.algorithms.loha import LoHa
from lyco_core.algorithms.lokr import LoKr
from lyco_core.algorithms.lora import LoRA
from lyco_core.algorithms.oft import DiagOFT
from lyco_core.bypass import check, hook_call
from lyco_core.errors import AdapterError
from tests.host.tolerances import forward_agreement

CTX = ScaleContext(file="bypass")
PEFT_CTX = ScaleContext(file="bypass", config_alpha=8.0, config_rank=4, peft=True)
GEN = torch.Generator().manual_seed(3)


def _g(*shape, scale=0.1):
    return torch.randn(*shape, generator=GEN) * scale


def _layers():
    linear = torch.nn.Linear(48, 64)
    conv = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1)
    conv1d = torch.nn.Conv1d(32, 64, 3, padding=2, dilation=2)
    return linear, conv, conv1d


LINEAR, CONV, CONV1D = _layers()
CASES = [
    (
        "lora",
        LINEAR,
        LoRA("m", {"lora_up.weight": _g(64, 4), "lora_down.weight": _g(4, 48), "alpha": torch.tensor(2.0)}, CTX),
    ),
    (
        "lora-peft-bias",
        LINEAR,
        LoRA("m", {"lora_up.weight": _g(64, 4), "lora_down.weight": _g(4, 48), "lora_up.bias": _g(64)}, PEFT_CTX),
    ),
    ("locon", CONV, LoRA("m", {"lora_up.weight": _g(64, 4, 1, 1), "lora_down.weight": _g(4, 32, 3, 3)}, CTX)),
    (
        "locon-tucker",
        CONV,
        LoRA(
            "m",
            {
                "lora_up.weight": _g(64, 4, 1, 1),
                "lora_down.weight": _g(4, 32, 1, 1),
                "lora_mid.weight": _g(4, 4, 3, 3),
                "alpha": torch.tensor(1.0),
            },
            CTX,
        ),
    ),
    ("locon-conv1d", CONV1D, LoRA("m", {"lora_up.weight": _g(64, 4, 1), "lora_down.weight": _g(4, 32, 3)}, CTX)),
    (
        "loha",
        LINEAR,
        LoHa(
            "m", {"hada_w1_a": _g(64, 4), "hada_w1_b": _g(4, 48), "hada_w2_a": _g(64, 4), "hada_w2_b": _g(4, 48)}, CTX
        ),
    ),
    (
        "loha-conv",
        CONV,
        LoHa(
            "m", {"hada_w1_a": _g(64, 4), "hada_w1_b": _g(4, 288), "hada_w2_a": _g(64, 4), "hada_w2_b": _g(4, 288)}, CTX
        ),
    ),
    (
        "lokr",
        LINEAR,
        LoKr(
            "m", {"lokr_w1": _g(4, 4), "lokr_w2_a": _g(16, 2), "lokr_w2_b": _g(2, 12), "alpha": torch.tensor(1.0)}, CTX
        ),
    ),
    (
        "lokr-conv-tucker",
        CONV,
        LoKr(
            "m",
            {
                "lokr_w1": _g(8, 4),
                "lokr_w2_a": _g(2, 8),
                "lokr_w2_b": _g(2, 8),
                "lokr_t2": _g(2, 2, 3, 3),
                "alpha": torch.tensor(2.0),
            },
            CTX,
        ),
    ),
    ("lokr-conv-flat", CONV, LoKr("m", {"lokr_w1": _g(8, 4), "lokr_w2": _g(8, 72)}, CTX)),
    ("full", CONV, Full("m", {"diff": _g(64, 32, 3, 3)}, CTX)),
]


def _run(layer, weight, bias, x):
    if isinstance(layer, torch.nn.Linear):
        return torch.nn.functional.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)


@pytest.mark.parametrize("strength", [1.0, -0.6])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bypass_matches_merged_weight(case, strength):
    _, layer, module = case
    call = check(module, layer)
    x = _g(2, 48) if isinstance(layer, torch.nn.Linear) else _g(2, 32, *([9, 9] if call.conv_dims == 2 else [11]))
    with torch.no_grad():
        merged_bias = module.bias_update(layer.bias, strength)
        merged = _run(
            layer, module.apply(layer.weight, strength), layer.bias if merged_bias is None else merged_bias, x
        )
        base = layer(x)
        bypassed = base + module.bypass_delta(x, call, strength)
    # fp32: merging rounds W + m·ΔW once (relative to W) before a forward over the fan-in n; bypass rounds the branch
    # alone, which reduces over n and then a rank / block (≤ n). n = 48 / 288 / 96: 2ε·(1 + √n) ≈ 0.9e-6 – 2.1e-6
    fan_in = layer.weight[0].numel()
    tolerance = forward_agreement((fan_in,)) * merged.abs().max()
    tolerance += forward_agreement((fan_in, fan_in)) * (merged - base).abs().max()
    assert (bypassed - merged).abs().max() <= tolerance


@pytest.mark.parametrize(
    "module",
    [
        DiagOFT("m", {"oft_blocks": _g(2, 32, 32)}, CTX),
        BOFT("m", {"oft_blocks": _g(2, 2, 32, 32)}, CTX),
        LoRA("m", {"lora_up.weight": _g(64, 4), "lora_down.weight": _g(4, 48), "dora_scale": _g(64, 1)}, CTX),
    ],
    ids=["oft", "boft", "dora"],
)
def test_weight_dependent_methods_are_refused(module):
    with pytest.raises(AdapterError, match="cannot run in bypass mode: its result depends on the base weight"):
        check(module, LINEAR)


def test_other_layers_are_refused():
    module = Full("m", {"diff": _g(64)}, CTX)
    with pytest.raises(AdapterError, match="bypass runs on Linear and Conv layers"):
        check(module, torch.nn.GroupNorm(4, 64))


def _host_geometry(layer) -> dict:
    """What a host bypass hook knows of a layer (ComfyUI 0.33's ``BypassForwardHook``): its kind and conv
    geometry, never the layer or its weight."""
    if isinstance(layer, torch.nn.Linear):
        return {}
    return {
        "conv_dims": len(layer.kernel_size),
        "kernel": tuple(layer.kernel_size),
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kw": {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups},
    }


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_host_hook_geometry_gives_the_layer_call(case):
    _, layer, module = case
    x = _g(2, 48) if isinstance(layer, torch.nn.Linear) else _g(2, layer.in_channels, *[9] * len(layer.kernel_size))
    with torch.no_grad():
        out = layer(x)
    assert hook_call(module, x, out, **_host_geometry(layer)) == check(module, layer)


def test_host_hook_refuses_what_bypass_cannot_run():
    with pytest.raises(AdapterError, match="oft cannot run in bypass mode"):
        hook_call(DiagOFT("m", {"oft_blocks": _g(2, 32, 32)}, CTX), _g(2, 48), _g(2, 64))
    grouped = torch.nn.Conv2d(32, 64, 3, groups=2)
    module = LoRA("m", {"lora_up.weight": _g(64, 4, 1, 1), "lora_down.weight": _g(4, 16, 3, 3)}, CTX)
    with pytest.raises(AdapterError, match="groups 1, not 2"):
        hook_call(module, _g(1, 32, 9, 9), grouped(_g(1, 32, 9, 9)), **_host_geometry(grouped))
    lora = CASES[0][2]  # 64 output rows: a 32-row layer (e.g. a slice of a fused weight handed whole) is refused
    with pytest.raises(AdapterError, match="lora_up has 64 output rows but the weight has 32"):
        hook_call(lora, _g(2, 48), _g(2, 32))
