"""The CLI killed while writing: SIGKILL leaves at most our one hidden temporary file (never a partial output), and
the next write of the same output removes it; SIGTERM unwinds like Ctrl+C (exit 130) and leaves nothing. OS errors
(a file where the output folder should be) exit 2 with the reason. Every CLI here is a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 24  # 24 × 2048² float32: a 400 MB model, so the write takes long enough to be caught


@pytest.fixture(scope="module")
def model_and_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    gen = torch.Generator().manual_seed(3)
    model = {f"layers.{i}.weight": torch.randn(2048, 2048, generator=gen) for i in range(LAYERS)}
    save_file(model, str(folder / "model.safetensors"))
    adapter = {
        "base_model.model.layers.0.lora_B.weight": torch.randn(2048, 4, generator=gen),
        "base_model.model.layers.0.lora_A.weight": torch.randn(4, 2048, generator=gen),
    }
    save_file(adapter, str(folder / "lora.safetensors"))
    return folder / "model.safetensors", folder / "lora.safetensors"


def _bake(model: Path, adapter: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "lyco_core", "bake", str(model), str(adapter), "-o", str(out), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temporaries(folder: Path, out: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{out.name}.") and p.name.endswith(".tmp")]


def _kill_while_writing(model, adapter, out, sig) -> subprocess.Popen | None:
    """Start a bake and send ``sig`` once its temporary file exists; None if it finished first."""
    proc = _bake(model, adapter, out)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if _temporaries(out.parent, out):
            os.kill(proc.pid, sig)
            proc.wait(timeout=60)
            return proc
        time.sleep(0.002)
    proc.wait(timeout=60)
    return None


def _caught(model_and_adapter, folder: Path, sig) -> tuple[subprocess.Popen, Path]:
    """A bake that got ``sig`` while writing, and its output path (a few tries: a bake may finish first)."""
    model, adapter = model_and_adapter
    for attempt in range(5):
        out = folder / f"baked{attempt}.safetensors"
        proc = _kill_while_writing(model, adapter, out, sig)
        if proc is not None:
            return proc, out
    pytest.fail("every bake finished before its temporary file could be seen")


def test_sigkill_leaves_only_our_temporary_and_the_next_write_removes_it(model_and_adapter, tmp_path):
    model, adapter = model_and_adapter
    proc, out = _caught(model_and_adapter, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert len(_temporaries(tmp_path, out)) == 1  # ours only: no second file from the safetensors library
    again = _bake(model, adapter, out)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert out.is_file() and _temporaries(tmp_path, out) == []


def test_sigterm_unwinds_and_leaves_nothing(model_and_adapter, tmp_path):
    proc, out = _caught(model_and_adapter, tmp_path, signal.SIGTERM)
    assert proc.returncode == 130, proc.stderr.read()
    assert "interrupted: nothing written" in proc.stderr.read()
    assert not out.exists() and _temporaries(tmp_path, out) == []


def test_output_under_a_regular_file_exits_2_with_the_reason(model_and_adapter, tmp_path):
    model, adapter = model_and_adapter
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    proc = _bake(model, adapter, blocker / "out.safetensors")
    assert proc.wait(timeout=300) == 2
    assert "cannot write" in proc.stderr.read()
