"""Process-wide setup for importing a real ComfyUI in this (test) process.

ComfyUI owns top-level names (``nodes``, ``server``, ``utils``, ``app``, ``execution``,
``folder_paths``, ``comfy*`` ...).  Our repository has a ``nodes/`` package too, so a process
that imports ComfyUI must never have the repository root on ``sys.path``: our pack reaches
this process only through ComfyUI's own custom-node loader.  This module therefore

* locates ``tools/comfyui_env.py`` by file path (no ``sys.path`` entry for the repo),
* removes the repository root (and ``''``/cwd when it is the repo root, as ``python -m
  pytest`` adds it) from ``sys.path`` and puts the ComfyUI root first,
* sets ``args.cpu`` (and optionally ``args.base_directory``) before anything imports
  ``comfy.model_management`` / ``folder_paths``,
* imports ``utils.install_util`` before ``nodes`` (``nodes.py`` puts ``comfy/`` first on
  ``sys.path``, after which ``utils`` would resolve to ``comfy/utils.py``).

Standard library only at import time; safe to import before ComfyUI is available.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "ComfyUI-LyCO"
FIXTURE_CACHE = REPO_ROOT / ".cache" / "fixtures"

_STATE: dict = {}


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module without touching ``sys.path``."""
    mod = sys.modules.get(f"lyco_tools_{name}")
    if mod is None:
        spec = importlib.util.spec_from_file_location(f"lyco_tools_{name}", REPO_ROOT / "tools" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


def load_comfyui_env():
    """``tools/comfyui_env.py`` (where the ComfyUI hosts are and how to set them up)."""
    return load_tool("comfyui_env")


def ensure_comfyui_root() -> Path:
    return Path(load_comfyui_env().ensure_comfyui())


def _is_repo_root(entry: str) -> bool:
    try:
        p = Path(entry or os.getcwd()).resolve()
    except OSError:
        return False
    return p == REPO_ROOT


def scrub_sys_path() -> None:
    """Drop every sys.path entry that resolves to the repository root."""
    sys.path[:] = [e for e in sys.path if not _is_repo_root(e)]


def prepare_import(comfy_root: Path | str, base_dir: Path | str | None = None) -> Path:
    """Make ``import comfy...``/``import nodes`` resolve to ``comfy_root``; idempotent.

    ``base_dir`` becomes ``args.base_directory`` (models/, custom_nodes/, input/, output/,
    temp/, user/ then live there instead of inside the pristine ComfyUI tree); it only has an
    effect on the first call, before ``folder_paths`` is imported.
    """
    comfy_root = Path(comfy_root).resolve()
    if _STATE.get("root") is not None:
        if _STATE["root"] != comfy_root:
            raise RuntimeError(f"ComfyUI already imported from {_STATE['root']}, not {comfy_root}")
        return comfy_root

    for name in ("comfy.model_management", "folder_paths", "nodes", "utils"):
        mod = sys.modules.get(name)
        if mod is not None and not str(getattr(mod, "__file__", "")).startswith(str(comfy_root)):
            raise RuntimeError(
                f"module {name!r} is already imported from {getattr(mod, '__file__', '?')}: ComfyUI cannot be "
                "imported into this process. Run the host tests in their own pytest process "
                "(`python -m pytest tests/host`), never together with tests that import lyco_core/nodes."
            )

    scrub_sys_path()
    if str(comfy_root) in sys.path:
        sys.path.remove(str(comfy_root))
    sys.path.insert(0, str(comfy_root))

    from comfy.cli_args import args  # parses [] in-process (comfy.options.args_parsing is False)

    if "comfy.model_management" in sys.modules and not args.cpu:
        raise RuntimeError("comfy.model_management was imported before args.cpu could be set")
    args.cpu = True
    if base_dir is not None:
        if "folder_paths" in sys.modules:
            raise RuntimeError("folder_paths was imported before args.base_directory could be set")
        args.base_directory = str(Path(base_dir).resolve())

    import utils.install_util  # noqa: F401  (must precede `import nodes`)

    _STATE["root"] = comfy_root
    _STATE["base"] = Path(base_dir).resolve() if base_dir is not None else None
    return comfy_root


def make_base_dir(base: Path, pack_dir: Path = REPO_ROOT) -> Path:
    """Create a ComfyUI ``--base-directory`` layout with our pack symlinked in."""
    base = Path(base)
    for sub in ("models/checkpoints", "models/loras", "custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(pack_dir, target_is_directory=True)
    return base


def link_into(src: Path, dest_dir: Path, name: str | None = None) -> Path:
    dest = Path(dest_dir) / (name or Path(src).name)
    if not dest.exists():
        dest.symlink_to(Path(src).resolve())
    return dest
