"""What the architecture tests read off a host after our loader ran (shared by test_architectures.py,
test_real_producers.py and test_lumina2_gqa.py): a folder in ComfyUI's loras, a file's name in its list, how many
patch entries a model clone carries, the weights after a full load, the coverage line of the node's summary, and
the per-host sections of their test-artifacts tables."""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch

# the coverage line of our loaders' summary: modules patched per side, unmatched modules, unknown keys
SUMMARY = re.compile(r"UNet (\d+) · CLIP (\d+) patched · (\d+) unmatched · (\d+) unknown keys")


@contextlib.contextmanager
def loras_folder(comfy, name: str, *caches: dict) -> Iterator[Path]:
    """A folder ``name`` in the host's ``models/loras``; afterwards ``caches`` (built models) are emptied and every
    model unloaded while ComfyUI is whole (a ModelPatcher collected at interpreter exit fails in ``__del__``)."""
    path = comfy.base.path / "models" / "loras" / name
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        for cache in caches:
            cache.clear()
        importlib.import_module("comfy.model_management").unload_all_models()


def listed(path: Path, loras_root: Path) -> str:
    """``path``'s name in ComfyUI's ``loras`` list (``<folder>/<file>`` below ``loras_root``), refreshed first."""
    import folder_paths

    folder_paths.filename_list_cache.pop("loras", None)
    name = path.relative_to(loras_root).as_posix()
    assert name in folder_paths.get_filename_list("loras"), name
    return name


def placed(patcher) -> int:
    """Patch entries a clone carries: one per module placed (a sliced module is one entry on the fused weight)."""
    return sum(len(v) for v in patcher.patches.values())


def full_load(patcher, keys, originals: dict) -> tuple[dict, bool]:
    """({key: weight} after ComfyUI's full load of ``patcher``, whether unpatching restored every original
    bit-exactly)."""
    utils = importlib.import_module("comfy.utils")
    mm = importlib.import_module("comfy.model_management")
    mm.load_models_gpu([patcher], force_full_load=True)
    try:
        got = {k: utils.get_attr(patcher.model, k).detach().clone() for k in keys}
    finally:
        patcher.unpatch_model()
    restored = all(torch.equal(utils.get_attr(patcher.model, k).detach(), originals[k]) for k in keys)
    return got, restored


def write_host_section(artifact: Path, title: str, section: str) -> None:
    """Put ``section`` (starting ``## ComfyUI <version>``) into the markdown ``artifact`` under ``# <title>``, in
    place of that host version's earlier section; other hosts' sections stay (one file covers every host run)."""
    header = f"# {title}\n\n"
    old = artifact.read_text(encoding="utf-8") if artifact.exists() else header
    version_line = section.split("\n", 1)[0] + "\n"
    sections = [s for s in re.split(r"(?m)^(?=## ComfyUI )", old.removeprefix(header)) if s.strip()]
    sections = [s for s in sections if not s.startswith(version_line)] + [section]
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(header + "\n".join(s.rstrip() + "\n" for s in sorted(sections)), encoding="utf-8")
