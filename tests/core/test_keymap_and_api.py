"""Automatic name matching, strength semantics and the CLI, on small generated files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.host.tolerances import close
import lyco_core

ROOT = Path(__file__).resolve().parents[2]


def _lora(prefix, out=8, inp=6, rank=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}.lora_up.weight": torch.randn(out, rank, generator=gen),
        f"{prefix}.lora_down.weight": torch.randn(rank, inp, generator=gen),
        f"{prefix}.alpha": torch.tensor(1.0),
    }


def test_mangled_names_map_forward_including_text_model_and_trailing_underscore(tmp_path):
    tensors = {}
    tensors.update(_lora("lora_te1_text_model_encoder_layers_0_self_attn_q_proj"))
    tensors.update(_lora("lora_te2_encoder_layers_0_self_attn_q_proj", seed=1))
    tensors.update(_lora("lycoris_down_blocks_0_proj_in_", seed=2))
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    adapter = lyco_core.load_adapter(path)
    assert adapter.layout == "lycoris"
    weights = {
        "te1.encoder.layers.0.self_attn.q_proj.weight": torch.randn(8, 6),
        "te2.text_model.encoder.layers.0.self_attn.q_proj.weight": torch.randn(8, 6),
        "unet.down_blocks.0.proj_in.weight": torch.randn(8, 6),
    }
    report = adapter.match(weights)
    assert report.matched == {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": "te1.encoder.layers.0.self_attn.q_proj.weight",
        "lora_te2_encoder_layers_0_self_attn_q_proj": "te2.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "lycoris_down_blocks_0_proj_in_": "unet.down_blocks.0.proj_in.weight",
    }, report.unmatched


def test_comfy_layout_spellings(tmp_path):
    gen = torch.Generator().manual_seed(3)
    tensors = {
        "diffusion_model.input_blocks.1.1.proj_in.lora_B.weight": torch.randn(8, 2, generator=gen),
        "diffusion_model.input_blocks.1.1.proj_in.lora_A.weight": torch.randn(2, 6, generator=gen),
        "diffusion_model.out.2_lora.up.weight": torch.randn(4, 1, generator=gen),
        "diffusion_model.out.2_lora.down.weight": torch.randn(1, 5, generator=gen),
        "diffusion_model.mid.lora_linear_layer.up.weight": torch.randn(3, 1, generator=gen),
        "diffusion_model.mid.lora_linear_layer.down.weight": torch.randn(1, 3, generator=gen),
    }
    path = tmp_path / "comfy.safetensors"
    save_file(tensors, str(path))
    adapter = lyco_core.load_adapter(path)
    assert adapter.layout == "comfy"
    assert set(adapter.modules) == {
        "diffusion_model.input_blocks.1.1.proj_in",
        "diffusion_model.out.2",
        "diffusion_model.mid",
    }
    weights = {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(8, 6),
        "model.diffusion_model.out.2.weight": torch.zeros(4, 5),
        "model.diffusion_model.mid.weight": torch.zeros(3, 3),
    }
    new = adapter.patch(weights)
    up, down = tensors["diffusion_model.out.2_lora.up.weight"], tensors["diffusion_model.out.2_lora.down.weight"]
    expected = up @ down  # no alpha: scale 1; a rank-up.shape[1] product added to a zero weight
    torch.testing.assert_close(new["model.diffusion_model.out.2.weight"], expected, **close(expected, up.shape[1]))


def test_strength_zero_changes_nothing_and_inputs_untouched(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file(_lora("lora_unet_fc1"), str(path))
    adapter = lyco_core.load_adapter(path)
    weights = {"fc1.weight": torch.randn(8, 6, dtype=torch.float16)}
    original = weights["fc1.weight"].clone()
    assert adapter.patch(weights, strength=0.0) == {}
    new = adapter.patch(weights, strength=0.5)
    assert new["fc1.weight"].dtype == torch.float16
    assert torch.equal(weights["fc1.weight"], original)


def test_cli_inspect_json_matches_file(tmp_path):
    path = tmp_path / "cli.safetensors"
    tensors = _lora("lora_unet_fc1", rank=4)
    tensors.update(
        {
            "lora_unet_fc2.hada_w1_a": torch.randn(8, 2),
            "lora_unet_fc2.hada_w1_b": torch.randn(2, 6),
            "lora_unet_fc2.hada_w2_a": torch.randn(8, 2),
            "lora_unet_fc2.hada_w2_b": torch.randn(2, 6),
            "lora_unet_fc2.alpha": torch.tensor(1.0),
        }
    )
    save_file(
        tensors,
        str(path),
        metadata={
            "ss_base_model_version": "sd_v1",
            "modelspec.trigger_phrase": "zzz style",
            "ss_network_module": "lycoris.kohya",
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "lyco_core", "inspect", str(path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(done.stdout)
    assert summary["layout"] == "lycoris" and summary["modules"] == 2
    assert summary["methods"] == {"lora": 1, "loha": 1}
    assert summary["per_module"]["lora_unet_fc1"]["rank"] == 4
    assert summary["per_module"]["lora_unet_fc1"]["alpha"] == 1.0
    assert summary["per_module"]["lora_unet_fc2"]["scale"] == 0.5
    assert summary["metadata"]["base_model"] == "sd_v1"
    assert summary["metadata"]["trigger_words"] == ["zzz style"]
    text = subprocess.run(
        [sys.executable, "-m", "lyco_core", "inspect", str(path)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "lora_unet_fc2" in text and "loha" in text and "sd_v1" in text


def test_cli_reports_bad_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"xx")
    done = subprocess.run(
        [sys.executable, "-m", "lyco_core", "inspect", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "too short" in done.stderr and "Traceback" not in done.stderr


def test_header_only_summary_equals_full_summary(tmp_path):
    path = tmp_path / "h.safetensors"
    tensors = _lora("lora_unet_fc1", rank=4)
    tensors.update(
        {
            "lora_unet_conv.oft_blocks": torch.randn(4, 2, 2) * 0.01,
            "lora_unet_conv.alpha": torch.tensor(0.5),
            "lora_unet_fc2.lokr_w1": torch.randn(2, 3),
            "lora_unet_fc2.lokr_w2_a": torch.randn(4, 1),
            "lora_unet_fc2.lokr_w2_b": torch.randn(1, 2),
            "lora_unet_fc2.alpha": torch.tensor(1.0),
        }
    )
    save_file(tensors, str(path))
    full = lyco_core.load_adapter(path).summary()
    light = lyco_core.load_adapter(path, header_only=True)
    assert light.summary() == full
    try:
        light.patch({"fc1.weight": torch.zeros(8, 6)})
    except lyco_core.AdapterError as exc:
        assert "header-only" in str(exc)
    else:
        raise AssertionError("patching a header-only adapter must fail")
