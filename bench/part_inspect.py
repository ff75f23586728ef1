"""Part 4: inspect — summarising a generated 2,000-module adapter file without reading its tensors.

Ours: ``load_adapter(path, header_only=True).summary()`` (names, shapes, dtypes and alpha from the safetensors
header). Reference: reading the whole file (``safetensors.torch.load_file``, what any tensor-reading inspection —
ComfyUI's ``load_torch_file`` included — has to do first). Target: ≤ 0.2 s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import harness
import host_env
import synth

MODULES = 2000
SHAPES = [(640, 640), (1280, 1280), (1280, 2048), (1280, 5120), (5120, 1280), (640, 640, 3, 3)]
METHODS = ("lora", "loha", "lokr")


def _write(path: Path) -> int:
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for index in range(MODULES):
        shape = SHAPES[index % len(SHAPES)]
        params = synth.module_tensors(METHODS[index % len(METHODS)], shape, gen)
        tensors.update({f"lora_unet_block_{index}_layer.{k}": v.half() if v.ndim else v for k, v in params.items()})
    save_file(tensors, str(path), metadata={"ss_network_module": "lycoris.kohya", "ss_output_name": "bench"})
    return len(tensors)


def run(env, quick: bool) -> dict:
    core = env.core if env is not None else host_env.core()
    with tempfile.TemporaryDirectory(prefix="lyco-bench-inspect-") as folder:
        path = Path(folder) / "inspect_2000.safetensors"
        keys = _write(path)
        summary = {}

        def ours():
            summary["value"] = core.load_adapter(path, header_only=True).summary()

        timings = harness.rounds(
            {"ours": ours, "full_read": lambda: load_file(str(path))}, 3 if quick else 7, 1, torch.device("cpu")
        )
        size = path.stat().st_size
    assert summary["value"]["modules"] == MODULES
    return {
        "modules": MODULES,
        "tensors": keys,
        "file_mb": size / 1e6,
        "header_only_s": timings.median("ours"),
        "full_read_s": timings.median("full_read"),
        "ratio": timings.ratio("ours", "full_read"),
        "target_met": timings.median("ours") <= 0.2,
    }
