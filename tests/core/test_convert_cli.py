"""The CLI subcommands convert, to-lora, resize, merge, extract and bake on small fixtures: outputs, printed
errors, batch inputs, help, and exit codes (0 success, 2 refused with the reason on stderr)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lyco_core
from lyco_core.cli import main
from lyco_core.commands import weighted

from tests.host.tolerances import delta_agreement
from .convert_fixtures import relative

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(lyco_cases, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    base = lyco_cases["lycoris-loha"].base
    save_file(base, str(folder / "base.safetensors"))
    tuned = {
        k: v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(30)) if v.ndim >= 2 else v
        for k, v in base.items()
    }
    save_file(tuned, str(folder / "tuned.safetensors"))
    return {
        "base": folder / "base.safetensors",
        "tuned": folder / "tuned.safetensors",
        **{name.removeprefix("lycoris-"): lyco_cases[name].path for name in lyco_cases},
    }


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_for_every_subcommand(capsys):
    result = subprocess.run([sys.executable, "-m", "lyco_core", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("convert", "to-lora", "resize", "merge", "extract", "bake"):
        assert command in result.stdout
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0 and "usage:" in capsys.readouterr().out, command
    with pytest.raises(SystemExit) as info:
        main(["to-lora", "x.safetensors", "-o", "y.safetensors"])  # no rank policy
    assert info.value.code == 2


def test_convert_batch_and_refusal(files, tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "convert",
        files["loha"],
        files["lokr"],
        "--to",
        "peft",
        "-o",
        tmp_path / "peft",
        "--base",
        files["base"],
    )
    assert code == 0 and out.count("convert (lycoris → peft)") == 2
    assert (tmp_path / "peft" / "lycoris-loha" / "adapter_config.json").is_file()
    assert lyco_core.load_adapter(tmp_path / "peft" / "lycoris-lokr").layout == "peft"
    code, _, err = run(capsys, "convert", files["oft"], "--to", "peft", "-o", tmp_path / "oft", "--base", files["base"])
    assert code == 2 and "lycoris_fc1" in err and "to-lora" in err and not (tmp_path / "oft").exists()
    code, _, err = run(capsys, "convert", files["loha"], "--to", "peft", "-o", tmp_path / "nobase")
    assert code == 2 and "--base MODEL" in err


def test_to_lora_prints_errors_and_needs_base_for_oft(files, tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "to-lora",
        files["loha"],
        "-o",
        tmp_path / "a.safetensors",
        "--rank",
        "4",
        "--conv-rank",
        "2",
        "--base",
        files["base"],
    )
    assert code == 0 and "total relative error" in out and "lycoris_fc1" in out and "loha → lora r4" in out
    assert lyco_core.load_adapter(tmp_path / "a.safetensors").modules["lycoris_conv3"].rank() == 2
    code, _, err = run(capsys, "to-lora", files["oft"], "-o", tmp_path / "b.safetensors", "--energy", "0.9")
    assert code == 2 and "needs the base weights" in err
    code, out, _ = run(
        capsys,
        "to-lora",
        files["oft"],
        "-o",
        tmp_path / "b.safetensors",
        "--energy",
        "0.9",
        "--base",
        files["base"],
        "--layout",
        "peft",
        "--dtype",
        "fp16",
    )
    assert code == 2  # a PEFT folder is not a .safetensors name
    code, out, _ = run(
        capsys,
        "to-lora",
        files["oft"],
        "-o",
        tmp_path / "b",
        "--energy",
        "0.9",
        "--base",
        files["base"],
        "--layout",
        "peft",
        "--dtype",
        "fp16",
    )
    assert code == 0 and lyco_core.load_adapter(tmp_path / "b").layout == "peft"
    code, _, err = run(capsys, "to-lora", files["loha"], "-o", tmp_path / "a.safetensors", "--rank", "4")
    assert code == 2 and "refusing to overwrite" in err


def test_resize_batch(files, tmp_path, capsys):
    code, out, _ = run(capsys, "resize", files["locon"], files["locon-dora-out"], "-o", tmp_path, "--rank", "2")
    assert code == 0
    resized = lyco_core.load_adapter(tmp_path / "lycoris-locon-dora-out.safetensors")
    assert {m.rank() for m in resized.modules.values()} == {2} and all(m.dora for m in resized.modules.values())


def test_merge_full_and_lora(files, tmp_path, capsys, lyco_cases):
    code, out, _ = run(
        capsys,
        "merge",
        f"{files['loha']}:0.5",
        f"{files['locon']}:-1",
        "-o",
        tmp_path / "m.safetensors",
        "--full",
        "--base",
        files["base"],
    )
    assert code == 0
    base = lyco_cases["lycoris-loha"].base
    loha, locon = (lyco_core.load_adapter(files[n]) for n in ("loha", "locon"))
    expected = locon.patch({**base, **loha.patch(base, 0.5)}, -1.0)
    merged = lyco_core.load_adapter(tmp_path / "m.safetensors").patch(base)
    # ranks ≤ 8; LoHa's two products, then the sum of the two adapters: 3 chained steps
    assert relative(merged, expected, base) <= delta_agreement(expected, base, depth=8, steps=3)
    code, out, _ = run(capsys, "merge", files["loha"], files["lokr"], "-o", tmp_path / "r.safetensors", "--rank", "8")
    assert code == 0 and "loha+lokr → lora r8" in out
    code, _, err = run(capsys, "merge", files["loha"], files["oft"], "-o", tmp_path / "x.safetensors", "--rank", "8")
    assert code == 2 and "needs the base weights" in err


def test_extract_and_bake(files, tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "extract",
        files["base"],
        files["tuned"],
        "-o",
        tmp_path / "e.safetensors",
        "--rank",
        "8",
        "--method",
        "lokr",
    )
    assert code == 0 and "diff → lokr" in out and "total relative error" in out
    code, out, _ = run(
        capsys, "extract", files["base"], files["tuned"], "-o", tmp_path / "l.safetensors", "--energy", "0.5"
    )
    assert code == 0 and lyco_core.load_adapter(tmp_path / "l.safetensors").method_counts() == {"lora": 4}
    code, out, _ = run(
        capsys, "bake", files["base"], f"{files['loha']}:0.5", files["oft"], "-o", tmp_path / "baked.safetensors"
    )
    assert code == 0 and "wrote" in out
    from safetensors.torch import load_file

    baked, base = load_file(str(tmp_path / "baked.safetensors")), load_file(str(files["base"]))
    loha, oft = (lyco_core.load_adapter(files[n]) for n in ("loha", "oft"))
    chained = {**base, **loha.patch(base, 0.5)}
    chained.update(oft.patch(chained))
    assert all(torch.equal(baked[k], chained[k]) for k in base)
    code, _, err = run(capsys, "bake", files["base"], files["loha"], "-o", tmp_path / "baked.ckpt")
    assert code == 2 and "safetensors" in err


def test_weighted_inputs(tmp_path):
    assert weighted("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert weighted("a.safetensors") == ("a.safetensors", 1.0)
    assert weighted("C:/x.safetensors") == ("C:/x.safetensors", 1.0)
    odd = tmp_path / "a:2"
    odd.write_bytes(b"")
    assert weighted(str(odd)) == (str(odd), 1.0)
