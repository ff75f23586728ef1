"""OneTrainer's OFT files: kohya module names with PEFT's packed ``oft_R.weight`` (PEFT ≥ 0.18's Cayley–Neumann
series, 5 terms), and for its *scaled OFT* a true ``oft_R.scaled_oft`` flag beside it, meaning the stored rows are
``2√(bs−1)`` times the ones the rotation uses (Nerogar/OneTrainer modules/module/oft_utils.py,
``OFTRotationModule.forward``: ``weight / (2·sqrt(block_size − 1))`` before the Cayley transform).

The oracle is peft itself: an ``OFTConfig`` layer given the rows OneTrainer's forward uses, merged. The flag is read
(never left as an unknown key), and writing the adapter as a PEFT folder stores the rows PEFT needs.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

import lyco_core
from lyco_core.convert.layout_convert import convert_layout
from tests.host.tolerances import delta_agreement

IN, OUT, BLOCK = 16, 8, 4
NAME = "lora_unet_blocks_0_proj"


def _peft_merged(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    from peft import OFTConfig, get_peft_model

    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(IN, OUT, bias=False))
    model.proj.weight.data.copy_(weight)
    peft_model = get_peft_model(model, OFTConfig(oft_block_size=BLOCK, r=0, target_modules=["proj"]))
    with torch.no_grad():
        peft_model.base_model.model.proj.oft_R["default"].weight.copy_(rows)
    return peft_model.merge_and_unload().proj.weight.detach()


@pytest.mark.parametrize("scaled", [True, False])
def test_onetrainer_oft_matches_peft(tmp_path, scaled):
    gen = torch.Generator().manual_seed(91)
    weight = torch.randn(OUT, IN, generator=gen)
    stored = 0.3 * torch.randn(IN // BLOCK, BLOCK * (BLOCK - 1) // 2, generator=gen)
    used = stored / (2 * math.sqrt(BLOCK - 1)) if scaled else stored
    tensors = {f"{NAME}.oft_R.weight": stored}
    if scaled:
        tensors[f"{NAME}.oft_R.scaled_oft"] = torch.tensor(True)
    path = tmp_path / "onetrainer_oft.safetensors"
    save_file(tensors, str(path))

    adapter = lyco_core.load_adapter(path)
    assert adapter.unknown_keys == [] and adapter.summary()["per_module"][NAME]["scaled"] is scaled
    got = adapter.patch({"blocks.0.proj.weight": weight.clone()}, 1.0)["blocks.0.proj.weight"]
    ref = _peft_merged(weight, used).double()
    error = float((got.double() - ref).abs().max() / (ref - weight.double()).abs().max())
    assert error <= delta_agreement(ref, weight, BLOCK, steps=6), error

    written = convert_layout(adapter, "peft", model_keys=["blocks.0.proj.weight"])
    rows = next(v for k, v in written.tensors.items() if k.endswith("oft_R.weight"))
    assert torch.equal(rows, used)  # PEFT has no scaled form: the folder holds the rows it rotates with


@pytest.mark.parametrize("flag", [torch.tensor([True, False]), torch.tensor(float("nan")), torch.zeros(0)])
def test_a_malformed_scaled_oft_flag_is_an_adapter_error(tmp_path, flag):
    stored = torch.zeros(IN // BLOCK, BLOCK * (BLOCK - 1) // 2)
    path = tmp_path / "bad_flag.safetensors"
    save_file({f"{NAME}.oft_R.weight": stored, f"{NAME}.oft_R.scaled_oft": flag}, str(path))
    with pytest.raises(lyco_core.AdapterError, match="scaled_oft"):
        lyco_core.load_adapter(path)
