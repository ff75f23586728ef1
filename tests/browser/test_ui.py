"""The pack's frontend in a real browser: Debian chromium (headless, via Python playwright) on a real ComfyUI server
started by the host harness, with the tiny SD1.5 checkpoint and the demo adapters. Every test runs twice, once per
renderer of the frontend (conftest ``page``: ``classic`` LiteGraph canvas, ``vue`` "Nodes 2.0" DOM nodes).

Checked: our extensions register and our JS is served; dropping LyCOLoadAdapter and choosing a demo file fills the
info panel with its method and rank; a strength field steps by 0.01 and takes a typed value (canvas arrows and
prompt, or the Vue node's input); the block-weight editor writes the text and reads hand edits back; the stack
editor adds, toggles and reorders rows; the stack's JSON text stays hidden and our panels have a sensible size inside
their node; the example workflow queued from the UI produces an image, its with | without | difference preview and
our summary in the node; a graph of our nodes runs; the Templates dialog shows every template's thumbnail (HTTP 200,
a loaded image); every template, loaded and queued from the page, runs and leaves no two nodes overlapping; no console
or page error comes from our files. Screenshots:
test-artifacts/browser/<name>-<renderer>-fe<frontend version>.png.

Graphs are emptied with ``lycoTest.reset()``, which keeps node ids from being used again and waits a frame before
nodes are added. The frontends trip over a reused id after ``graph.clear()`` (loading a workflow is not affected):
the Vue renderer keys its node components by node id and patches a node removed and another added under the same id
in one tick in place, so the new node's DOM widgets are never mounted (1.32.9, 1.49.6); and 1.49.6 keeps widget
values by (graph, node id, widget name), so a new node gets the old node's values.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import comfy_bootstrap
import workflow

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK = "ComfyUI-LyCO"
OUR_EXTENSIONS = {"lyco.nodes", "lyco.infoPanel", "lyco.blockEditor", "lyco.stack"}
OUR_NODES = {
    "LyCOLoadAdapter",
    "LyCOLoadAdapterModelOnly",
    "LyCOLoadLoKr",
    "LyCOLoadLoHa",
    "LyCOLoadOFT",
    "LyCOLoadLoRA",
    "LyCOAdapterInfo",
    "LyCOLoadAdapterBlockWeight",
    "LyCOAdapterStack",
}
EXAMPLE = REPO_ROOT / "example_workflows" / "lyco_load_adapter.json"
# what a fresh, offline user dir logs by itself (matched in the message's text or URL)
# Frontend 1.49.6 logs "ComfyApp graph accessed before initialization" itself while it starts (a watcher of its
# own; it is logged with every file of ours replaced by an empty module too). It can only be logged before the graph
# exists, and the page fixture waits for the graph, so no test step can hide behind it. Frontend 1.58.1 asks
# huggingface.co for the default workflow's model files, which an offline machine cannot reach.
EXPECTED_NOISE = (
    "/user.css",
    "/favicon.ico",
    "/api/userdata",
    "https://api.comfy.org/",
    "TypeError: Cannot read properties of undefined (reading 'id')\n    at onChange ",
    "ComfyApp graph accessed before initialization",
    "https://huggingface.co/",
)

JS_HELPERS = """
window.lycoTest = {
  app: window.comfyAPI.app.app,
  add(type, x, y, size = null) {   // size is set before the node joins the graph (1.32's Vue renderer reads it once)
    const node = window.LiteGraph.createNode(type);
    node.pos = [x, y];
    if (size) node.setSize(size);
    this.app.graph.add(node);
    return node.id;
  },
  async reset(offset = [40, 120], scale = 1) {  // an empty graph, new node ids, one frame later (see docstring)
    const graph = this.app.graph, last = graph.state?.lastNodeId ?? graph.last_node_id;
    graph.clear();
    if (graph.state) graph.state.lastNodeId = last; else graph.last_node_id = last;
    this.app.canvas.ds.scale = scale; this.app.canvas.ds.offset = offset;
    await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
  },
  node(id) { return this.app.graph.getNodeById(id); },
  widget(id, name) { return this.node(id).widgets.find((w) => w.name === name); },
  pick(id, name, value) {          // what the canvas does when a combo entry is chosen
    const w = this.widget(id, name);
    w.value = value;
    w.callback?.(value, this.app.canvas, this.node(id));
  },
  panel(id, name) { return this.widget(id, name)?.element; },
  vue() { return !!window.LiteGraph.vueNodesMode; },
  rect(el) { const r = el.getBoundingClientRect(); return { x: r.x, y: r.y, width: r.width, height: r.height }; },
  nodeElement(id) { return document.querySelector(`[data-node-id="${CSS.escape(String(id))}"]`); },
  widgetElement(id, name) {        // Vue renderer: the element that shows a (non-DOM) widget, e.g. a slider
    const node = this.nodeElement(id), q = CSS.escape(name);
    return node?.querySelector(`[data-slot="slider"][aria-label="${q}"]`)
      ?? node?.querySelector(`[data-widget-name="${q}"]`) ?? null;
  },
  box(id, name) {                  // the widget's rectangle in page pixels (Vue: null until the node is mounted)
    if (this.vue()) {
      const el = this.widgetElement(id, name);
      return el ? this.rect(el) : null;
    }
    const canvas = this.app.canvas, node = this.node(id), w = this.widget(id, name);
    const rect = canvas.canvas.getBoundingClientRect();
    const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] + w.y]);
    const scale = canvas.ds.scale;
    return { x: rect.left + x, y: rect.top + y, width: node.size[0] * scale,
             height: (w.computedHeight ?? window.LiteGraph.NODE_WIDGET_HEIGHT) * scale };
  },
  nodeBox(id) {                    // the node's rectangle in page pixels, title included
    if (this.vue()) {
      const el = this.nodeElement(id);
      return el ? this.rect(el) : null;
    }
    const canvas = this.app.canvas, node = this.node(id), scale = canvas.ds.scale;
    const rect = canvas.canvas.getBoundingClientRect(), title = window.LiteGraph.NODE_TITLE_HEIGHT;
    const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
    return { x: rect.left + x, y: rect.top + y, width: node.size[0] * scale, height: (node.size[1] + title) * scale };
  },
};
"""


@pytest.fixture(scope="module")
def ui(page):
    page.evaluate(f"() => {{ {JS_HELPERS} }}")  # returns nothing (the helpers object is not serializable)
    page.evaluate("async () => { await lycoTest.reset(); }")
    return page


def shot(page, artifacts, name: str) -> Path:
    page.mouse.move(800, 985)  # off the nodes: no hover tooltip in the picture
    page.evaluate("() => lycoTest.app.canvas.setDirty(true, true)")
    page.wait_for_timeout(300)
    path = artifacts / f"{name}-{page.lyco_renderer}-fe{page.lyco_frontend}.png"
    page.screenshot(path=str(path))
    return path


def wait_box(page, node_id, widget: str, timeout: int = 10_000) -> dict:
    """The widget's rectangle in page pixels, once the renderer shows it."""
    page.wait_for_function(f"() => !!lycoTest.box({json.dumps(node_id)}, {json.dumps(widget)})", timeout=timeout)
    return page.evaluate(f"() => lycoTest.box({json.dumps(node_id)}, {json.dumps(widget)})")


def wait_panel(page, node_id: int, widget: str, state: str = "ready", timeout: int = 20_000):
    page.wait_for_function(f"() => lycoTest.panel({node_id}, '{widget}')?.dataset.state === '{state}'", timeout=timeout)
    return page.evaluate(f"() => lycoTest.panel({node_id}, '{widget}').innerText")


def wait_summary(page, node_id, timeout: int = 60_000) -> str:
    """The node's run summary once it is on screen (a visible panel inside the node); its text."""
    page.wait_for_function(
        f"""() => {{
        const el = lycoTest.node({node_id}).lycoSummary;
        if (!el?.textContent || !el.isConnected) return false;
        const r = el.getBoundingClientRect(), n = lycoTest.nodeBox({node_id});
        return r.width > 100 && r.height > 10 && !!n && r.left >= n.x - 1 && r.right <= n.x + n.width + 1
            && r.top >= n.y - 1 && r.bottom <= n.y + n.height + 1;
    }}""",
        timeout=timeout,
    )
    return page.evaluate(f"() => lycoTest.node({node_id}).lycoSummary.textContent")


def wait_history(server, before: set, timeout: float = 120.0) -> dict:
    """The first prompt that was not in ``before`` once completed; its history entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = workflow.http_json(server.url, "/history") or {}
        for prompt_id, entry in history.items():
            status = entry.get("status") or {}
            if prompt_id not in before and (status.get("completed") or status.get("status_str") == "error"):
                return entry
        time.sleep(0.3)
    raise TimeoutError(f"no new prompt completed in {timeout} s")


# --------------------------------------------------------------------------- registration


def test_extension_registers_and_js_is_served(ui, comfy_server):
    names = set(ui.evaluate("() => lycoTest.app.extensions.map((e) => e.name)"))
    assert OUR_EXTENSIONS <= names
    served = workflow.http_json(comfy_server.url, "/extensions")
    ours = sorted(p for p in served if p.startswith(f"/extensions/{PACK}/"))
    assert ours == sorted(f"/extensions/{PACK}/{p.name}" for p in (REPO_ROOT / "js").glob("*.js"))
    defs = ui.evaluate("async () => Object.keys(await (await fetch('/object_info')).json())")
    assert OUR_NODES <= set(defs)


# --------------------------------------------------------------------------- info panel, sliders


def test_info_panel_shows_method_and_rank(ui, demo, artifacts):
    node = ui.evaluate("() => lycoTest.add('LyCOLoadAdapter', 80, 80)")
    ui.evaluate(f"() => lycoTest.pick({node}, 'adapter_name', {json.dumps(demo['lokr'])})")
    ui.wait_for_function(f"() => lycoTest.panel({node}, 'lyco_info').dataset.name === {json.dumps(demo['lokr'])}")
    text = wait_panel(ui, node, "lyco_info")
    assert "LoKr ×112" in text and "rank 4" in text and "alpha 4" in text
    assert "lyco lokr demo" in text and "stable-diffusion-v1" in text
    ui.evaluate(f"() => lycoTest.pick({node}, 'adapter_name', {json.dumps(demo['oft'])})")
    ui.wait_for_function(f"() => lycoTest.panel({node}, 'lyco_info').dataset.methods === 'oft'")
    text = wait_panel(ui, node, "lyco_info")
    assert "OFT ×112" in text and "rank 8" in text
    panel = ui.evaluate(f"() => ({{...lycoTest.panel({node}, 'lyco_info').dataset}})")
    assert panel["methods"] == "oft" and panel["rank"] == "8"
    info = ui.evaluate("() => lycoTest.add('LyCOAdapterInfo', 80, 480)")  # Adapter Info has the panel too
    ui.evaluate(f"() => lycoTest.pick({info}, 'adapter_name', {json.dumps(demo['lora'])})")
    ui.wait_for_function(f"() => lycoTest.panel({info}, 'lyco_info').dataset.name === {json.dumps(demo['lora'])}")
    assert "LoRA ×112" in wait_panel(ui, info, "lyco_info")
    shot(ui, artifacts, "01_info_panel")


def test_strength_widgets_are_number_fields_with_fine_steps(ui):
    """Strengths are number fields as LoraLoader's (not −10…10 sliders where a click jumps): an arrow moves the
    value by 0.01 and a typed 0.85 sticks (classic: the canvas arrows and its value prompt; Vue: the field's input,
    ArrowUp and typing)."""
    node = ui.evaluate("() => lycoTest.add('LyCOLoadAdapter', 1000, 560)")
    widgets = ui.evaluate(
        f"""() => ['strength_model', 'strength_clip'].map((n) => {{
        const w = lycoTest.widget({node}, n);
        return {{ type: w.type, min: w.options.min, max: w.options.max, value: w.value }};
    }})"""
    )
    assert widgets == [{"type": "number", "min": -10, "max": 10, "value": 1}] * 2, widgets
    value = f"() => lycoTest.widget({node}, 'strength_model').value"
    if ui.evaluate("() => lycoTest.vue()"):
        # the labelled input (1.32: PrimeVue InputNumber) or the input inside the labelled field (1.49, 1.58)
        inside = f'[data-node-id="{node}"]'
        field = ui.locator(
            f'{inside} input[aria-label="strength_model"], {inside} [aria-label="strength_model"] input'
        ).first
        field.wait_for(state="visible", timeout=10_000)
        field.focus()
        field.press("ArrowUp")
        ui.wait_for_function(f"() => ({value})() !== 1", timeout=5_000)
        stepped = ui.evaluate(value)
        field.evaluate("(el) => el.select()")
        field.press_sequentially("0.85")  # key by key, as a person types (the field parses keystrokes)
        field.press("Enter")
        field.blur()
    else:
        ui.evaluate("() => lycoTest.app.canvas.draw(true, true)")  # lays the widgets out (sets w.y)
        box = wait_box(ui, node, "strength_model")
        middle = box["y"] + box["height"] / 2
        ui.mouse.click(box["x"] + box["width"] - 22, middle)  # the right arrow
        ui.wait_for_function(f"() => ({value})() !== 1", timeout=5_000)
        stepped = ui.evaluate(value)
        ui.mouse.click(box["x"] + box["width"] / 2, middle)  # the value: the canvas asks for a number
        prompt = ui.locator(".graphdialog input").first
        prompt.wait_for(state="visible", timeout=5_000)
        prompt.fill("0.85")
        prompt.press("Enter")
    assert stepped == pytest.approx(1.01, abs=1e-6), stepped
    deadline = time.monotonic() + 5
    while abs(ui.evaluate(value) - 0.85) > 1e-6 and time.monotonic() < deadline:
        ui.wait_for_timeout(100)
    assert ui.evaluate(value) == pytest.approx(0.85, abs=1e-6), (ui.lyco_renderer, ui.evaluate(value))


# --------------------------------------------------------------------------- block-weight editor


def test_block_editor_writes_and_reads_back(ui, artifacts):
    node = ui.evaluate("() => lycoTest.add('LyCOLoadAdapterBlockWeight', 520, 80)")
    ui.wait_for_function(f"() => lycoTest.panel({node}, 'lyco_blocks')?.dataset.state === 'ok'")
    blocks = f"lycoTest.panel({node}, 'lyco_blocks')"
    assert ui.evaluate(f"() => {blocks}.querySelectorAll('input.lyco-slider').length") == 26
    slider = ui.locator(".lyco-blocks .lyco-slider[data-block='IN01']").last
    slider.focus()
    for _ in range(4):
        slider.press("ArrowLeft")  # 1 → 0.8 in steps of 0.05
    text = ui.evaluate(f"() => lycoTest.widget({node}, 'block_weights').value").split(",")
    assert len(text) == 26 and float(text[2]) == pytest.approx(0.8) and text[0] == "1"

    ui.evaluate(f"() => lycoTest.pick({node}, 'block_weights', 'ins')")  # a hand edit: an LBW preset name
    state = ui.evaluate(f"""() => ({{set: {blocks}.dataset.set, preset: {blocks}.querySelector('.lyco-preset').value,
        IN04: {blocks}.querySelector("[data-block='IN04']").value,
        IN05: {blocks}.querySelector("[data-block='IN05']").value}})""")
    assert state == {"set": "sd15_17", "preset": "INS", "IN04": "1", "IN05": "0"}

    ui.evaluate(f"() => lycoTest.pick({node}, 'block_weights', '0.5,1,1,1,1,0,0,0,0,0,0,0')")
    assert ui.evaluate(f"() => {blocks}.dataset.set") == "sdxl_12"
    ui.evaluate(f"() => lycoTest.pick({node}, 'block_weights', '1,2')")
    assert ui.evaluate(f"() => {blocks}.dataset.state") == "invalid"
    assert ui.evaluate(f"() => lycoTest.widget({node}, 'block_weights').value") == "1,2"  # never rewritten

    ui.locator(".lyco-blocks .lyco-preset").last.select_option("OUTALL")
    assert ui.evaluate(f"() => lycoTest.widget({node}, 'block_weights').value") == "OUTALL"
    shot(ui, artifacts, "02_block_editor")


# --------------------------------------------------------------------------- stack editor


def test_stack_adds_toggles_and_reorders_rows(ui, demo, artifacts):
    node = ui.evaluate("() => lycoTest.add('LyCOAdapterStack', 1000, 80)")
    stack = ui.locator(".lyco-stack").last
    assert ui.evaluate(f"() => lycoTest.widget({node}, 'stack').hidden") is True
    stack.locator(".lyco-add").click()
    stack.locator(".lyco-add").click()
    ui.wait_for_function(f"() => lycoTest.panel({node}, 'lyco_stack').dataset.rows === '2'")
    names = stack.locator(".lyco-stack-name")
    assert [names.nth(i).input_value() for i in range(2)] == ["", ""]  # no file chosen for the user
    assert names.nth(0).locator("option").first.inner_text() == "choose an adapter…"
    stack.locator(".lyco-stack-row").nth(0).locator(".lyco-stack-name").select_option(demo["lokr"])
    stack.locator(".lyco-stack-row").nth(1).locator(".lyco-stack-name").select_option(demo["oft"])
    stack.locator(".lyco-stack-row").nth(1).locator(".lyco-number").first.fill("0.6")
    stack.locator(".lyco-stack-row").nth(1).locator(".lyco-number").first.press("Enter")
    stack.locator(".lyco-stack-row").nth(0).locator(".lyco-stack-on").click()  # row 1 off

    def rows():
        return json.loads(ui.evaluate(f"() => lycoTest.widget({node}, 'stack').value"))

    assert [(r["name"], r["on"], r["strength_model"]) for r in rows()] == [
        (demo["lokr"], False, 1),
        (demo["oft"], True, 0.6),
    ]
    stack.locator(".lyco-toggle-all").click()
    assert [r["on"] for r in rows()] == [True, True]
    stack.locator(".lyco-stack-row").nth(1).locator("button[title='move up']").click()
    assert [r["name"] for r in rows()] == [demo["oft"], demo["lokr"]]
    stack.locator(".lyco-add").click()
    ui.wait_for_function(f"() => lycoTest.panel({node}, 'lyco_stack').dataset.rows === '3'")
    assert rows()[2]["name"] == demo["oft"]  # the adapter last picked
    stack.locator(".lyco-stack-row").nth(2).locator("button[title='remove']").click()
    assert len(rows()) == 2
    shot(ui, artifacts, "03_stack")


# --------------------------------------------------------------------------- panel sizes, hidden stack text

PANEL_SIZES = """(ids) => {
  const t = lycoTest, out = {};
  for (const [key, id, name] of [['info', ids.loader, 'lyco_info'], ['blockInfo', ids.blocks, 'lyco_info'],
                                 ['blocks', ids.blocks, 'lyco_blocks'], ['stack', ids.stack, 'lyco_stack']]) {
    const el = t.panel(id, name);
    out[key] = { ...t.rect(el), node: t.nodeBox(id), connected: el.isConnected,
                 clippedY: el.scrollHeight - el.clientHeight, clippedX: el.scrollWidth - el.clientWidth };
  }
  out.sliderWidths = [...t.panel(ids.blocks, 'lyco_blocks').querySelectorAll('input.lyco-slider')]
    .map((s) => s.getBoundingClientRect().width);
  const stackWidget = t.widget(ids.stack, 'stack');
  out.stackWidget = { hidden: stackWidget.hidden, optionsHidden: stackWidget.options?.hidden };
  const node = t.nodeElement(ids.stack), panel = t.panel(ids.stack, 'lyco_stack');
  out.stackTextFields = node ? [...node.querySelectorAll('input, textarea')]
    .filter((f) => !panel.contains(f))
    .filter((f) => { const r = f.getBoundingClientRect(); return r.width > 0 && r.height > 0
                       && getComputedStyle(f).visibility !== 'hidden'; })
    .map((f) => f.value) : null;
  return out;
}"""


def test_panels_have_a_sensible_size_and_stack_text_stays_hidden(ui, demo, artifacts):
    """Both renderers: the info panel, the block editor and the stack editor are wide and tall enough, lie inside
    their node and show their content unclipped; the block sliders are not tiny; the stack's JSON text widget is
    never shown (Vue: no visible text field outside our panel, the renderer reads ``widget.options.hidden``)."""
    rows = json.dumps(
        [
            {"name": demo["lokr"], "on": True, "strength_model": 0.8, "strength_clip": 1},
            {"name": demo["oft"], "on": False, "strength_model": 1, "strength_clip": 0.5},
        ]
    )
    ui.evaluate("async () => { await lycoTest.reset(); }")
    ids = ui.evaluate(
        """([lokr, rows]) => {
      const t = lycoTest;
      const loader = t.add('LyCOLoadAdapter', 80, 80), blocks = t.add('LyCOLoadAdapterBlockWeight', 440, 80);
      const stack = t.add('LyCOAdapterStack', 960, 80);
      t.pick(loader, 'adapter_name', lokr);
      t.pick(stack, 'stack', rows);
      return {loader, blocks, stack};
    }""",
        [demo["lokr"], rows],
    )
    wait_panel(ui, ids["loader"], "lyco_info")
    wait_panel(ui, ids["blocks"], "lyco_info")
    ui.wait_for_function(f"() => lycoTest.panel({ids['blocks']}, 'lyco_blocks').dataset.state === 'ok'")
    ui.wait_for_function(f"() => lycoTest.panel({ids['stack']}, 'lyco_stack').dataset.rows === '2'")
    ui.wait_for_function(
        f"""() => [[{ids["loader"]}, 'lyco_info'], [{ids["blocks"]}, 'lyco_blocks'],
        [{ids["stack"]}, 'lyco_stack']].every(([id, name]) => lycoTest.panel(id, name).getBoundingClientRect().height
        > 40 && !!lycoTest.nodeBox(id))""",
        timeout=10_000,
    )
    ui.wait_for_timeout(300)  # let the renderer settle its layout
    sizes = ui.evaluate(PANEL_SIZES, ids)
    for key in ("info", "blockInfo", "blocks", "stack"):
        panel, node = sizes[key], sizes[key]["node"]
        assert panel["connected"] and panel["width"] >= 200 and panel["height"] > 40, (key, panel)
        assert node["x"] - 1 <= panel["x"] and panel["x"] + panel["width"] <= node["x"] + node["width"] + 1, (
            key,
            panel,
        )
        assert node["y"] - 1 <= panel["y"] and panel["y"] + panel["height"] <= node["y"] + node["height"] + 1, (
            key,
            panel,
        )
        assert panel["clippedY"] <= 1 and panel["clippedX"] <= 1, (key, panel)  # all content shown, no scrollbars
    for key in ("info", "blocks", "stack"):  # the node's last panel shown: no empty band below it (e.g. room kept
        panel, node = sizes[key], sizes[key]["node"]  # for the summary panel before the first run)
        assert node["y"] + node["height"] - (panel["y"] + panel["height"]) < 60, (key, panel)
    assert sizes["blocks"]["width"] >= 380, sizes["blocks"]  # the editor's MIN_WIDTH, less the node's padding
    assert sizes["blockInfo"]["y"] + sizes["blockInfo"]["height"] <= sizes["blocks"]["y"] + 1, sizes  # no overlap
    assert len(sizes["sliderWidths"]) == 26 and min(sizes["sliderWidths"]) >= 60, sizes["sliderWidths"]
    if ui.lyco_renderer == "vue":
        assert sizes["stackTextFields"] == [], sizes["stackTextFields"]  # the raw JSON is not on screen
    assert sizes["stackWidget"] == {"hidden": True, "optionsHidden": True}
    shot(ui, artifacts, "06_panel_sizes")


# --------------------------------------------------------------------------- running graphs from the UI


def test_example_workflow_queued_from_the_ui_makes_an_image(ui, comfy_server, artifacts):
    assert EXAMPLE.is_file(), "example_workflows/lyco_load_adapter.json is missing"
    graph = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    ui.evaluate("async (g) => { await lycoTest.app.loadGraphData(g); }", graph)
    loader = ui.evaluate("() => lycoTest.app.graph.nodes.find((n) => n.type === 'LyCOLoadAdapter').id")
    wait_panel(ui, loader, "lyco_info")
    before = set(workflow.http_json(comfy_server.url, "/history") or {})
    ui.evaluate("async () => { await lycoTest.app.queuePrompt(0, 1); }")
    entry = wait_history(comfy_server, before)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [i for i in workflow.output_images(entry["outputs"]) if i["type"] == "output"]  # SaveImage's
    assert images and (comfy_server.base.output_dir / images[0]["subfolder"] / images[0]["filename"]).is_file()
    compare = ui.evaluate("() => lycoTest.app.graph.nodes.find((n) => n.type === 'PreviewImage').id")
    shown = entry["outputs"][str(compare)]["images"]  # with | without | difference, stitched into one picture
    assert len(shown) == 1 and shown[0]["type"] == "temp", shown
    summary = wait_summary(ui, loader)
    assert "UNet 40 · CLIP 72 patched" in summary
    shot(ui, artifacts, "04_example_workflow_run")


# the README's graph (tools/stack_graph.py), built with the test helpers
GRAPH = """async (graphData) => {
  const t = lycoTest;
  await t.reset([90, 250], 0.74);
  const made = {};
  for (const spec of graphData.nodes) {
    const id = t.add(spec.type, spec.x, spec.y, spec.size);
    for (const [name, value] of Object.entries(spec.values)) t.pick(id, name, value);
    made[spec.name] = t.node(id);
  }
  for (const l of graphData.links) made[l.source].connect(l.output, made[l.target], l.input);
  return {stack: made.stack.id, blocks: made.blocks.id};
}"""


def test_graph_of_our_nodes_runs_and_shows_summaries(ui, comfy_server, demo, artifacts):
    graph = comfy_bootstrap.load_tool("stack_graph").stack_graph(comfy_server.base.ckpt_name, demo, "lyco_browser")
    # a run of its own per renderer: ComfyUI serves an unchanged graph from its cache, and a node served from the
    # cache sends no summary; the disabled LoHa row's strength differs, which changes nothing else
    stack = next(node for node in graph["nodes"] if node["name"] == "stack")
    rows = json.loads(stack["values"]["stack"])
    rows[1]["strength_model"] = {"classic": 1, "vue": 0.9}[ui.lyco_renderer]
    stack["values"]["stack"] = json.dumps(rows)
    ids = ui.evaluate(GRAPH, graph)
    wait_panel(ui, ids["blocks"], "lyco_info")
    before = set(workflow.http_json(comfy_server.url, "/history") or {})
    ui.evaluate("async () => { await lycoTest.app.queuePrompt(0, 1); }")
    entry = wait_history(comfy_server, before)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert workflow.output_images(entry["outputs"])
    summary = wait_summary(ui, ids["blocks"])
    assert "block weights: OUTALL" in summary and "OUT00 ×0 → off (unpatched)" in summary
    stacked = wait_summary(ui, ids["stack"])
    assert stacked.startswith("1. (model 0.8, clip 0.8)") and f"2. {demo['loha']}: off" in stacked
    shot(ui, artifacts, "05_our_nodes_after_run")


# --------------------------------------------------------------------------- templates dialog

TEMPLATE_STEMS = sorted(p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json"))
# each of our cards' thumbnail (the frontends show the template's name as its title and alt text)
CARD_IMAGES = """(names) => Object.fromEntries(names.map((name) => {
  const card = document.querySelector(`[data-testid="template-workflow-${CSS.escape(name)}"]`);
  const img = card?.querySelector(`img[alt="${CSS.escape(name)}"]`) ?? card?.querySelector('img')
    ?? [...document.querySelectorAll('img')].find((i) => i.alt === name || i.src.endsWith(`/${name}.jpg`));
  return [name, img ? { complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
                        card: !!card } : null];
}))"""


def _close_dialogs(page, timeout: float = 10.0) -> None:
    """Close the frontend's open dialogs (Escape, then the dialog's own close button) and wait until no dialog mask
    covers the page (a mask left behind would take the clicks of the tests after this one)."""
    page.keyboard.press("Escape")
    deadline = time.monotonic() + timeout
    while page.locator(".p-dialog-mask").count():
        if time.monotonic() > deadline:
            raise AssertionError("a dialog stays open over the page")
        page.evaluate(
            """() => {
            const dialog = [...document.querySelectorAll('.p-dialog-mask .p-dialog')].pop();
            const close = dialog && [...dialog.querySelectorAll('button')].find((b) =>
                /close/i.test(`${b.getAttribute('aria-label') ?? ''} ${b.className} ${b.dataset.pcSection ?? ''}`)
                || b.querySelector('.pi-times, [class*="icon-[lucide--x]"]'));
            close?.click();
        }"""
        )
        page.wait_for_timeout(300)


def test_templates_dialog_shows_our_thumbnails(ui, comfy_server, artifacts):
    """Templates dialog (the frontend's own Comfy.BrowseTemplates command) → our pack: every template's thumbnail
    ``/api/workflow_templates/ComfyUI-LyCO/<name>.jpg`` answers 200 and is shown (a loaded image, naturalWidth >
    0). The frontends ask for exactly that file: a custom pack's template has ``mediaSubtype: 'jpg'``."""
    for stem in TEMPLATE_STEMS:  # committed beside the workflow, small
        jpg = REPO_ROOT / "example_workflows" / f"{stem}.jpg"
        assert jpg.is_file() and 1_000 < jpg.stat().st_size < 60_000, jpg
    responses: dict[str, int] = {}

    def seen(response):
        if f"/api/workflow_templates/{PACK}/" in response.url and response.url.endswith(".jpg"):
            responses[response.url.rsplit("/", 1)[1][: -len(".jpg")]] = response.status

    ui.on("response", seen)
    try:
        ui.evaluate("async () => { await lycoTest.reset(); }")
        ui.evaluate("async () => { await lycoTest.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
        nav = ui.locator(".p-dialog, [role='dialog']").get_by_text(PACK, exact=True).first
        nav.wait_for(state="visible", timeout=20_000)
        nav.click()
        images = {}
        for stem in TEMPLATE_STEMS:  # the grid mounts (and loads) the cards near the view only: one at a time
            card = ui.locator(f'[data-testid="template-workflow-{stem}"]')
            card.wait_for(state="attached", timeout=20_000)
            card.scroll_into_view_if_needed()
            loaded = f"""() => {{ const i = ({CARD_IMAGES})([{json.dumps(stem)}])[{json.dumps(stem)}];
                return !!i && i.complete && i.naturalWidth > 0; }}"""
            try:
                ui.wait_for_function(loaded, timeout=20_000)
            except Exception:  # noqa: BLE001  (reported below with what the card shows)
                pass
            images[stem] = ui.evaluate(CARD_IMAGES, [stem])[stem]
        first = ui.locator(f'[data-testid="template-workflow-{TEMPLATE_STEMS[0]}"]')
        first.evaluate("(card) => card.scrollIntoView({block: 'center'})")  # the top of the grid in the picture
        ui.wait_for_timeout(300)
        path = artifacts / f"07_templates_dialog-{ui.lyco_renderer}-fe{ui.lyco_frontend}.png"
        ui.screenshot(path=str(path))
    finally:
        ui.remove_listener("response", seen)
        _close_dialogs(ui)
    assert responses == {stem: 200 for stem in TEMPLATE_STEMS}, responses
    bad = {k: v for k, v in images.items() if not v or not v["complete"] or v["naturalWidth"] <= 0}
    assert not bad, bad


# --------------------------------------------------------------------------- console


def test_no_errors_from_our_files(ui):
    ours = [e for e in ui.lyco_errors if f"/extensions/{PACK}/" in e["stack"] or "lyco" in e["message"].lower()]
    assert not ours, ours

    def noise(m):
        return any(n in m["text"] or n in m["url"] for n in EXPECTED_NOISE)

    flagged = [m for m in ui.lyco_console if m["type"] in ("error", "warning") and not noise(m)]
    from_us = [m for m in flagged if "lyco" in (m["url"] + m["text"]).lower()]
    assert not from_us, from_us
    unexpected = [m for m in flagged if m["type"] == "error"]
    assert not unexpected, unexpected


# --------------------------------------------------------------------------- every template, from the UI

TEMPLATES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))

# Every node's rectangle in graph units (classic: pos/size, title bar included) or page pixels (Vue: the node's DOM
# element); the same units within one list, which is all the overlap check needs.
NODE_RECTS = """() => {
  const t = lycoTest, title = window.LiteGraph.NODE_TITLE_HEIGHT;
  return t.app.graph.nodes.map((n) => {
    if (t.vue()) {
      const el = t.nodeElement(n.id);
      return el ? { id: n.id, type: n.type, title: n.title, ...t.rect(el) } : { id: n.id, type: n.type, missing: true };
    }
    const collapsed = !!n.flags?.collapsed;
    return { id: n.id, type: n.type, title: n.title, x: n.pos[0], y: n.pos[1] - title,
             width: collapsed ? (n._collapsed_width ?? 80) : n.size[0], height: (collapsed ? 0 : n.size[1]) + title };
  });
}"""


def _overlaps(rects: list[dict]) -> list[tuple[str, str, dict, dict]]:
    """Pairs of rectangles whose interiors intersect (touching edges do not count)."""
    found = []
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            if (
                a["x"] < b["x"] + b["width"]
                and b["x"] < a["x"] + a["width"]
                and a["y"] < b["y"] + b["height"]
                and b["y"] < a["y"] + a["height"]
            ):
                found.append((f"{a['type']}#{a['id']}", f"{b['type']}#{b['id']}", a, b))
    return found


def _r(rect: dict) -> str:
    return f"[{rect['x']:.0f},{rect['y']:.0f} {rect['width']:.0f}×{rect['height']:.0f}]"


def _settled_rects(page, timeout: float = 10.0) -> list[dict]:
    """The nodes' rectangles once they kept still for a second (run summaries arrive after the prompt completes and
    the frontends resize nodes over a few frames)."""
    deadline, last, still_since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        page.evaluate("() => lycoTest.app.canvas.setDirty(true, true)")
        page.wait_for_timeout(250)
        rects = page.evaluate(NODE_RECTS)
        now = time.monotonic()
        if rects != last:
            last, still_since = rects, now
        elif now - still_since >= 1.0 or now > deadline:
            return rects


def _queue_from_the_page(page, server, before: set) -> str:
    """Click the frontend's Run / Queue button; ``app.queuePrompt`` if no button is there or the click queued
    nothing. Which one queued."""
    button = page.locator('[data-testid="queue-button"] button').first
    if button.count() and button.is_visible():
        button.click()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if set(workflow.http_json(server.url, "/history") or {}) - before or (
                workflow.http_json(server.url, "/queue") or {}
            ).get("queue_running"):
                return "button"
            time.sleep(0.2)
    page.evaluate("async () => { await lycoTest.app.queuePrompt(0, 1); }")
    return "queuePrompt"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_loaded_and_queued_in_the_ui_runs_and_no_nodes_overlap(ui, comfy_server, demo, artifacts, path):
    """The template file as a person opens it (the frontend's ``loadGraphData``), queued from the page: it runs
    without a validation error, and afterwards (summaries shown) no two nodes cover each other."""
    graph = json.loads(path.read_text(encoding="utf-8"))
    ui.evaluate("async () => { await lycoTest.reset(); }")
    ui.evaluate("async (g) => { await lycoTest.app.loadGraphData(g); }", graph)
    ui.wait_for_timeout(500)
    before = set(workflow.http_json(comfy_server.url, "/history") or {})
    how = _queue_from_the_page(ui, comfy_server, before)
    entry = wait_history(comfy_server, before, timeout=300)
    assert entry["status"]["status_str"] == "success", (path.name, how, entry["status"])
    rects = _settled_rects(ui)  # after the run: summaries shown, panels grown
    shot(ui, artifacts, f"tpl_{path.stem}")
    assert not [r for r in rects if r.get("missing")], rects
    overlaps = _overlaps(rects)
    assert not overlaps, [f"{a} {_r(ra)} × {b} {_r(rb)}" for a, b, ra, rb in overlaps]
