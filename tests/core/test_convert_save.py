"""save_adapter: metadata written per the kohya/modelspec conventions, input metadata preserved, sshs hashes equal
to an independent recomputation, and the safety rules (no overwrite unless asked, atomic writes, nothing left by a
failure or a cancel)."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lyco_core
from lyco_core import AdapterError
from lyco_core.cli import main
from lyco_core.convert import RankPolicy, merge, to_lora

INPUT_METADATA = {
    "ss_base_model_version": "sd_v1",
    "ss_training_comment": "trained on cats",
    "ss_tag_frequency": json.dumps({"cats": {"cat": 3}}),
    "ssmd_author": "someone",
    "modelspec.trigger_phrase": "catstyle",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "ss_network_dim": "8",
    "sshs_model_hash": "stale",
}


def big_adapter(tmp_path, name="big.safetensors", metadata=INPUT_METADATA):
    """A LyCORIS file over 1 MiB (so the legacy hash window holds data): a LoRA conv and a full-diff Linear."""
    gen = torch.Generator().manual_seed(20)
    tensors = {
        "lora_unet_conv.lora_up.weight": torch.randn(64, 8, 1, 1, generator=gen),
        "lora_unet_conv.lora_down.weight": torch.randn(8, 32, 3, 3, generator=gen),
        "lora_unet_conv.alpha": torch.tensor(4.0),
        "lora_unet_proj.diff": torch.randn(640, 512, generator=gen) * 0.01,
    }
    path = tmp_path / name
    save_file(tensors, str(path), metadata)
    return path


def header(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def recomputed_hashes(path) -> tuple[str, str, str]:
    """(SHA-256 of the file's data section, kohya's model hash, kohya's legacy hash), computed here from scratch:
    the tensors re-serialised with only the file's ss_* metadata, as sd-scripts does before adding sshs_*."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    file_hash = hashlib.sha256(raw[8 + length :]).hexdigest()
    with safe_open(str(path), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        training = {k: v for k, v in handle.metadata().items() if k.startswith("ss_")}
    again = safetensors.torch.save(tensors, training)
    (length,) = struct.unpack("<Q", again[:8])
    return (
        file_hash,
        hashlib.sha256(again[8 + length :]).hexdigest(),
        hashlib.sha256(again[0x100000:0x110000]).hexdigest()[:8],
    )


def test_to_lora_metadata_and_hashes(tmp_path):
    adapter = lyco_core.load_adapter(big_adapter(tmp_path))
    lora, _ = to_lora(adapter, RankPolicy(rank=8))
    out = lyco_core.save_adapter(lora, tmp_path / "small.safetensors")
    meta = header(out)
    for key in (
        "ss_base_model_version",
        "ss_tag_frequency",
        "ssmd_author",
        "modelspec.trigger_phrase",
        "modelspec.architecture",
    ):
        assert meta[key] == INPUT_METADATA[key], key
    assert meta["ss_training_comment"].startswith("lyco_core to-lora (rank 8) of full×1, lora×1")
    assert meta["ss_training_comment"].endswith("before: trained on cats")
    assert meta["ss_network_module"] == "networks.lora"
    assert json.loads(meta["ss_network_args"]) == {"algo": "lora", "conv_dim": "8", "conv_alpha": "8"}
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("8", "8")
    assert meta["ss_output_name"] == "small" and meta["modelspec.title"] == "small"
    assert meta["modelspec.sai_model_spec"] and meta["modelspec.date"]
    for path in (out, lyco_core.save_adapter(adapter, tmp_path / "same.safetensors")):  # 70 KB and 1.3 MB
        meta = header(path)
        file_hash, model_hash, legacy_hash = recomputed_hashes(path)
        assert meta["sshs_model_hash"] == model_hash == file_hash
        assert meta["sshs_legacy_hash"] == legacy_hash
    assert legacy_hash != hashlib.sha256(b"").hexdigest()[:8]  # the 1 MiB window of the big file holds data


def test_dynamic_ranks_merged_from_and_other_layouts(tmp_path):
    adapter = lyco_core.load_adapter(big_adapter(tmp_path))
    lora, _ = to_lora(adapter, RankPolicy(rank=8, conv_rank=4))
    meta = header(lyco_core.save_adapter(lora, tmp_path / "dyn.safetensors"))
    assert meta["ss_network_dim"] == "8" and json.loads(meta["ss_network_args"])["conv_dim"] == "4"
    energy, _ = to_lora(adapter, RankPolicy(energy=0.5))
    meta = header(lyco_core.save_adapter(energy, tmp_path / "energy.safetensors"))
    assert {meta["ss_network_dim"], meta["ss_network_alpha"]} <= {"Dynamic"} | {
        str(m.rank()) for m in energy.modules.values()
    }
    merged, _ = merge([adapter, adapter], [0.3, 0.7], RankPolicy(rank=4))
    meta = header(lyco_core.save_adapter(merged, tmp_path / "merged.safetensors"))
    assert meta["modelspec.merged_from"] == "big.safetensors:0.3, big.safetensors:0.7"
    assert meta["modelspec.trigger_phrase"] == "catstyle"
    kohya = lyco_core.load_adapter(big_adapter(tmp_path, "lora_only.safetensors"))
    only_lora = {n: m for n, m in kohya.modules.items() if m.algo == "lora"}
    kohya.modules = only_lora
    peft_dir = lyco_core.save_adapter(
        kohya, tmp_path / "as_peft", "peft", component="unet", model_keys=["conv.weight", "proj.weight"]
    )
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["target_modules"]) == (
        "LORA",
        8,
        4.0,
        ["conv"],
    )
    meta = header(peft_dir / "adapter_model.safetensors")
    assert meta["format"] == "pt" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["sshs_model_hash"] == recomputed_hashes(peft_dir / "adapter_model.safetensors")[0]
    diffusers = lyco_core.save_adapter(
        kohya, tmp_path / "diffusers.safetensors", "diffusers", model_keys=["conv.weight", "proj.weight"]
    )
    flat = json.loads(header(diffusers)["lora_adapter_metadata"])
    assert (flat["unet.r"], flat["unet.lora_alpha"], flat["unet.target_modules"]) == (8, 4.0, ["conv"])


def test_save_from_tensors_dtype_and_alpha(tmp_path):
    gen = torch.Generator().manual_seed(21)
    tensors = {
        "lora_te_x.lora_up.weight": torch.randn(8, 3, generator=gen),
        "lora_te_x.lora_down.weight": torch.randn(3, 5, generator=gen),
        "lora_te_x.alpha": torch.tensor(1.7),
    }
    path = lyco_core.save_adapter(
        tensors, tmp_path / "t.safetensors", dtype="fp16", metadata={"ss_training_comment": "mine"}
    )
    with safe_open(str(path), "pt") as handle:
        assert handle.get_tensor("lora_te_x.lora_up.weight").dtype == torch.float16
        assert handle.get_tensor("lora_te_x.alpha").dtype == torch.float32  # alpha/r survives the cast exactly
        assert handle.metadata()["ss_training_comment"] == "mine"
    assert lyco_core.load_adapter(path).modules["lora_te_x"].scale_value() == pytest.approx(1.7 / 3)


def test_overwrite_is_refused_unless_asked(tmp_path):
    adapter = lyco_core.load_adapter(big_adapter(tmp_path))
    target = tmp_path / "out.safetensors"
    lyco_core.save_adapter(adapter, target)
    before = target.read_bytes()
    with pytest.raises(AdapterError, match="refusing to overwrite"):
        lyco_core.save_adapter(adapter, target, dtype="fp16")
    assert target.read_bytes() == before
    lyco_core.save_adapter(adapter, target, dtype="fp16", overwrite=True)
    assert target.read_bytes() != before
    kohya = lyco_core.load_adapter(big_adapter(tmp_path, "b.safetensors"))
    kohya.modules = {n: m for n, m in kohya.modules.items() if m.algo == "lora"}
    lyco_core.save_adapter(kohya, tmp_path / "peft", "peft", component="unet", model_keys=["conv.weight"])
    with pytest.raises(AdapterError, match="refusing to overwrite"):
        lyco_core.save_adapter(kohya, tmp_path / "peft", "peft", component="unet", model_keys=["conv.weight"])
    with pytest.raises(AdapterError, match="folder"):
        lyco_core.save_adapter(kohya, tmp_path / "x.safetensors", "peft", model_keys=["conv.weight"])


def test_a_failing_write_leaves_no_partial_file(tmp_path, monkeypatch):
    adapter = lyco_core.load_adapter(big_adapter(tmp_path))
    target = tmp_path / "out" / "a.safetensors"
    real_write = lyco_core.io.write_safetensors_file

    def broken(filename, tensors, metadata):
        real_write(filename, tensors, metadata)
        with open(filename, "r+b") as handle:  # a crash half-way: the bytes on disk are truncated
            handle.truncate(1000)
        raise OSError("disk full")

    monkeypatch.setattr(lyco_core.io, "write_safetensors_file", broken)
    with pytest.raises(AdapterError, match="disk full"):
        lyco_core.save_adapter(adapter, target)
    assert not target.exists() and list(target.parent.iterdir()) == []
    adapter.modules = {n: m for n, m in adapter.modules.items() if m.algo == "lora"}
    with pytest.raises(AdapterError, match="disk full"):
        lyco_core.save_adapter(adapter, tmp_path / "peft_out", "peft", component="unet", model_keys=["conv.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors", "out"]  # no folder, no staging dir
    monkeypatch.setattr(lyco_core.io, "write_safetensors_file", real_write)
    existing = tmp_path / "keep.safetensors"
    lyco_core.save_adapter(adapter, existing)
    kept = existing.read_bytes()
    monkeypatch.setattr(lyco_core.io, "write_safetensors_file", broken)
    with pytest.raises(AdapterError, match="disk full"):
        lyco_core.save_adapter(adapter, existing, overwrite=True, dtype="fp16")
    assert existing.read_bytes() == kept  # the old file survives a failed replacement


def test_cancelled_cli_run_leaves_nothing(tmp_path, monkeypatch):
    from lyco_core import commands

    source = big_adapter(tmp_path)

    def interrupt(self, done, total):
        if done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(commands.TerminalProgress, "__call__", interrupt)
    target = tmp_path / "never.safetensors"
    assert main(["to-lora", str(source), "-o", str(target), "--rank", "4"]) == 130
    assert main(["merge", f"{source}:0.5", str(source), "-o", str(target), "--rank", "4"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]
