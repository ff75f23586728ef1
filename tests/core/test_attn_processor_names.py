"""Old diffusers attention-processor LoRAs through the core API and the CLI.

diffusers' ``LoRAAttnProcessor`` (removed from diffusers; its ``save_attn_procs`` wrote these files, and ComfyUI's
own key map still reads them) keys each attention's LoRA by its processor: ``<attention>.processor.to_q_lora.down
.weight`` … ``to_out_lora.up.weight``, ``down`` the ``(r, in)`` factor, with or without the pipeline's ``unet.``
prefix and no alpha (scale 1). The files here are written by a renamer from that naming, never by our writers; the
same factors under today's diffusers names (``unet.<path>.lora_A/B.weight``) are the reference: both must patch the
same weights of an LDM-keyed and a diffusers-keyed UNet, every module matched.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import lyco_core
from lyco_core.cli import main

from .test_unet_names import unet  # noqa: F401  (the tiny SD1/SDXL UNet fixture)

PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


def _attention_paths(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted({key.rsplit(".", 2)[0] for key in state if key.endswith(".attn1.to_q.weight")} | {
        key.rsplit(".", 2)[0] for key in state if key.endswith(".attn2.to_q.weight")})  # fmt: skip


def _files(unet, tmp_path, prefix: str):  # noqa: F811
    """(attention-processor file, the same factors in today's diffusers naming)."""
    gen = torch.Generator().manual_seed(31)
    processor, today = {}, {}
    for attention in _attention_paths(unet.state):
        for name, layer in PROJECTIONS.items():
            weight = unet.state[f"{attention}.{layer}.weight"]
            down, up = (
                0.1 * torch.randn(2, weight.shape[1], generator=gen),
                0.1 * torch.randn(weight.shape[0], 2, generator=gen),
            )
            processor[f"{prefix}{attention}.processor.{name}_lora.down.weight"] = down
            processor[f"{prefix}{attention}.processor.{name}_lora.up.weight"] = up
            today[f"unet.{attention}.{layer}.lora_A.weight"] = down
            today[f"unet.{attention}.{layer}.lora_B.weight"] = up
    save_file(processor, str(tmp_path / "processor.safetensors"))
    save_file(today, str(tmp_path / "today.safetensors"))
    return tmp_path / "processor.safetensors", tmp_path / "today.safetensors"


@pytest.mark.parametrize("prefix", ["", "unet."])
def test_attention_processor_lora_matches_every_module(unet, tmp_path, prefix):  # noqa: F811
    processor_file, today_file = _files(unet, tmp_path, prefix)
    processor, today = lyco_core.load_adapter(processor_file), lyco_core.load_adapter(today_file)
    assert len(processor.modules) == len(today.modules) == 4 * len(_attention_paths(unet.state))
    for model in (unet.ldm, unet.state):
        report = processor.match(model)
        assert not report.unmatched, report.line()
        for strength in (1.0, 0.7):
            got, expected = processor.patch(model, strength), today.patch(model, strength)
            assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_attention_processor_lora_bakes_from_the_cli(unet, tmp_path, capsys):  # noqa: F811
    processor_file, _ = _files(unet, tmp_path, "")
    save_file(unet.ldm, str(tmp_path / "ldm.safetensors"))
    code = main(["bake", str(tmp_path / "ldm.safetensors"), str(processor_file), "-o",
                               str(tmp_path / "baked.safetensors")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "match no weight" not in out, out
