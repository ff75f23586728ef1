#!/usr/bin/env python3
"""Pictures of the pack taken from the real UI: the template thumbnails ``example_workflows/<name>.jpg`` (what the
frontend's Templates dialog shows for each of our templates) and the README screenshot ``docs/lyco_nodes.png``.

Each picture is the graph as a person sees it in the demo after pressing Run: the template (or, for the README, a
graph of Adapter Stack → Load Adapter (block weights) → sampler) is loaded with the frontend's ``loadGraphData``,
queued, and photographed once its summaries and images are shown, in the frontend's default (classic canvas)
renderer. Headless Debian chromium through Python playwright, as the browser tests use it (``/usr/bin/chromium``;
``playwright install`` is never used).

Usage (from the repository root, with the demo's environment: ``.venv`` and a host from tools/comfyui_env.py)::

    python tools/make_thumbnails.py                     # start the demo (scripts/demo.sh) on a free port, with its
                                                        # own base directory .cache/thumbnails/, take every picture
    python tools/make_thumbnails.py --url http://127.0.0.1:8188   # use a demo that runs already
    python tools/make_thumbnails.py --only lyco_load_adapter      # some templates (file stems) ...
    python tools/make_thumbnails.py --no-readme                   # ... or no README screenshot
    python tools/make_thumbnails.py --no-thumbnails               # only the README screenshot

Thumbnails are small JPEGs (``THUMB_SIZE``, quality ``JPEG_QUALITY``): ComfyUI serves every file of a pack's
``example_workflows/`` under ``/api/workflow_templates/<pack folder>/``, and the frontend asks for
``<template name>.jpg`` there.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import demo_assets  # tools/ is sys.path[0] when run as a script
from chromium import CHROMIUM, launch
from stack_graph import stack_graph

REPO_ROOT = demo_assets.REPO_ROOT
TEMPLATES = REPO_ROOT / "example_workflows"
README_SHOT = REPO_ROOT / "docs" / "lyco_nodes.png"
VIEWPORT = {"width": 1600, "height": 1000}  # the README screenshot's page
# Thumbnails: the dialogs (1.32.9, 1.49.6, 1.58.1) show them in square cards, so the graph is fitted into a square of a
# large page, where the canvas still draws every widget and text (zoomed far out it draws plain boxes), and that
# square is scaled down.
THUMB_VIEWPORT = {"width": 2000, "height": 2000}
THUMB_STAGE = {"x": 120, "y": 140, "width": 1760, "height": 1760}
THUMB_SIZE = (480, 480)
JPEG_QUALITY = 72
MAX_THUMB_BYTES = 60_000
# the part of the README page the graph is fitted into: clear of the frontend's menus, side bar and canvas controls
STAGE = {"x": 80, "y": 70, "width": 1440, "height": 900}
SETTINGS = {  # user settings for a clean picture: the template browser not opened, classic renderer, no minimap
    "Comfy.TutorialCompleted": True,
    "Comfy.VueNodes.Enabled": False,
    "Comfy.Minimap.Visible": False,
}
RUN_TIMEOUT = 600.0

# Fit the whole graph (title bars included) into a rectangle of the page; returns the graph's bounds.
FIT = """(stage) => {
  const app = window.comfyAPI.app.app, canvas = app.canvas, title = window.LiteGraph.NODE_TITLE_HEIGHT;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph.nodes) {
    const [x, y, w, h] = n.getBounding ? n.getBounding() : [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title];
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  const pad = 20, rect = canvas.canvas.getBoundingClientRect();
  const w = x1 - x0 + 2 * pad, h = y1 - y0 + 2 * pad;
  const scale = Math.min(stage.width / w, stage.height / h, 1.25);
  canvas.ds.scale = scale;
  // page position of a graph point: rect.left + (p + offset) * scale
  canvas.ds.offset = [(stage.x - rect.left + (stage.width - w * scale) / 2) / scale - x0 + pad,
                      (stage.y - rect.top + (stage.height - h * scale) / 2) / scale - y0 + pad];
  canvas.setDirty(true, true);
  return { x0, y0, x1, y1, scale };
}"""

# The README graph (tools/stack_graph.py), built in the page with LiteGraph's own calls.
README_GRAPH = """async (graphData) => {
  const app = window.comfyAPI.app.app, graph = app.graph;
  graph.clear();
  await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
  const made = {};
  for (const spec of graphData.nodes) {
    const node = window.LiteGraph.createNode(spec.type);
    node.pos = [spec.x, spec.y];
    if (spec.size) node.setSize(spec.size);
    graph.add(node);
    for (const [name, value] of Object.entries(spec.values)) {
      const w = node.widgets.find((w) => w.name === name);
      w.value = value;
      w.callback?.(value, app.canvas, node);
    }
    made[spec.name] = node;
  }
  for (const l of graphData.links) made[l.source].connect(l.output, made[l.target], l.input);
}"""


def _log(msg: str) -> None:
    print(f"[thumbnails] {msg}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_demo(base: Path) -> tuple[subprocess.Popen, str]:
    """scripts/demo.sh on a free port with its own base directory, in a process group of its own."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PORT": str(port)}
    log = open(base.parent / f"{base.name}.log", "w", encoding="utf-8")  # noqa: SIM115 (kept open for the child)
    proc = subprocess.Popen(
        ["bash", str(REPO_ROOT / "scripts" / "demo.sh"), "--base", str(base)],
        cwd=str(REPO_ROOT),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server_up = demo_assets.host_workflow().server_up
    deadline = time.monotonic() + RUN_TIMEOUT
    while not server_up(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_demo(proc)
            raise SystemExit(f"[thumbnails] the demo did not start; see {log.name}")
        time.sleep(0.5)
    _log(f"demo up at {url} (log: {log.name})")
    return proc, url


def _stop_demo(proc: subprocess.Popen) -> None:
    """SIGINT to the demo's own process group (its clean stop), then SIGTERM, then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


def _run_from_page(page, url: str) -> dict:
    """Queue the page's graph (``app.queuePrompt``) and wait for that prompt's history entry."""
    http_json = demo_assets.host_workflow().http_json
    before = set(http_json(url, "/history") or {})
    page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        for prompt_id, entry in (http_json(url, "/history") or {}).items():
            status = entry.get("status") or {}
            if prompt_id not in before and (status.get("completed") or status.get("status_str") == "error"):
                if status.get("status_str") != "success":
                    raise SystemExit(f"[thumbnails] the run failed: {json.dumps(status)[:2000]}")
                return entry
        time.sleep(0.3)
    raise SystemExit(f"[thumbnails] no run completed in {RUN_TIMEOUT:.0f} s")


def _settle(page, ms: int = 1500) -> None:
    """Let summaries, images and node sizes arrive (the frontends resize nodes over a few frames)."""
    page.mouse.move(5, VIEWPORT["height"] - 5)  # no hover tooltip in the picture
    page.wait_for_timeout(ms)
    page.evaluate("() => window.comfyAPI.app.app.canvas.setDirty(true, true)")
    page.wait_for_timeout(300)


def _jpeg(png: bytes, size: tuple[int, int]) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").resize(size, Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
    return out.getvalue()


def thumbnail(page, url: str, path: Path) -> Path:
    graph = json.loads(path.read_text(encoding="utf-8"))
    page.evaluate("async (g) => { await window.comfyAPI.app.app.loadGraphData(g); }", graph)
    _settle(page, 1000)
    _run_from_page(page, url)
    _settle(page)
    page.evaluate(FIT, THUMB_STAGE)
    _settle(page, 500)
    data = _jpeg(page.screenshot(clip=THUMB_STAGE), THUMB_SIZE)
    if len(data) > MAX_THUMB_BYTES:
        raise SystemExit(f"[thumbnails] {path.stem}.jpg would be {len(data)} bytes (> {MAX_THUMB_BYTES})")
    out = path.with_suffix(".jpg")
    out.write_bytes(data)
    _log(f"{out.relative_to(REPO_ROOT)} ({len(data) // 1024} KB)")
    return out


def readme_screenshot(page, url: str, out: Path = README_SHOT) -> Path:
    page.evaluate(README_GRAPH, stack_graph(demo_assets.CKPT_NAME, demo_assets.DEMO_ADAPTERS, "lyco_readme"))
    _settle(page)
    _run_from_page(page, url)
    _settle(page, 2000)
    bounds = page.evaluate(FIT, STAGE)
    _settle(page, 500)
    scale = bounds["scale"]
    width = round((bounds["x1"] - bounds["x0"] + 40) * scale)
    height = round((bounds["y1"] - bounds["y0"] + 40) * scale)  # the fitted graph, its 20-unit margin included
    clip = {
        "x": STAGE["x"] + (STAGE["width"] - width) / 2,
        "y": STAGE["y"] + (STAGE["height"] - height) / 2,
        "width": width,
        "height": height,
    }
    out.write_bytes(page.screenshot(clip=clip))
    _log(f"{out.relative_to(REPO_ROOT)} ({width}×{height}, {out.stat().st_size // 1024} KB)")
    return out


def _open(browser, url: str, viewport: dict):
    """A page on the UI, once our extension and the graph are there."""
    page = browser.new_context(viewport=viewport, device_scale_factor=1).new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_function("window.__lycoReady === true && !!window.app?.graph", timeout=120_000)
    page.wait_for_timeout(1000)
    return page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running demo (default: start one on a free port)")
    p.add_argument("--base", default=str(REPO_ROOT / ".cache" / "thumbnails"), help="base directory of a started demo")
    p.add_argument("--only", nargs="*", help="template file stems (default: every example_workflows/*.json)")
    p.add_argument("--no-thumbnails", action="store_true")
    p.add_argument("--no-readme", action="store_true")
    a = p.parse_args(argv)
    if not CHROMIUM.is_file():
        raise SystemExit(f"[thumbnails] {CHROMIUM} is missing (scripts/setup_env.sh installs Debian's chromium)")
    templates = sorted(TEMPLATES.glob("*.json"))
    if a.only:
        templates = [t for t in templates if t.stem in set(a.only)]
    proc, url = (None, a.url.rstrip("/")) if a.url else _start_demo(Path(a.base).resolve())
    try:
        http_json = demo_assets.host_workflow().http_json
        if proc is not None:  # our own demo: its settings are ours to choose
            http_json(url, "/settings", SETTINGS)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                if not a.no_thumbnails:
                    page = _open(browser, url, THUMB_VIEWPORT)
                    for path in templates:
                        thumbnail(page, url, path)
                if not a.no_readme:
                    readme_screenshot(_open(browser, url, VIEWPORT), url)
            finally:
                browser.close()
    finally:
        if proc is not None:
            _stop_demo(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
