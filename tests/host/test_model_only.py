"""The model-only loader applies the UNet part of a file and reports its text-encoder part as skipped, not as
unmatched; a file with nothing but text-encoder modules is a clear error there."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from demo_files import link_demo_adapters


@pytest.fixture(scope="module")
def loaded(comfy, comfy_base, tiny_checkpoint):
    import folder_paths

    names = link_demo_adapters(comfy_base.path, tiny_checkpoint)
    gen = torch.Generator().manual_seed(11)
    te_only = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(3072, 2, generator=gen),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(2, 768, generator=gen),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(2.0),
    }
    save_file(te_only, str(comfy_base.path / "models" / "loras" / "te_only.safetensors"))
    folder_paths.filename_list_cache.pop("loras", None)
    model, _, _ = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)
    return comfy.lyco_nodes["LyCOLoadAdapterModelOnly"], model, names


def test_text_encoder_modules_are_skipped_not_unmatched(loaded):
    node, model, names = loaded
    new_model, summary = node.execute(model, names["lokr"], 1.0).result
    assert "UNet 40" in summary and "0 unmatched" in summary, summary
    assert "72 text-encoder modules skipped (no CLIP input)" in summary, summary
    assert new_model is not model


def test_text_encoder_only_file_is_a_clear_error(loaded):
    node, model, _ = loaded
    with pytest.raises(Exception) as info:
        node.execute(model, "te_only.safetensors", 1.0)
    assert "text-encoder modules and no CLIP is connected" in str(info.value)
    assert "te_only.safetensors" in str(info.value)
