"""The demo adapters of ``tools/demo_assets.py`` (LoKr, LoHa, OFT, LoRA for the tiny SD1.5) in a test base dir.

Shared by the host tests and the browser tests (which import this folder's modules by path): they see exactly the
files the demo shows. ``tools/demo_assets.py`` is imported by file path, so the repository root never enters
``sys.path`` (our ``nodes/`` package would shadow ComfyUI's ``nodes.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from comfy_bootstrap import FIXTURE_CACHE, REPO_ROOT

_MODULE = "lyco_tools_demo_assets"


def demo_assets():
    """``tools/demo_assets.py`` as a module (imported once)."""
    module = sys.modules.get(_MODULE)
    if module is None:
        spec = importlib.util.spec_from_file_location(_MODULE, REPO_ROOT / "tools" / "demo_assets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE] = module
        spec.loader.exec_module(module)
    return module


def link_demo_adapters(base_dir: Path, checkpoint: Path) -> dict[str, str]:
    """Make (or reuse, cached under .cache/fixtures) the demo adapters and link them into ``base_dir``'s loras
    folder; returns {method: name as ComfyUI lists it}. Needs ComfyUI importable (``comfy_bootstrap``)."""
    assets = demo_assets()
    paths = assets.make_demo_adapters(FIXTURE_CACHE, checkpoint)
    loras = Path(base_dir) / "models" / "loras"
    return {method: assets.link_into(path, loras).name for method, path in paths.items()}
