"""Smoke tests of the real-ComfyUI harness: in-process boot, server boot, our pack's import."""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import workflow


def _render(nodes, model, clip, vae, seed=0):
    pos = nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    samples = nodes.KSampler().sample(model, seed, 2, 7.0, "euler", "normal", pos, neg, latent)[0]
    return nodes.VAEDecode().decode(vae, samples)[0]


# --------------------------------------------------------------------------- (a) in-process


def test_inprocess_checkpoint_detected_as_sd15_with_taesd(comfy):
    supported_models = importlib.import_module("comfy.supported_models")
    taesd = importlib.import_module("comfy.taesd.taesd")
    assert comfy.base.ckpt_name in importlib.import_module("folder_paths").get_filename_list("checkpoints")

    model, clip, vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)
    assert type(model.model.model_config) is supported_models.SD15
    cfg = model.model.model_config.unet_config
    assert (cfg["model_channels"], cfg["context_dim"], cfg["channel_mult"]) == (320, 768, [1])
    assert isinstance(vae.first_stage_model, taesd.TAESD)
    assert vae.first_stage_model.vae_scale.detach().item() == pytest.approx(0.18215, rel=1e-3)
    assert any(
        k.startswith("clip_l.transformer.text_model.encoder.layers.11.") for k in clip.cond_stage_model.state_dict()
    )


def test_inprocess_ksampler_with_core_lora(comfy, caplog):
    nodes = comfy.nodes
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)

    base_img = _render(nodes, model, clip, vae)
    assert base_img.shape == (1, 64, 64, 3)
    assert torch.isfinite(base_img).all()

    with caplog.at_level(logging.WARNING):
        m_lora, c_lora = nodes.LoraLoader().load_lora(model, clip, comfy.base.lora_name, 1.0, 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    assert len(m_lora.patches) == 40  # 4 transformer blocks x (attn1/2 q,k,v,out + ff 0,2)
    assert len(c_lora.patcher.patches) == 72  # 12 CLIP-L layers x (q,k,v,out_proj,fc1,fc2)
    assert not model.patches  # the loader cloned; the input is untouched

    lora_img = _render(nodes, m_lora, c_lora, vae)
    diff = (lora_img - base_img).abs().mean().item() * 255
    assert diff > 1.0, f"LoRA had no visible effect (mean |diff| {diff:.3f}/255)"

    # unpatching restores the base weights bit-exactly: the base render is reproduced
    again = _render(nodes, model, clip, vae)
    assert torch.equal(again, base_img)


# --------------------------------------------------------------------------- (b) server


def _saved_image(server, outputs) -> Path:
    images = workflow.output_images(outputs)
    assert len(images) == 1 and images[0]["type"] == "output", images
    path = server.base.output_dir / images[0]["subfolder"] / images[0]["filename"]
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_server_object_info_and_txt2img(comfy_server):
    info = comfy_server.get_json("/object_info")
    for core in ("CheckpointLoaderSimple", "LoraLoader", "KSampler", "SaveImage"):
        assert core in info
    assert comfy_server.base.ckpt_name in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert comfy_server.base.lora_name in info["LoraLoader"]["input"]["required"]["lora_name"][0]

    # CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage 64x64 -> KSampler 2 steps
    # -> VAEDecode -> SaveImage, then the same with core LoraLoader in between
    plain = _saved_image(
        comfy_server,
        workflow.run_prompt(comfy_server.url, workflow.txt2img_graph(comfy_server.base.ckpt_name, prefix="boot_plain")),
    )
    lora = _saved_image(
        comfy_server,
        workflow.run_prompt(
            comfy_server.url,
            workflow.txt2img_graph(
                comfy_server.base.ckpt_name, prefix="boot_lora", lora_name=comfy_server.base.lora_name
            ),
        ),
    )
    a = np.asarray(Image.open(plain).convert("RGB"), dtype=np.float32)
    b = np.asarray(Image.open(lora).convert("RGB"), dtype=np.float32)
    assert a.shape == b.shape == (64, 64, 3)
    assert np.abs(a - b).mean() > 1.0, "core LoraLoader had no visible effect over HTTP"
    assert "lora key not loaded" not in comfy_server.log()


def test_server_log_has_no_import_failure_for_our_pack(comfy_server):
    comfy_server.wait_for_log(r"Import times for custom nodes", timeout=10)
    log = comfy_server.log()
    bad = [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and "ComfyUI-LyCO" in ln]
    bad += [ln for ln in log.splitlines() if re.search(r"Cannot import .*ComfyUI-LyCO", ln)]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- (c) our pack


def test_pack_imported_through_comfyui_loader(comfy):
    init = comfy.base.pack_path / "__init__.py"
    assert init.is_file(), f"the pack has no entry point yet ({init.name} missing in the repo root)"
    assert comfy.pack_loaded, "ComfyUI's load_custom_node failed for our pack:\n" + "\n".join(comfy.pack_log)
    assert comfy.pack_module is not None
    assert not [ln for ln in comfy.pack_log if "Cannot import" in ln or "Traceback" in ln], comfy.pack_log


def test_pack_registers_lyco_nodes(comfy):
    assert comfy.pack_loaded, "\n".join(comfy.pack_log)
    assert comfy.lyco_nodes, "the pack loaded but registered no node id starting with 'LyCO'"


def test_server_lists_lyco_nodes(comfy_server):
    info = comfy_server.get_json("/object_info")
    ours = sorted(k for k in info if k.startswith("LyCO"))
    assert ours, "no node id starting with 'LyCO' in /object_info"
