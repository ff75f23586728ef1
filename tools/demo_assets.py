#!/usr/bin/env python3
"""Demo files for the tiny SD1.5 checkpoint: one adapter per method (LoKr, LoHa, OFT, LoRA).

Shared by ``tools/demo.py`` (what the user sees in ComfyUI) and ``tests/host`` (what the server tests run), so the
tests exercise exactly the files the demo shows. Nothing here is committed: the files are generated, cached under
``.cache/fixtures/`` and reused while their ``lyco.*`` metadata markers match.

The adapters are random but fixed-seed, in the kohya/LyCORIS layout ComfyUI's key map knows for the tiny model
(``tests/host/tiny_sd15.py``): ``lora_unet_<diffusers path>`` for attn1/attn2 q/k/v/out_0, ``ff_net_0_proj`` and
``ff_net_2`` of the four transformer blocks (40 modules) and ``lora_te_text_model_encoder_layers_N_…`` for q/k/v/
out_proj, fc1, fc2 of the twelve CLIP-L layers (72 modules). Magnitudes follow the kohya LoRA fixture (ΔW entries
about half the fan-in-scaled base weight, a rotation of similar size for OFT): the image visibly changes and stays
sane.

* LoKr: ``lokr_w1 (8, 8)`` full, ``lokr_w2_a (out/8, 4)`` · ``lokr_w2_b (4, in/8)``, ``alpha = 4`` (scale 1);
* LoHa: ``hada_w{1,2}_{a,b}`` rank 4, ``alpha = 4``;
* OFT: ``oft_blocks (out/8, 8, 8)`` small values, ``alpha`` = the LyCORIS constraint (1e-2, bound ×out_dim);
* LoRA: ``tiny_sd15.make_tiny_lora`` (the test fixture's generator) with its own seed.

Needs ComfyUI importable with ``args.cpu`` set (the checkpoint is loaded once to read ComfyUI's own key maps). As a
script it arranges that itself::

    python tools/demo_assets.py [--out DIR]      # checkpoint + the four adapters, prints their paths
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST_TESTS = REPO_ROOT / "tests" / "host"
FIXTURE_CACHE = REPO_ROOT / ".cache" / "fixtures"

CKPT_NAME = "tiny_sd15.safetensors"
DEMO_VERSION = "1"
DEMO_ADAPTERS = {  # method -> file name in the loras folder
    "lokr": "lyco_demo_lokr.safetensors",
    "loha": "lyco_demo_loha.safetensors",
    "oft": "lyco_demo_oft.safetensors",
    "lora": "lyco_demo_lora.safetensors",
}
_SEEDS = {"lokr": 101, "loha": 102, "oft": 103, "lora": 104}
_RANK = 4
_KRON_FACTOR = 8  # LoKr: w1 is (8, 8); every target dim of the tiny model divides by 8
_OFT_BLOCK = 8  # OFT block size
_OFT_CONSTRAINT = 1e-2
_OFT_STD = 0.0375  # per-entry std of oft_blocks: rows move by ~0.3 of their norm


def _load_by_path(name: str, path: Path):
    """Import a helper module by file path, reusing an already-imported copy of the same file."""
    mod = sys.modules.get(name)
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path.resolve():
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def tiny_sd15():
    """``tests/host/tiny_sd15.py`` (the checkpoint generator), imported by file path."""
    return _load_by_path("tiny_sd15", HOST_TESTS / "tiny_sd15.py")


def comfy_bootstrap():
    """``tests/host/comfy_bootstrap.py`` (process setup for importing ComfyUI), imported by file path."""
    return _load_by_path("comfy_bootstrap", HOST_TESTS / "comfy_bootstrap.py")


def host_workflow():
    """``tests/host/workflow.py`` (a ComfyUI server's child environment and readiness, HTTP prompts), imported by
    file path."""
    return _load_by_path("workflow", HOST_TESTS / "workflow.py")


def make_checkpoint(path: Path | str = FIXTURE_CACHE / CKPT_NAME, seed: int = 0) -> Path:
    """The tiny SD1.5 checkpoint (made once, then reused while its marker matches)."""
    return tiny_sd15().make_tiny_sd15(Path(path), seed=seed)


def _checkpoint_id(checkpoint: Path) -> str:
    meta = tiny_sd15().read_safetensors_metadata(checkpoint) or {}
    return f"{meta.get('lyco.fixture')}:{meta.get('lyco.fixture_version')}:{meta.get('lyco.seed')}"


def _marker(method: str, checkpoint: Path) -> dict:
    return {
        "lyco.fixture": f"lyco-demo-{method}",
        "lyco.fixture_version": DEMO_VERSION,
        "lyco.seed": str(_SEEDS[method]),
        "lyco.checkpoint": _checkpoint_id(checkpoint),
    }


def _is_current(path: Path, marker: dict) -> bool:
    meta = tiny_sd15().read_safetensors_metadata(path) if path.is_file() else None
    return meta is not None and all(meta.get(k) == v for k, v in marker.items())


# --------------------------------------------------------------------------- per-method tensors


def _lokr(name, out_f, in_f, gen, torch):
    a = c = _KRON_FACTOR
    b, d = out_f // a, in_f // c
    # ΔW[i·b+p, j·d+q] = w1[i,j]·W2[p,q]; var(ΔW) = var(w1)·r·var(w2_b) = 0.25/in (like the LoRA fixture)
    w1 = torch.randn((a, c), generator=gen)
    w2_a = torch.randn((b, _RANK), generator=gen)
    w2_b = torch.randn((_RANK, d), generator=gen) * math.sqrt(0.25 / (in_f * _RANK))
    return {
        f"{name}.lokr_w1": w1,
        f"{name}.lokr_w2_a": w2_a,
        f"{name}.lokr_w2_b": w2_b,
        f"{name}.alpha": torch.tensor(float(_RANK)),
    }


def _loha(name, out_f, in_f, gen, torch):
    # each product (w_a @ w_b) has per-entry std (0.25/in)^(1/4): their Hadamard product has var 0.25/in
    std_b = math.sqrt(0.5 / (math.sqrt(in_f) * _RANK))
    out = {}
    for i in (1, 2):
        out[f"{name}.hada_w{i}_a"] = torch.randn((out_f, _RANK), generator=gen)
        out[f"{name}.hada_w{i}_b"] = torch.randn((_RANK, in_f), generator=gen) * std_b
    out[f"{name}.alpha"] = torch.tensor(float(_RANK))
    return out


def _oft(name, out_f, in_f, gen, torch):
    n = out_f // _OFT_BLOCK
    blocks = torch.randn((n, _OFT_BLOCK, _OFT_BLOCK), generator=gen) * _OFT_STD
    return {f"{name}.oft_blocks": blocks, f"{name}.alpha": torch.tensor(_OFT_CONSTRAINT)}


_BUILDERS = {"lokr": _lokr, "loha": _loha, "oft": _oft}
_NETWORK_ARGS = {
    "lokr": '{"algo": "lokr", "factor": "8", "preset": "attn-mlp"}',
    "loha": '{"algo": "loha", "preset": "attn-mlp"}',
    "oft": '{"algo": "diag-oft", "block_size": "8", "constraint": "0.01", "preset": "attn-mlp"}',
}


def _targets(checkpoint: Path):
    """(kohya name -> (out, in)) for the UNet and CLIP targets, from ComfyUI's own key maps of the checkpoint."""
    import comfy.sd

    ts = tiny_sd15()
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False)
    unet_names, te_names = ts.lora_targets(model, clip)
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    shapes.update({k: tuple(v.shape) for k, v in clip.cond_stage_model.state_dict().items()})
    targets = {name: shapes[key][:2] for name, key in list(unet_names.items()) + list(te_names.items())}
    return targets, len(unet_names), len(te_names)


def make_demo_adapters(
    out_dir: Path | str = FIXTURE_CACHE, checkpoint: Path | str | None = None, methods=None
) -> dict[str, Path]:
    """Write (or reuse) the demo adapter of each method into ``out_dir``; returns {method: path}."""
    import torch

    out_dir = Path(out_dir)
    checkpoint = Path(checkpoint) if checkpoint is not None else make_checkpoint()
    methods = list(methods or DEMO_ADAPTERS)
    paths = {m: out_dir / DEMO_ADAPTERS[m] for m in methods}
    todo = [m for m in methods if not _is_current(paths[m], _marker(m, checkpoint))]
    if not todo:
        return paths

    ts = tiny_sd15()
    if "lora" in todo:  # the LoRA fixture's own generator, another seed and marker
        tmp = ts.make_tiny_lora(out_dir / f".{DEMO_ADAPTERS['lora']}.src", checkpoint, seed=_SEEDS["lora"])
        from safetensors.torch import load_file

        meta = ts.read_safetensors_metadata(tmp) or {}
        meta.update(_marker("lora", checkpoint))
        meta.update({"modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": "LyCO demo LoRA"})
        ts._save_atomic(load_file(str(tmp)), paths["lora"], meta)
        tmp.unlink()
        todo.remove("lora")
    if not todo:
        return paths

    targets, n_unet, n_te = _targets(checkpoint)
    for method in todo:
        gen = torch.Generator(device="cpu").manual_seed(_SEEDS[method])
        tensors = {}
        for name, (out_f, in_f) in sorted(targets.items()):
            for key, t in _BUILDERS[method](name, out_f, in_f, gen, torch).items():
                tensors[key] = t.to(torch.float16).contiguous()
        meta = {
            **_marker(method, checkpoint),
            "ss_network_module": "lycoris.kohya",
            "ss_network_dim": str(_OFT_BLOCK if method == "oft" else _RANK),
            "ss_network_alpha": str(_OFT_CONSTRAINT if method == "oft" else _RANK),
            "ss_network_args": _NETWORK_ARGS[method],
            "modelspec.architecture": "stable-diffusion-v1/lycoris",
            "modelspec.title": f"LyCO demo {method}",
            "modelspec.trigger_phrase": f"lyco {method} demo",
            "lyco.unet_modules": str(n_unet),
            "lyco.te_modules": str(n_te),
            "lyco.note": "random weights for the tiny SD1.5 test checkpoint; demo/test fixture only",
        }
        ts._save_atomic(tensors, paths[method], meta)
    return paths


def link_into(src: Path, dest_dir: Path, name: str | None = None) -> Path:
    """Symlink ``src`` into ``dest_dir`` (replacing a stale link); returns the link."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (name or Path(src).name)
    target = Path(src).resolve()
    if dest.is_symlink() and Path(dest).resolve() == target:
        return dest
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(target)
    return dest


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Generate the tiny SD1.5 checkpoint and the demo adapters.")
    p.add_argument("--out", default=str(FIXTURE_CACHE), help="output folder (default: .cache/fixtures)")
    p.add_argument("--checkpoints", help="also link the checkpoint into this folder")
    p.add_argument("--loras", help="also link the adapters into this folder")
    a = p.parse_args(argv)

    boot = comfy_bootstrap()
    boot.prepare_import(boot.ensure_comfyui_root())
    out = Path(a.out)
    t0 = time.perf_counter()
    ckpt = make_checkpoint(out / CKPT_NAME)
    t1 = time.perf_counter()
    adapters = make_demo_adapters(out, ckpt)
    t2 = time.perf_counter()
    print(f"{ckpt} ({ckpt.stat().st_size / 2**20:.1f} MiB, {t1 - t0:.1f} s)")
    for m, path in adapters.items():
        print(f"{path} ({path.stat().st_size / 2**20:.2f} MiB)")
    print(f"adapters: {t2 - t1:.1f} s")
    if a.checkpoints:
        link_into(ckpt, Path(a.checkpoints))
    if a.loras:
        for path in adapters.values():
            link_into(path, Path(a.loras))
    return 0


if __name__ == "__main__":
    sys.exit(main())
