"""Our nodes in a real ComfyUI server (``main.py --cpu``), driven over HTTP like the frontend does.

One server for the session (the ``comfy_server`` fixture); the demo adapters of ``tools/demo_assets.py`` (the files
``scripts/demo.sh`` shows) and a few broken files are put in its ``models/loras`` folder. Covered: registration
(``/object_info``, ``/extensions``, the import log), the example workflows (widgets against ``/object_info``, served
as templates with their thumbnails, each one run, an adapter a template saves read back by ComfyUI, the demo
workflow's with | without | difference picture), strength 0 == no adapter
(bit-identical image) != strength 1, the summary in ``/history``, and clear node errors for bad files while the
server keeps serving.

Never imports the repository's ``nodes`` or ``lyco_core`` (ComfyUI owns ``nodes``); tools are loaded by file path.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import workflow
from comfy_bootstrap import PACK_DIR_NAME, REPO_ROOT
from demo_files import link_demo_adapters

OUR_NODES = {  # id -> (display name, category)
    "LyCOLoadAdapter": ("Load LyCORIS Adapter", "loaders/LyCORIS"),
    "LyCOLoadAdapterModelOnly": ("Load LyCORIS Adapter (model only)", "loaders/LyCORIS"),
    "LyCOLoadLoKr": ("Load LoKr", "loaders/LyCORIS"),
    "LyCOLoadLoHa": ("Load LoHa", "loaders/LyCORIS"),
    "LyCOLoadOFT": ("Load OFT", "loaders/LyCORIS"),
    "LyCOLoadLoRA": ("Load LoRA / LoCon", "loaders/LyCORIS"),
    "LyCOAdapterInfo": ("Adapter Info", "loaders/LyCORIS"),
}
BAD_DIR = "lyco_test_bad"
BAD = {
    "truncated": f"{BAD_DIR}/truncated_lokr.safetensors",
    "sdxl_only": f"{BAD_DIR}/sdxl_only_lora.safetensors",
    "plain": f"{BAD_DIR}/plain_weights.safetensors",
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
STEPS = 2  # the templates say 4; tests sample 2 steps to keep the run short


def _tool(name: str):
    """``tools/<name>.py`` imported by file path (the repo root never goes on sys.path here)."""
    mod_name = f"lyco_tools_{name}"
    mod = sys.modules.get(mod_name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(mod_name, REPO_ROOT / "tools" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
    return mod


mw = _tool("make_workflows")
TEMPLATE_FILES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))


# --------------------------------------------------------------------------- fixtures


def _write_bad_files(loras: Path, lokr: Path) -> None:
    import torch
    from safetensors.torch import save_file

    bad = loras / BAD_DIR
    bad.mkdir(parents=True, exist_ok=True)
    raw = lokr.read_bytes()
    (bad / Path(BAD["truncated"]).name).write_bytes(raw[: len(raw) // 2])

    g = torch.Generator().manual_seed(7)
    sdxl = {}  # kohya names of blocks only SDXL has: depth-10 transformer stacks, label_emb (adm), CLIP-G layers
    for name, (out_f, in_f) in {
        "lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q": (1280, 1280),
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2": (1280, 5120),
        "lora_unet_label_emb_0_0": (1280, 2816),
        "lora_te2_text_model_encoder_layers_25_self_attn_q_proj": (1280, 1280),
    }.items():
        sdxl[f"{name}.lora_down.weight"] = (torch.randn(4, in_f, generator=g) * 0.01).half()
        sdxl[f"{name}.lora_up.weight"] = (torch.randn(out_f, 4, generator=g) * 0.01).half()
        sdxl[f"{name}.alpha"] = torch.tensor(4.0).half()
    save_file(sdxl, str(bad / Path(BAD["sdxl_only"]).name), metadata={"ss_base_model_version": "sdxl_base_v1-0"})

    plain = {  # a plain model state dict, not an adapter
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(320, 4, 3, 3, generator=g).half(),
        "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(320).half(),
        "model.diffusion_model.out.2.weight": torch.randn(4, 320, 3, 3, generator=g).half(),
    }
    save_file(plain, str(bad / Path(BAD["plain"]).name))


@pytest.fixture(scope="session")
def demo_adapters(comfy_base, tiny_checkpoint) -> dict[str, str]:
    """The demo adapters (and the broken files) in the base dir's models/loras; {method: listed name}."""
    names = link_demo_adapters(comfy_base.path, tiny_checkpoint)
    loras = comfy_base.path / "models" / "loras"
    _write_bad_files(loras, loras / names["lokr"])
    now = time.time()
    os.utime(loras, (now, now))  # ComfyUI caches folder listings by directory mtime
    return names


@pytest.fixture(scope="session")
def server(demo_adapters, comfy_server):
    """The running server, once it lists every demo and broken file."""
    _await_listed(comfy_server, set(demo_adapters.values()) | set(BAD.values()))
    return comfy_server


@pytest.fixture(scope="session")
def object_info(server) -> dict:
    return server.get_json("/object_info")


# --------------------------------------------------------------------------- helpers


def _combo_options(spec) -> list:
    typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(typ, list):
        return typ
    return list(opts.get("options", []))


def _await_listed(server, wanted: set[str], timeout: float = 20.0) -> None:
    """Wait until the server offers every name in ``wanted`` as an adapter (listings refresh on directory mtime)."""
    deadline = time.monotonic() + timeout
    while True:
        info = server.get_json("/object_info/LyCOLoadAdapter")
        options = set(_combo_options(info["LyCOLoadAdapter"]["input"]["required"]["adapter_name"]))
        if wanted <= options:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"server does not list {sorted(wanted - options)} in adapter_name")
        time.sleep(0.3)


def _slots(info: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """(link inputs [(name, type)], widget names in widgets_values order) of a node, from /object_info."""
    links, widgets = [], []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput"):
                widgets.append(name)
                if opts.get("control_after_generate"):
                    widgets.append(mw.CONTROL)
            else:
                links.append((name, typ))
    return links, widgets


def _template_api(stem: str, steps: int = STEPS) -> dict:
    wf = json.loads((REPO_ROOT / "example_workflows" / f"{stem}.json").read_text(encoding="utf-8"))
    prompt = mw.to_api(wf)
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return prompt


def _node_id(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert len(ids) == 1, (class_type, ids)
    return ids[0]


def _set_prefix(prompt: dict, prefix: str) -> dict:
    prompt[_node_id(prompt, "SaveImage")]["inputs"]["filename_prefix"] = prefix
    return prompt


def _without_node(prompt: dict, node_id: str) -> dict:
    """The same graph with a MODEL/CLIP pass-through node removed: its consumers read its own inputs instead."""
    g = copy.deepcopy(prompt)
    node = g.pop(node_id)
    source = {0: node["inputs"]["model"], 1: node["inputs"].get("clip")}
    for nid in list(g):
        if any(isinstance(v, list) and v[0] == node_id and v[1] not in source for v in g[nid]["inputs"].values()):
            del g[nid]  # consumers of its other outputs (the summary preview)
            continue
        for k, v in g[nid]["inputs"].items():
            if isinstance(v, list) and v[0] == node_id:
                g[nid]["inputs"][k] = list(source[v[1]])
    return g


def _image(server, outputs: dict) -> np.ndarray:
    images = workflow.output_images(outputs)
    saved = [i for i in images if i["type"] == "output"]
    assert len(saved) == 1, images
    path = server.base.output_dir / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _loader_only(loader: str, adapter: str, strength_model=1.0, strength_clip=1.0) -> dict:
    """checkpoint -> our loader -> PreviewAny(summary): runs our node without sampling."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {
            "class_type": loader,
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "adapter_name": adapter,
                "strength_model": strength_model,
                "strength_clip": strength_clip,
            },
        },
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}},
    }


_unique = iter(range(1, 10_000))


def _fresh_strength() -> float:
    """A strength no earlier prompt used, so ComfyUI's output cache cannot skip our node."""
    return round(0.9 - next(_unique) * 0.001, 3)


def _run_failing(server, prompt: dict) -> dict:
    """Queue a prompt that must fail at execution; return its execution_error message."""
    pid = workflow.post_prompt(server.url, prompt)
    entry = workflow.wait_for_history(server.url, pid, timeout=120)
    status = entry.get("status") or {}
    assert status.get("status_str") == "error", status
    errors = [m[1] for m in status.get("messages", []) if m and m[0] == "execution_error"]
    assert len(errors) == 1, status
    return errors[0]


def _assert_still_serving(server) -> None:
    with urllib.request.urlopen(server.url + "/system_stats", timeout=10) as r:
        assert r.status == 200
    out = workflow.run_prompt(
        server.url, _loader_only("LyCOLoadAdapter", "lyco_demo_lora.safetensors", _fresh_strength(), 1.0)
    )
    assert "lora ×112" in out["2"]["text"][0]


# --------------------------------------------------------------------------- registration


def test_object_info_lists_our_nodes(object_info, demo_adapters):
    for node_id, (display, category) in OUR_NODES.items():
        assert node_id in object_info, f"{node_id} missing from /object_info"
        info = object_info[node_id]
        assert info["display_name"] == display, (node_id, info["display_name"])
        assert info["category"] == category, (node_id, info["category"])
        assert info["python_module"].endswith(PACK_DIR_NAME), info["python_module"]
        options = _combo_options(info["input"]["required"]["adapter_name"])
        assert set(demo_adapters.values()) <= set(options), options
    assert object_info["LyCOAdapterInfo"]["output_node"] is True
    assert object_info["LyCOLoadAdapter"]["output"] == ["MODEL", "CLIP", "STRING"]
    assert object_info["LyCOLoadAdapterModelOnly"]["output"] == ["MODEL", "STRING"]


def test_one_strength_limit_for_every_field(server, object_info):
    """The loaders', convert nodes' and stack editor's strength fields share one limit (the stack editor reads it
    from /lyco/adapters)."""
    limit = server.get_json("/lyco/adapters")["strength_limit"]
    fields = [
        (node_id, name, spec[1])
        for node_id, info in object_info.items()
        if node_id.startswith("LyCO")
        for group in ("required", "optional")
        for name, spec in info["input"].get(group, {}).items()
        if name.startswith(("strength_", "weight_")) and spec[0] == "FLOAT"
    ]
    assert len(fields) >= 8
    assert all((opts["min"], opts["max"]) == (-limit, limit) for _, _, opts in fields), fields


def test_extensions_list_nothing_broken(server):
    listed = server.get_json("/extensions")
    ours = [u for u in listed if f"/extensions/{PACK_DIR_NAME}/" in u]
    for url in ours:
        assert url.endswith(".js"), url
        assert not re.search(r"/(tests?|node_modules|dist-tests)/", url), f"non-runtime file served: {url}"
        with urllib.request.urlopen(server.url + urllib.parse.quote(url), timeout=10) as r:
            assert r.status == 200 and r.read(), url
    # every JS file in js/ is listed exactly once (no double registration via WEB_DIRECTORY + [tool.comfy] web)
    expected = sorted(p.relative_to(REPO_ROOT / "js").as_posix() for p in (REPO_ROOT / "js").rglob("*.js"))
    got = sorted(u.split(f"/extensions/{PACK_DIR_NAME}/", 1)[1] for u in ours)
    assert got == expected


def test_server_log_names_no_import_failure_of_our_pack(server):
    server.wait_for_log(r"Import times for custom nodes", timeout=10)
    bad = [
        ln
        for ln in server.log().splitlines()
        if ("IMPORT FAILED" in ln or "Cannot import" in ln) and ("ComfyUI-LyCO" in ln or "lyco" in ln.lower())
    ]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- example workflows


def test_example_workflows_are_generated_and_up_to_date():
    stems = {p.stem for p in TEMPLATE_FILES}
    assert stems == set(mw.descriptions()), "example_workflows/ and tools/make_workflows.py disagree"
    assert mw.main(["--check"]) == 0, "run: python tools/make_workflows.py"
    assert mw.DEMO == _tool("demo_assets").DEMO_ADAPTERS, "make_workflows.DEMO != demo_assets.DEMO_ADAPTERS"
    assert mw.CKPT == _tool("demo_assets").CKPT_NAME
    used = {n["type"] for p in TEMPLATE_FILES for n in json.loads(p.read_text(encoding="utf-8"))["nodes"]}
    assert set(OUR_NODES) <= used, f"no template uses {sorted(set(OUR_NODES) - used)}"


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.stem)
def test_example_workflow_matches_object_info(path, object_info, demo_adapters):
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert wf["version"] == 0.4 and {
        "last_node_id",
        "last_link_id",
        "nodes",
        "links",
        "groups",
        "config",
        "extra",
    } <= set(wf)
    link_ids = {row[0] for row in wf["links"]}
    for node in wf["nodes"]:
        typ = node["type"]
        if typ in mw.FRONTEND_ONLY:
            continue
        assert typ in object_info, f"{path.name}: unknown node type {typ}"
        info = object_info[typ]
        links, widgets = _slots(info)
        assert mw.NODE_DEFS[typ]["widgets"] == widgets, (typ, widgets)
        assert len(node["widgets_values"]) == len(widgets), (typ, node["widgets_values"], widgets)
        link_names = {n for n, _ in links}
        for slot in node["inputs"]:
            assert slot["name"] in link_names, (typ, slot)
            assert slot["link"] is None or slot["link"] in link_ids
        # the host's outputs may extend the template's (0.33's SaveImage passes its IMAGE on; the frontend adds the
        # slot when it loads the template), never differ from them
        outputs = [(o["name"], o["type"]) for o in node["outputs"]]
        assert outputs == list(zip(info["output_name"], info["output"]))[: len(outputs)], (typ, outputs)
        if typ.startswith("LyCO"):
            assert len(outputs) == len(info["output"]), (typ, outputs)
        for name, value in zip(widgets, node["widgets_values"]):
            if name == mw.CONTROL:
                assert value in ("fixed", "increment", "decrement", "randomize"), value
                continue
            section = "required" if name in info["input"].get("required", {}) else "optional"
            spec = info["input"][section][name]
            if isinstance(spec[0], list) or spec[0] == "COMBO":
                assert value in _combo_options(spec), f"{path.name}: {typ}.{name}={value!r} not offered"
    for _id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        nodes = {n["id"]: n for n in wf["nodes"]}
        assert nodes[src]["outputs"][src_slot]["type"] == typ
        assert nodes[dst]["inputs"][dst_slot]["type"] in (typ, "*")


def test_example_workflows_served_as_templates(server):
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed.get(PACK_DIR_NAME, [])) == sorted(p.stem for p in TEMPLATE_FILES), listed
    for path in TEMPLATE_FILES:
        served = server.get_json(f"/api/workflow_templates/{PACK_DIR_NAME}/{path.name}")
        assert served == json.loads(path.read_text(encoding="utf-8")), path.name
        # the thumbnail the frontend asks for (a custom pack's template is "<name>.jpg"), tools/make_thumbnails.py
        jpg = path.with_suffix(".jpg")
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{PACK_DIR_NAME}/{jpg.name}") as r:
            assert r.status == 200 and r.read() == jpg.read_bytes(), jpg.name
        assert Image.open(jpg).format == "JPEG" and jpg.stat().st_size < 60_000, jpg.name


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.stem)
def test_example_workflow_runs(path, server, demo_adapters):
    prompt = _set_prefix(_template_api(path.stem), f"tpl_{path.stem}")
    outputs = workflow.run_prompt(server.url, prompt, timeout=300)
    img = _image(server, outputs)
    assert img.shape == (64, 64, 3)
    for nid, node in prompt.items():
        if node["class_type"] == "PreviewAny" and nid in outputs:
            assert outputs[nid]["text"][0].strip(), (nid, outputs[nid])
        if node["class_type"] == "LyCOSaveAdapter":
            _assert_saved_adapter_loads(server, node["inputs"]["name"] + ".safetensors", outputs[nid]["text"][0])


def _assert_saved_adapter_loads(server, name: str, save_text: str) -> None:
    """Save Adapter wrote ``name`` into models/loras, and ComfyUI lists it and reads it back (Adapter Info with the
    checkpoint connected: every module of the demo adapter, as a LoRA, matching the model)."""
    path = server.base.path / "models" / "loras" / name
    assert path.is_file() and save_text.endswith(f"/models/loras/{name}"), (path, save_text)
    _await_listed(server, {name})
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "LyCOAdapterInfo", "inputs": {"adapter_name": name, "model": ["1", 0], "clip": ["1", 1]}},
    }
    text = workflow.run_prompt(server.url, prompt)["2"]["text"][0]
    assert "methods: lora ×112" in text and "UNet 40" in text and "CLIP 72" in text, text


# --------------------------------------------------------------------------- strengths and the summary


def test_strength_zero_equals_no_adapter_and_differs_from_strength_one(server, demo_adapters):
    base = _template_api("lyco_load_adapter")
    ours = _node_id(base, "LyCOLoadAdapter")
    assert base[ours]["inputs"]["adapter_name"] == demo_adapters["lokr"]

    on = _set_prefix(copy.deepcopy(base), "strength_one")
    off = _set_prefix(copy.deepcopy(base), "strength_zero")
    off[ours]["inputs"].update(strength_model=0.0, strength_clip=0.0)
    plain = _set_prefix(_without_node(base, ours), "no_adapter")
    assert "LyCOLoadAdapter" not in {n["class_type"] for n in plain.values()}

    img_on = _image(server, workflow.run_prompt(server.url, on, timeout=300))
    img_off = _image(server, workflow.run_prompt(server.url, off, timeout=300))
    img_plain = _image(server, workflow.run_prompt(server.url, plain, timeout=300))

    diff = np.abs(img_on - img_off).mean()
    print(f"mean |strength 1 - strength 0| = {diff:.2f}/255")
    assert diff > 1.0, f"the demo LoKr had no visible effect (mean |diff| {diff:.3f}/255)"
    assert np.array_equal(img_off, img_plain), (
        f"strength 0 is not the base model (mean |diff| {np.abs(img_off - img_plain).mean():.4f}/255)"
    )


def test_demo_workflow_shows_with_without_and_difference(server, demo_adapters):
    """lyco_load_adapter (the demo's first workflow) previews one picture: the image with the adapter | the same seed
    without it | their difference, |with − without|; the first third is the saved image."""
    prompt = _set_prefix(_template_api("lyco_load_adapter"), "compare")
    ours = _node_id(prompt, "LyCOLoadAdapter")
    prompt[ours]["inputs"]["strength_model"] = _fresh_strength()
    outputs = workflow.run_prompt(server.url, prompt, timeout=300)
    with_adapter = _image(server, outputs)
    shown = outputs[_node_id(prompt, "PreviewImage")]["images"]
    assert len(shown) == 1 and shown[0]["type"] == "temp", shown
    query = urllib.parse.urlencode({k: shown[0][k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}") as r:
        picture = np.asarray(Image.open(r).convert("RGB"), dtype=np.int16)
    gaps = {prompt[k]["inputs"]["spacing_width"] for k, v in prompt.items() if v["class_type"] == "ImageStitch"}
    assert len(gaps) == 1, gaps
    gap = gaps.pop()
    assert picture.shape == (64, 3 * 64 + 2 * gap, 3), picture.shape
    left, middle, right = (picture[:, i * (64 + gap) : i * (64 + gap) + 64] for i in range(3))
    assert np.array_equal(left, with_adapter)
    assert np.abs(left - middle).mean() > 1.0  # the adapter changed the image
    assert np.abs(right - np.abs(left - middle)).max() <= 1  # difference (rounded once more)


def test_summary_ui_text_in_history(server, demo_adapters):
    prompt = _set_prefix(_template_api("lyco_load_adapter"), "summary")
    ours = _node_id(prompt, "LyCOLoadAdapter")
    prompt[ours]["inputs"].update(strength_model=_fresh_strength(), strength_clip=_fresh_strength())
    outputs = workflow.run_prompt(server.url, prompt, timeout=300)
    assert ours in outputs, f"no ui output of our node in /history: {sorted(outputs)}"
    text = outputs[ours]["text"][0]
    assert demo_adapters["lokr"] in text
    assert "lokr ×112" in text and "UNet 40" in text and "CLIP 72" in text and "0 unmatched" in text, text
    preview = _node_id(prompt, "PreviewAny")
    assert outputs[preview]["text"][0] == text  # the STRING output carries the same summary

    mo = _loader_only("LyCOLoadAdapterModelOnly", demo_adapters["lokr"])
    del mo["2"]["inputs"]["clip"], mo["2"]["inputs"]["strength_clip"]
    mo["2"]["inputs"]["strength_model"] = _fresh_strength()
    mo["3"]["inputs"]["source"] = ["2", 1]
    text = workflow.run_prompt(server.url, mo)["2"]["text"][0]
    assert "UNet 40" in text and "CLIP 0" in text, text


def test_info_node_reports_file_and_matches(server, demo_adapters):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {
            "class_type": "LyCOAdapterInfo",
            "inputs": {"adapter_name": demo_adapters["oft"], "model": ["1", 0], "clip": ["1", 1]},
        },
    }
    text = workflow.run_prompt(server.url, prompt)["2"]["text"][0]
    assert "methods: oft ×112" in text and "lycoris" in text and "UNet 40" in text and "CLIP 72" in text, text


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "case, problem",
    [
        ("truncated", r"truncated"),
        ("sdxl_only", r"no module matches this model"),
        ("plain", r"this is a model checkpoint"),
    ],
)
def test_bad_file_gives_node_error_and_server_keeps_serving(server, demo_adapters, case, problem):
    prompt = _loader_only("LyCOLoadAdapter", BAD[case], _fresh_strength(), 1.0)
    err = _run_failing(server, prompt)
    assert err["node_id"] == "2" and err["node_type"] == "LyCOLoadAdapter", err
    msg = err["exception_message"]
    print(f"{case}: {err['exception_type']}: {msg}")
    assert Path(BAD[case]).name in msg, msg
    assert re.search(problem, msg), msg
    assert "Traceback" not in msg
    _assert_still_serving(server)


def test_method_mismatch_names_detected_method_and_right_node(server, demo_adapters):
    prompt = _loader_only("LyCOLoadLoKr", demo_adapters["loha"])
    err = _run_failing(server, prompt)
    assert err["node_id"] == "2" and err["node_type"] == "LyCOLoadLoKr", err
    msg = err["exception_message"]
    print(f"{err['exception_type']}: {msg}")
    assert demo_adapters["loha"] in msg and "loha" in msg and "Load LoHa" in msg, msg
    _assert_still_serving(server)


def test_server_renders_after_errors(server, demo_adapters):
    prompt = _set_prefix(_template_api("lyco_load_oft"), "after_errors")
    ours = _node_id(prompt, "LyCOLoadOFT")
    prompt[ours]["inputs"]["strength_model"] = _fresh_strength()
    img = _image(server, workflow.run_prompt(server.url, prompt, timeout=300))
    assert img.shape == (64, 64, 3) and math.isfinite(float(img.mean()))
