"""ComfyUI and this pack inside the bench process.

ComfyUI owns top-level names (``nodes``, ``utils``, ``server``, …) and our ``nodes/`` folder collides with its
``nodes.py``, so the repository root never goes on ``sys.path``: ComfyUI is imported the way the host tests do it
(``tests/host/comfy_bootstrap.py``: ``$COMFYUI_PATH`` or the cached 0.3.75 tree, CPU unless a GPU is asked for),
and the pack is imported as a package under a name of its own, so its relative imports resolve as they do when
ComfyUI loads it from ``custom_nodes/``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_lyco_bench"


@dataclass
class Host:
    root: Path  # the ComfyUI tree
    core: ModuleType  # our lyco_core
    host: ModuleType  # our nodes.host (LycoPatch, apply_adapter)
    device: object  # torch.device the bench patches on


def _by_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pack() -> ModuleType:
    """The repository imported as package ``PACKAGE`` (no sys.path entry)."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def core() -> ModuleType:
    """lyco_core alone (parts that need no ComfyUI)."""
    pack()
    return importlib.import_module(f"{PACKAGE}.lyco_core")


_HOST: list[Host] = []


def comfy(gpu: bool = False) -> Host:
    """Import ComfyUI (CPU unless ``gpu``) and our ComfyUI-facing code; once per process (later calls return the
    same Host: ComfyUI's state is process-global)."""
    if _HOST:
        return _HOST[0]
    bootstrap = _by_path("lyco_bench_comfy_bootstrap", REPO / "tests" / "host" / "comfy_bootstrap.py")
    root = bootstrap.ensure_comfyui_root()
    base = bootstrap.make_base_dir(Path(tempfile.mkdtemp(prefix="lyco-bench-base-")))
    bootstrap.prepare_import(root, base)
    from comfy.cli_args import args

    args.cpu = not gpu
    import torch
    import comfy.model_management as mm

    device = mm.get_torch_device()
    pack()
    _HOST.append(
        Host(root=root, core=core(), host=importlib.import_module(f"{PACKAGE}.nodes.host"), device=torch.device(device))
    )
    return _HOST[0]
