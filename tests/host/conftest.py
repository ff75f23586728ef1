"""Session fixtures that run our pack inside a real ComfyUI: ``$COMFYUI_PATH`` (``scripts/test.sh`` sets it per
host: 0.3.75 from PyPI, 0.33.0, your own tree; see ``tools/comfyui_env.py``), else the cached 0.3.75 tree.
``$LYCO_FRONTEND_ROOT`` serves another frontend build (``main.py --front-end-root``).

Run these tests in their own pytest process::

    python -m pytest tests/host -q

ComfyUI's state is process-global and its top-level ``nodes`` module collides with our
``nodes/`` package, so this directory never puts the repository root on ``sys.path`` and
never imports ``lyco_core`` or our ``nodes`` directly: the pack is loaded only through
ComfyUI's own custom-node loader (in-process) or by a ComfyUI server (subprocess).

Fixtures (all session-scoped):

``comfy_root``   Path of the ComfyUI tree (``$COMFYUI_PATH`` or the cached 0.3.75 tree).
``comfy_base``   ``ComfyBase``: a temporary ``--base-directory`` (models/checkpoints with the
                 tiny SD1.5 checkpoint, models/loras with its kohya LoRA, custom_nodes/
                 ComfyUI-LyCO -> repo root, input/ output/ temp/ user/) plus the file names.
``tiny_checkpoint`` / ``tiny_lora``  Paths of the cached fixture files (.cache/fixtures/).
``comfy``        ``ComfyInProcess``: ComfyUI imported in this process (CPU), builtin extra
                 nodes initialised, a ``PromptServer`` instance (so packs may register
                 routes), our pack loaded via ``nodes.load_custom_node``; exposes the ``nodes``
                 module, the pack load result/log and our registered node classes.
``comfy_server`` ``ComfyServer``: ``python main.py --cpu ...`` on a free port with the base dir;
                 base URL, JSON helpers and the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import comfy_bootstrap
import workflow
from comfy_bootstrap import FIXTURE_CACHE, PACK_DIR_NAME, REPO_ROOT

CKPT_NAME = "tiny_sd15.safetensors"
LORA_NAME = "tiny_sd15_lora.safetensors"
SERVER_BOOT_TIMEOUT = 120.0
PARITY_DIR = "lyco_parity"

TIMINGS: dict[str, float] = {}


def _timed(label: str):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            TIMINGS[label] = time.perf_counter() - self.t0

    return _T()


def host_label() -> str:
    """The ComfyUI this process tests on: version, tree and frontend, for headers and summaries."""
    env = comfy_bootstrap.load_comfyui_env()
    root = env.ensure_comfyui()
    frontend = os.environ.get("LYCO_FRONTEND_ROOT")
    return f"ComfyUI {env.read_version(root) or 'unknown'} at {root}" + (
        f", frontend from {frontend}" if frontend else ", its own frontend package"
    )


def pytest_report_header(config):
    return f"host: {host_label()}"


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_sep("-", f"ran on {host_label()}")
    if TIMINGS:
        terminalreporter.write_sep("-", "ComfyUI host fixture timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k:<34} {v:7.2f} s")


# --------------------------------------------------------------------------- data classes


@dataclass
class ComfyBase:
    path: Path  # the --base-directory
    ckpt_name: str  # name as ComfyUI lists it in "checkpoints"
    lora_name: str  # name as ComfyUI lists it in "loras"
    pack_path: Path  # <base>/custom_nodes/ComfyUI-LyCO (symlink to the repo root)

    @property
    def output_dir(self) -> Path:
        return self.path / "output"


@dataclass
class ComfyInProcess:
    root: Path
    base: ComfyBase
    nodes: object  # ComfyUI's `nodes` module
    server: object | None  # server.PromptServer instance (not listening)
    loop: asyncio.AbstractEventLoop
    builtin_import_failed: list  # comfy_extras modules that failed to import
    pack_loaded: bool  # nodes.load_custom_node(...) result for our pack
    pack_module_name: str  # sys.modules key ComfyUI used for the pack
    pack_log: list[str] = field(default_factory=list)  # WARNING+ log lines while the pack loaded
    lyco_nodes: dict = field(default_factory=dict)  # id -> class, ids starting with "LyCO"

    @property
    def pack_module(self):
        return sys.modules.get(self.pack_module_name)

    def run(self, coro):
        """Run a coroutine on the event loop the PromptServer was created with."""
        return self.loop.run_until_complete(coro)


@dataclass
class ComfyServer:
    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    base: ComfyBase

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in server log after {timeout} s")
            time.sleep(0.2)

    def get_json(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post_json(self, path: str, data, timeout: float = 30.0):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(data).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        try:
            self.lines.append(record.getMessage())
        except Exception:  # pragma: no cover
            self.lines.append(repr(record.msg))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    with _timed("comfyui_env (ensure tree)"):
        root = comfy_bootstrap.ensure_comfyui_root()
    return root


@pytest.fixture(scope="session")
def _comfy_imports(comfy_root, tmp_path_factory) -> Path:
    """Make ComfyUI importable in this process with a fresh base dir; returns the base dir."""
    base = comfy_bootstrap.make_base_dir(tmp_path_factory.mktemp("comfy-base"))
    comfy_bootstrap.prepare_import(comfy_root, base)
    return base


@pytest.fixture(scope="session")
def tiny_checkpoint(_comfy_imports) -> Path:
    import tiny_sd15

    with _timed("tiny checkpoint (make/reuse)"):
        return tiny_sd15.make_tiny_sd15(FIXTURE_CACHE / CKPT_NAME, seed=0)


@pytest.fixture(scope="session")
def tiny_lora(tiny_checkpoint) -> Path:
    import tiny_sd15

    with _timed("tiny kohya LoRA (make/reuse)"):
        return tiny_sd15.make_tiny_lora(FIXTURE_CACHE / LORA_NAME, tiny_checkpoint)


@pytest.fixture(scope="session")
def comfy_base(_comfy_imports, tiny_checkpoint, tiny_lora) -> ComfyBase:
    base = _comfy_imports
    comfy_bootstrap.link_into(tiny_checkpoint, base / "models" / "checkpoints", CKPT_NAME)
    comfy_bootstrap.link_into(tiny_lora, base / "models" / "loras", LORA_NAME)
    return ComfyBase(
        path=base, ckpt_name=CKPT_NAME, lora_name=LORA_NAME, pack_path=base / "custom_nodes" / PACK_DIR_NAME
    )


@pytest.fixture(scope="session")
def comfy(comfy_root, comfy_base) -> ComfyInProcess:
    t0 = time.perf_counter()
    import folder_paths
    import execution  # noqa: F401  (main.py's import order: execution, server, nodes)
    import server
    import nodes

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    prompt_server = server.PromptServer(loop)
    failed = loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    folder_paths.add_model_folder_path("checkpoints", str(comfy_base.path / "models" / "checkpoints"))
    folder_paths.add_model_folder_path("loras", str(comfy_base.path / "models" / "loras"))
    TIMINGS["in-process boot (import+builtin)"] = time.perf_counter() - t0

    # Load our pack exactly as init_external_custom_nodes would (core ids are protected).
    pack_path = str(comfy_base.pack_path)
    handler = _ListHandler()
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    t1 = time.perf_counter()
    try:
        loaded = loop.run_until_complete(
            nodes.load_custom_node(pack_path, ignore=set(nodes.NODE_CLASS_MAPPINGS), module_parent="custom_nodes")
        )
    finally:
        root_logger.removeHandler(handler)
    TIMINGS["in-process pack load"] = time.perf_counter() - t1

    env = ComfyInProcess(
        root=comfy_root,
        base=comfy_base,
        nodes=nodes,
        server=prompt_server,
        loop=loop,
        builtin_import_failed=list(failed or []),
        pack_loaded=bool(loaded),
        pack_module_name=pack_path.replace(".", "_x_"),
        pack_log=handler.lines,
        lyco_nodes={k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("LyCO")},
    )
    yield env
    loop.close()
    asyncio.set_event_loop(None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def comfy_server(comfy_root, comfy_base) -> ComfyServer:
    port = _free_port()
    base = comfy_base.path
    log_path = base / "comfyui-server.log"
    cmd = workflow.server_command(sys.executable, base, port, "--log-stdout")
    if os.environ.get("LYCO_FRONTEND_ROOT"):
        cmd += ["--front-end-root", os.environ["LYCO_FRONTEND_ROOT"]]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    log_fh = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd,
        cwd=str(comfy_root),
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=workflow.server_env(REPO_ROOT),
    )
    srv = ComfyServer(url=url, port=port, proc=proc, log_path=log_path, base=comfy_base)
    try:
        deadline = time.monotonic() + SERVER_BOOT_TIMEOUT
        while not workflow.server_up(url):
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {proc.returncode} during boot:\n{srv.log()[-6000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ComfyUI server not up after {SERVER_BOOT_TIMEOUT} s:\n{srv.log()[-6000:]}")
            time.sleep(0.25)
        TIMINGS["server boot (to /system_stats)"] = time.perf_counter() - t0
        yield srv
    finally:
        if proc.poll() is None:
            proc.terminate()  # our own PID only
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log_fh.close()


# --------------------------------------------------------------------------- parity fixtures
@contextlib.contextmanager
def one_thread():
    """Many small tensor ops: on a busy 2-core machine one intra-op thread is several times faster than two that
    wait for each other. The previous setting is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class ParityFiles:
    """The tiny checkpoint loaded in-process and one adapter file per method and layout made by the reference
    libraries for some of its real layers (``adapter_fixtures``), listed in the loras folder."""

    model: object
    clip: object
    fixtures: dict  # name -> adapter_fixtures.Fixture (lora_name set)
    originals: dict  # key -> original tensor (model dtype)
    base: dict  # key -> fp32 copy
    timings: dict


@pytest.fixture(scope="session")
def parity_files(comfy) -> ParityFiles:
    import adapter_fixtures as af
    import folder_paths

    with one_thread():
        timings = {}
        t0 = time.perf_counter()
        model, clip, _ = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)
        unet_sd, clip_sd = model.model_state_dict(), clip.cond_stage_model.state_dict()
        originals = {}
        for layer in af.LAYERS:
            sd = unet_sd if layer.side == "unet" else clip_sd
            for key in (layer.key, layer.bias_key):
                if key in sd:
                    originals[key] = sd[key].detach().clone()
        base = {k: v.float() for k, v in originals.items()}
        timings["checkpoint"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        loras_dir = comfy.base.path / "models" / "loras"
        fixtures = af.build_all(loras_dir / PARITY_DIR, base)
        timings["fixtures (lycoris + peft)"] = time.perf_counter() - t0
    # folder_paths caches listings by folder mtime; drop the cached "loras" listing so the new files show up.
    folder_paths.filename_list_cache.pop("loras", None)
    listed = set(folder_paths.get_filename_list("loras"))
    for fx in fixtures:
        fx.lora_name = fx.path.relative_to(loras_dir).as_posix()
        assert fx.lora_name in listed, f"{fx.lora_name} not listed by ComfyUI ({sorted(listed)[:5]}…)"
    return ParityFiles(
        model=model, clip=clip, fixtures={f.name: f for f in fixtures}, originals=originals, base=base, timings=timings
    )
