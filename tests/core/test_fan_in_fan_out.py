"""PEFT ``fan_in_fan_out``: transformers' Conv1D layers (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``) store their weight
as ``(in, out)``; PEFT merges ``transpose(ΔW)`` into them. Folders written by peft on a tiny GPT-2 must patch its
state dict as PEFT's own ``merge_and_unload`` does — the non-square ``c_attn`` (once refused) and the square
``c_proj`` (once silently untransposed) alike — and writers without such a flag refuse these modules.
"""

from __future__ import annotations

import pytest
import torch

import lyco_core
from lyco_core import AdapterError
from tests.host.tolerances import delta_agreement

TARGETS = ["c_attn", "c_proj", "c_fc"]


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(41)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=8, vocab_size=32)
    return GPT2LMHeadModel(config).eval()


def _peft_folder(tmp_path, kind: str):
    from peft import IA3Config, LoraConfig, get_peft_model

    model = _gpt2()
    with torch.no_grad():  # GPT-2 starts with zero biases, which would hide a wrong bias update
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if kind == "ia3":
        config = IA3Config(target_modules=TARGETS, feedforward_modules=["c_fc"], fan_in_fan_out=True)
    else:
        config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, fan_in_fan_out=True, use_dora=kind == "dora")
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "ia3_" in name:
                param.copy_((1 if "ia3_" in name else 0) + 0.2 * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(str(tmp_path / kind))
    merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return tmp_path / kind, base, merged


@pytest.mark.parametrize("kind", ["lora", "dora", "ia3"])
def test_fan_in_fan_out_folders_patch_as_peft_merges(tmp_path, kind):
    folder, base, merged = _peft_folder(tmp_path, kind)
    adapter = lyco_core.load_adapter(folder)
    report = adapter.match(base)
    # per block: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    assert not report.unmatched and len(report.matched) == 8
    assert all("(transposed)" in target for target in report.matched.values())
    patched = adapter.patch(base)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert set(patched) == changed
    for key, value in patched.items():
        bound = delta_agreement(merged[key], base[key], depth=16, steps=2)
        error = float((value - merged[key]).abs().max() / (merged[key] - base[key]).abs().max())
        assert error <= bound, (key, error, bound)


def test_fan_in_fan_out_modules_stay_in_peft_form(tmp_path):
    folder, base, merged = _peft_folder(tmp_path, "lora")
    adapter = lyco_core.load_adapter(folder)
    for layout in ("lycoris", "diffusers"):
        with pytest.raises(AdapterError, match="fan_in_fan_out"):
            lyco_core.save_adapter(adapter, tmp_path / f"out_{layout}", layout=layout)
    lyco_core.save_adapter(adapter, tmp_path / "again", layout="peft")
    again = lyco_core.load_adapter(tmp_path / "again")
    assert again.config["fan_in_fan_out"] is True
    patched, expected = again.patch(base), adapter.patch(base)
    assert patched.keys() == expected.keys() and all(torch.equal(patched[k], expected[k]) for k in patched)
