"""``pip install .`` gives the host-agnostic core: ``lyco_core`` importable without ComfyUI and a working ``lyco``
command (the ComfyUI face is installed by cloning into ``custom_nodes/``, never as a Python package).

The wheel is built from a copy of the project files in a temporary folder (the checkout stays clean) and installed
``--no-deps --target`` beside the test environment's torch; every pip call carries the constraints file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"


def _pip(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args, "-c", str(CONSTRAINTS)]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pip_install_gives_lyco_command_and_core(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "lyco_core", source / "lyco_core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "nodes", source / "nodes", ignore=shutil.ignore_patterns("__pycache__"))  # not packaged
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), ".", cwd=source)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "lyco_core" in tops and "nodes" not in tops, tops

    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = (
        "import sys, lyco_core; assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules; "
        "print(lyco_core.__file__)"
    )
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where.stdout + where.stderr
    command = subprocess.run(
        [str(site / "bin" / "lyco"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert command.returncode == 0 and "inspect" in command.stdout, command.stdout + command.stderr


def test_registry_icon_is_a_file_of_the_repository():
    """``[tool.comfy] Icon`` (the ComfyUI registry's picture of the pack) names a file this repository holds."""
    import tomllib

    icon = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["Icon"]
    assert icon.startswith("https://raw.githubusercontent.com/"), icon
    path = icon.split("/main/", 1)[1]
    assert (REPO / path).is_file() and (REPO / path).stat().st_size > 0, path
