"""A new method is one class in one file: registered the way a file under ``lyco_core/algorithms/`` registers it
(``@register``), with nothing edited elsewhere, it is detected, read from every layout's names, matched, applied with
its strength law, summarised, labelled, and refused with its own reason where a writer has no form for it.

The toy method here, a per-row gain difference ``ΔW = g·1ᵀ`` (``toy_gain (out,)``), stands for any new additive
method; the registry is restored afterwards.
"""

from __future__ import annotations

import pytest
import torch

import lyco_core
from lyco_core.algorithms import ALGORITHMS, method_labels
from lyco_core.algorithms.base import AdditiveModule
from lyco_core.algorithms.registry import register
from lyco_core.convert.layout_convert import convert_layout


@pytest.fixture
def toy_method():
    before = list(ALGORITHMS)

    @register
    class RowGain(AdditiveModule):
        """``ΔW = g·1ᵀ`` (every column of row i moves by ``g_i``)."""

        detect_order = 997
        algo = "toy"
        label = "Toy gain"
        suffixes = ("toy_gain",)
        peft_refusal = "PEFT has no row-gain method"

        @classmethod
        def claims(cls, params):
            return "toy_gain" in params

        def delta(self, weight_shape, device, dtype):
            gain = self.tensor("toy_gain", torch.empty(0, device=device, dtype=dtype))
            return gain.reshape(-1, *[1] * (len(weight_shape) - 1)).expand(weight_shape).clone()

    yield RowGain
    ALGORITHMS[:] = before


def test_a_method_added_as_one_class_loads_patches_and_refuses_on_its_own(toy_method):
    gain = torch.tensor([1.0, -2.0, 0.5])
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    for names in ({"lora_unet_blocks_0_fc.toy_gain": gain}, {"diffusion_model.blocks.0.fc.toy_gain": gain}):
        adapter = lyco_core.adapter_from_tensors(names)
        assert adapter.method_counts() == {"toy": 1} and not adapter.unknown_keys
        got = adapter.patch({"diffusion_model.blocks.0.fc.weight": weight}, 0.5)["diffusion_model.blocks.0.fc.weight"]
        assert torch.equal(got, weight + 0.5 * gain.reshape(-1, 1))
    assert method_labels()["toy"] == "Toy gain"
    with pytest.raises(lyco_core.AdapterError, match="PEFT has no row-gain method"):
        convert_layout(adapter, "peft", model_keys=["diffusion_model.blocks.0.fc.weight"])
