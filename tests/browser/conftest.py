"""Browser-test fixtures: the host harness's real ComfyUI server (tests/host/conftest.py, imported by file path and
re-exported, never copied), the demo adapters in its loras folder, and one headless chromium page on it.

``page`` (module scope, parametrized over the frontend's two renderers, ``classic`` (the LiteGraph canvas) and
``vue`` (the DOM-based "Nodes 2.0")) is a playwright page on the server's UI, opened after ``POST /settings/
Comfy.TutorialCompleted`` (else the template browser covers the canvas) and ``POST /settings/Comfy.VueNodes.Enabled``
(the frontend's own user setting for the renderer, put back as it was afterwards), and ready once our extension set
``window.__lycoReady``. A frontend that does not define that setting skips the ``vue`` run, naming its version.
``page.lyco_renderer`` and ``page.lyco_frontend`` (the frontend's version) say what runs. Every console message and
page error is recorded on ``page.lyco_console`` / ``page.lyco_errors``. Screenshots go to ``test-artifacts/browser/``
(gitignored). Chromium is Debian's (``/usr/bin/chromium``, installed by scripts/setup_env.sh); ``playwright install``
is never used.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HOST_TESTS = Path(__file__).resolve().parents[1] / "host"
if str(HOST_TESTS) not in sys.path:
    sys.path.append(str(HOST_TESTS))  # comfy_bootstrap, tiny_sd15, workflow, demo_files (no names ComfyUI owns)


def _host_conftest():
    spec = importlib.util.spec_from_file_location("lyco_host_conftest", HOST_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_host = _host_conftest()
comfy_root = _host.comfy_root
_comfy_imports = _host._comfy_imports
tiny_checkpoint = _host.tiny_checkpoint
tiny_lora = _host.tiny_lora
comfy_base = _host.comfy_base
comfy_server = _host.comfy_server
pytest_terminal_summary = _host.pytest_terminal_summary

import comfy_bootstrap  # noqa: E402  (needs HOST_TESTS on sys.path)
import demo_files  # noqa: E402
import workflow  # noqa: E402

chromium = comfy_bootstrap.load_tool("chromium")
CHROMIUM = chromium.CHROMIUM
ARTIFACTS = HOST_TESTS.parents[1] / "test-artifacts" / "browser"
READY_TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def demo(comfy_base, tiny_checkpoint) -> dict[str, str]:
    """{method: adapter name} of the demo adapters, linked into the server's loras folder."""
    return demo_files.link_demo_adapters(comfy_base.path, tiny_checkpoint)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


RENDERERS = ("classic", "vue")
VUE_SETTING = "Comfy.VueNodes.Enabled"  # the frontend's renderer switch (1.32.9, 1.49.6, 1.58.1 define it)


def _set_setting(url: str, setting: str, value) -> None:
    workflow.http_json(url, "/settings", {setting: value})  # POST /settings merges; a None value is stored as null


@pytest.fixture(scope="module", params=RENDERERS)
def page(request, comfy_server, demo):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup_env.sh as root (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    renderer = request.param
    workflow.http_json(comfy_server.url, "/settings/Comfy.TutorialCompleted", True)
    before = workflow.http_json(comfy_server.url, f"/settings/{VUE_SETTING}")
    _set_setting(comfy_server.url, VUE_SETTING, renderer == "vue")
    try:
        with sync_playwright() as pw:
            browser = chromium.launch(pw)
            try:
                context = browser.new_context(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
                tab = context.new_page()
                tab.lyco_console, tab.lyco_errors = [], []
                tab.on(
                    "console",
                    lambda m: tab.lyco_console.append(
                        {"type": m.type, "text": m.text, "url": (m.location or {}).get("url", "")}
                    ),
                )
                tab.on("pageerror", lambda e: tab.lyco_errors.append({"message": str(e), "stack": e.stack or ""}))
                tab.goto(comfy_server.url, wait_until="domcontentloaded")
                tab.wait_for_function("window.__lycoReady === true && !!window.app?.graph", timeout=READY_TIMEOUT_MS)
                state = tab.evaluate(
                    """(id) => ({
                    frontend: String(window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'),
                    defined: !!window.app.ui.settings?.settingsLookup?.[id]
                             || typeof window.LiteGraph.vueNodesMode === 'boolean',
                    vue: !!window.LiteGraph.vueNodesMode })""",
                    VUE_SETTING,
                )
                tab.lyco_renderer, tab.lyco_frontend = renderer, state["frontend"]
                if renderer == "vue" and not state["defined"]:
                    pytest.skip(f"frontend {state['frontend']} has no Vue renderer setting ({VUE_SETTING})")
                assert state["vue"] == (renderer == "vue"), (
                    f"frontend {state['frontend']}: {VUE_SETTING}={renderer == 'vue'} but LiteGraph.vueNodesMode is "
                    f"{state['vue']}"
                )
                yield tab
            finally:
                browser.close()
    finally:
        _set_setting(comfy_server.url, VUE_SETTING, before)
