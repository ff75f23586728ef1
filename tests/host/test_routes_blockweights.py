"""``GET /lyco/info`` on a real ComfyUI server, and block weights / the adapter stack in-process on the tiny SD1.5.

Adapters: the demo files (tools/demo_assets.py: LoKr, LoHa, OFT, LoRA) plus three made here with fixed seeds for
the laws that need them — LyCORIS OFT with ``rescale``, BOFT (2 butterfly stages) and LoRA + DoRA — all named the
kohya way ComfyUI's key map knows for the tiny model (``tiny_sd15.lora_targets``).

Block ids of the tiny UNet's four transformer blocks: IN01 (input_blocks.1), M00, OUT00, OUT01; BASE = CLIP.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch

import demo_files
import tiny_sd15
from tolerances import delta_agreement

BLOCKS_26 = ["BASE", *[f"IN{i:02d}" for i in range(12)], "M00", *[f"OUT{i:02d}" for i in range(12)]]
DEMO_MODULES = 112  # 40 UNet + 72 CLIP-L modules


def vector(**weights) -> str:
    """A 26-value block-weight string: 1 everywhere except the given ids."""
    return ",".join(f"{weights.get(block, 1.0):g}" for block in BLOCKS_26)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo(comfy_base, tiny_checkpoint) -> dict[str, str]:
    return demo_files.link_demo_adapters(comfy_base.path, tiny_checkpoint)


@pytest.fixture(scope="module")
def tiny(comfy):
    model, clip, _vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)
    return model, clip


def _unet_targets(model, clip) -> dict[str, str]:
    unet, _te = tiny_sd15.lora_targets(model, clip)
    return unet


def _save(comfy, name: str, tensors: dict, algo: str) -> str:
    from safetensors.torch import save_file

    path = comfy.base.path / "models" / "loras" / name
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in tensors.items()},
        str(path),
        metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": algo})},
    )
    return name


@pytest.fixture(scope="module")
def made(comfy, tiny) -> dict[str, str]:
    """Rescaled OFT, BOFT and LoRA+DoRA files on the UNet targets (fixed seeds)."""
    model, clip = tiny
    state = model.model_state_dict()
    gen = torch.Generator().manual_seed(7)
    oft, boft, dora = {}, {}, {}
    for name, key in _unet_targets(model, clip).items():
        weight = state[key].float()
        out_f, in_f = weight.shape[:2]
        oft[f"{name}.oft_blocks"] = torch.randn((out_f // 8, 8, 8), generator=gen) * 0.0375
        oft[f"{name}.alpha"] = torch.tensor(0.01)
        oft[f"{name}.rescale"] = 1 + 0.1 * torch.randn((out_f, 1), generator=gen)
        boft[f"{name}.oft_blocks"] = torch.randn((2, out_f // 8, 8, 8), generator=gen) * 0.05
        down = torch.randn((4, in_f), generator=gen) / math.sqrt(in_f)
        up = torch.randn((out_f, 4), generator=gen) * 0.25
        dora.update(
            {
                f"{name}.lora_down.weight": down,
                f"{name}.lora_up.weight": up,
                f"{name}.alpha": torch.tensor(4.0),
                f"{name}.dora_scale": weight.norm(dim=1, keepdim=True)
                * (1 + 0.2 * torch.rand((out_f, 1), generator=gen)),
            }
        )
    return {
        "oft_rescaled": _save(comfy, "bw_oft_rescaled.safetensors", oft, "diag-oft"),
        "boft": _save(comfy, "bw_boft.safetensors", boft, "boft"),
        "dora": _save(comfy, "bw_dora.safetensors", dora, "lora"),
    }


@pytest.fixture(scope="module")
def files(demo, made) -> dict[str, str]:
    return {**demo, **made}


# --------------------------------------------------------------------------- helpers


def get(server, path: str):
    """(status, JSON body) of a GET, HTTP errors included."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def info(server, name: str):
    return get(server, "/lyco/info?name=" + urllib.parse.quote(name, safe=""))


def node(comfy, node_id: str):
    return comfy.lyco_nodes[node_id]


def pack(comfy):
    return comfy.pack_module


def patched(patcher, keys) -> dict[str, torch.Tensor]:
    """The weights of ``keys`` as ComfyUI loads ``patcher`` for sampling (full load on the CPU; loading it unloads
    any other clone of the same model first)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    state = patcher.model.state_dict()
    return {k: state[k].detach().clone() for k in keys}


def unet_keys(model, block_prefix: str = "") -> list[str]:
    return [
        k
        for k, v in model.model_state_dict().items()
        if k.startswith("diffusion_model." + block_prefix) and k.endswith(".weight") and v.ndim >= 2
    ]


def load(comfy, tiny, name: str, s_model: float = 1.0, s_clip: float = 1.0):
    model, clip = tiny
    return node(comfy, "LyCOLoadAdapter").execute(model, clip, name, s_model, s_clip)


def load_blocks(comfy, tiny, name: str, weights: str, s_model: float = 1.0, s_clip: float = 1.0):
    model, clip = tiny
    return node(comfy, "LyCOLoadAdapterBlockWeight").execute(model, clip, name, s_model, s_clip, weights)


# --------------------------------------------------------------------------- /lyco/info (real server)

EXPECTED = {  # method -> (methods, rank range, alpha range); see tools/demo_assets.py
    "lokr": ({"lokr": DEMO_MODULES}, [4, 4], [4.0, 4.0]),
    "loha": ({"loha": DEMO_MODULES}, [4, 4], [4.0, 4.0]),
    "oft": ({"oft": DEMO_MODULES}, [8, 8], [0.01, 0.01]),
    "lora": ({"lora": DEMO_MODULES}, [4, 4], [4.0, 4.0]),
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_info_answers_known_names(comfy_server, demo, method):
    status, body = info(comfy_server, demo[method])
    assert status == 200, body
    methods, ranks, alphas = EXPECTED[method]
    path = comfy_server.base.path / "models" / "loras" / demo[method]
    assert body["name"] == demo[method] and body["file"] == demo[method]
    assert body["layout"] == "lycoris" and body["modules"] == DEMO_MODULES and body["methods"] == methods
    assert body["method_labels"] == {method: {"lokr": "LoKr", "loha": "LoHa", "oft": "OFT", "lora": "LoRA"}[method]}
    assert body["rank_range"] == ranks and body["alpha_range"] == pytest.approx(alphas, rel=1e-3)
    assert body["dora"] == 0 and body["tucker"] == 0 and body["unknown_keys"] == 0
    assert body["size"] == path.stat().st_size
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert body["base_model"].startswith("stable-diffusion-v1")
    if method != "lora":
        assert f"lyco {method} demo" in body["trigger_words"]


def test_info_is_served_under_api_too(comfy_server, demo):
    status, body = get(comfy_server, "/api/lyco/info?name=" + urllib.parse.quote(demo["lokr"]))
    assert status == 200 and body["methods"] == {"lokr": DEMO_MODULES}


@pytest.mark.parametrize(
    "raw",
    [
        "nope.safetensors",
        "../checkpoints/tiny_sd15.safetensors",
        "..%2Fcheckpoints%2Ftiny_sd15.safetensors",
        "%2E%2E%2Fcheckpoints%2Ftiny_sd15.safetensors",
        "%252E%252E%252Fcheckpoints%252Ftiny_sd15.safetensors",
        "..\\checkpoints\\tiny_sd15.safetensors",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "ABSOLUTE_LORA",
    ],
)
def test_info_refuses_traversal_and_unknown_names(comfy_server, demo, raw):
    if raw == "ABSOLUTE_LORA":
        raw = urllib.parse.quote(str(comfy_server.base.path / "models" / "loras" / demo["lora"]), safe="")
    status, body = get(comfy_server, "/lyco/info?name=" + raw.replace("\\", "%5C"))
    assert status == 404 and "error" in body, body


def test_info_without_name_is_a_client_error(comfy_server):
    status, body = get(comfy_server, "/lyco/info")
    assert status == 400 and "error" in body


def test_info_of_corrupt_file_is_an_error_json(comfy_server):
    path = comfy_server.base.path / "models" / "loras" / "corrupt.safetensors"
    path.write_bytes(b"\xff" * 8 + b"this is not a safetensors header")
    status, body = info(comfy_server, "corrupt.safetensors")
    assert status == 422, body
    assert body["name"] == "corrupt.safetensors" and body["size"] == path.stat().st_size
    assert "header" in body["error"] and str(comfy_server.base.path) not in body["error"]
    assert get(comfy_server, "/system_stats")[0] == 200  # the server keeps serving


def test_info_cache_follows_the_file_and_its_sidecars(comfy_server, demo):
    loras = comfy_server.base.path / "models" / "loras"
    target = loras / "changing.safetensors"
    shutil.copyfile(loras / demo["lora"], target)
    first = info(comfy_server, "changing.safetensors")
    assert first[0] == 200 and first[1]["methods"] == {"lora": DEMO_MODULES}
    assert info(comfy_server, "changing.safetensors") == first  # cached answer, same content

    shutil.copyfile(loras / demo["oft"], target)  # rewritten: new size and mtime
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = info(comfy_server, "changing.safetensors")[1]
    assert second["methods"] == {"oft": DEMO_MODULES} and second["sha256"] != first[1]["sha256"]

    (loras / "changing.txt").write_text("sidecar word, another word\n", encoding="utf-8")
    (loras / "changing.civitai.info").write_text(
        json.dumps({"trainedWords": ["civitai word"], "baseModel": "SD 1.5"}), encoding="utf-8"
    )
    third = info(comfy_server, "changing.safetensors")[1]
    assert third["sidecars"] == ["changing.txt", "changing.civitai.info"]
    assert third["trigger_words"][-3:] == ["sidecar word", "another word", "civitai word"]
    assert third["trigger_words"][0] == "lyco oft demo"  # the file's own trigger phrase comes first


def test_block_presets_route(comfy_server):
    status, body = get(comfy_server, "/lyco/block_presets")
    assert status == 200
    assert {name: len(ids) for name, ids in body["block_sets"].items()} == {
        "sd15_17": 17,
        "sd15_26": 26,
        "sdxl_12": 12,
        "sdxl_20": 20,
    }
    assert body["block_sets"]["sd15_26"] == BLOCKS_26
    assert {"ALL", "NONE", "INS", "IND", "INALL", "MIDD", "OUTD", "OUTS", "OUTALL"} <= set(body["presets"]["sd15"])


def test_routes_register_in_process_without_listening(comfy):
    paths = {getattr(route, "path", None) for route in comfy.server.routes}
    assert {"/lyco/info", "/lyco/block_presets"} <= paths


# --------------------------------------------------------------------------- block-weight parsing


def test_block_weight_strings(comfy):
    bw = pack(comfy).nodes.block_weights
    everything = bw.parse_block_weights("all", "sd15")
    assert everything.source == "ALL" and everything.block_set == "sd15_26"
    assert all(everything.weight(b) == 1.0 for b in BLOCKS_26)
    ins = bw.parse_block_weights("INS", "sd15")  # LBW's 17-value preset: unnamed blocks get 0
    assert ins.weight("IN04") == 1 and ins.weight("IN05") == 0 and ins.weight("IN00") == 0
    assert ins.weight(bw.OTHER) == 1.0
    xl = bw.parse_block_weights("0.5, 1,1,1,1, 0.25, 0,0,0,0,0,0", "sdxl")
    assert xl.block_set == "sdxl_12" and xl.weight("BASE") == 0.5 and xl.weight("M00") == 0.25
    assert bw.parse_block_weights("ALL", "sdxl").block_set == "sdxl_20"
    assert bw.block_of("diffusion_model.output_blocks.10.1.proj_in.weight", "unet") == "OUT10"
    assert bw.block_of("diffusion_model.middle_block.1.proj_in.weight", "unet") == "M00"
    assert bw.block_of("diffusion_model.time_embed.0.weight", "unet") == bw.OTHER
    assert bw.block_of("clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "clip") == "BASE"
    with pytest.raises(ValueError, match="has 3 values"):
        bw.parse_block_weights("1,2,3", "sd15")
    with pytest.raises(ValueError, match=r"value 2 \('x'\) is not a number"):
        bw.parse_block_weights("1,x," + ",".join(["1"] * 15), "sd15")
    loader = node(comfy, "LyCOLoadAdapterBlockWeight")
    assert loader.validate_inputs("OUTALL") is True
    assert loader.validate_inputs(None) is True  # linked from another node: checked when it runs
    assert "expected 17 (sd15_17)" in loader.validate_inputs("1,1")


# --------------------------------------------------------------------------- block weights (in-process)

METHODS = ["lora", "loha", "lokr", "oft", "oft_rescaled", "boft", "dora"]


@pytest.fixture(scope="module")
def base_unet(tiny) -> dict[str, torch.Tensor]:
    model, _clip = tiny
    return patched(model, unet_keys(model))


def _patch_plan(patcher) -> dict:
    """{key: [(strength_patch, adapter module, part, strength_model, offset)]}: what ComfyUI will apply, per key."""
    return {k: [(p[0], p[1].module, p[1].part, p[2], p[3]) for p in v] for k, v in patcher.patches.items()}


@pytest.mark.parametrize("method", METHODS)
def test_block_weight_zero_leaves_the_block_untouched(comfy, tiny, files, base_unet, method):
    plain = load(comfy, tiny, files[method])
    weighted = load_blocks(comfy, tiny, files[method], vector(IN01=0))
    in01 = [k for k in base_unet if k.startswith("diffusion_model.input_blocks.1.")]
    assert set(in01) & set(plain[0].patches), "the adapter does not touch IN01"
    got = patched(weighted[0], in01)
    assert all(torch.equal(got[k], base_unet[k]) for k in in01)
    rest = {k: v for k, v in _patch_plan(plain[0]).items() if k not in in01}
    assert _patch_plan(weighted[0]) == rest  # every other block: the plain loader's patches, same strength
    assert _patch_plan(weighted[1].patcher) == _patch_plan(plain[1].patcher)
    assert "IN01  ×0 → off (unpatched): 10 modules" in weighted[2]
    blocks = [line for line in weighted[2].splitlines() if "×" in line and "→" in line]
    assert blocks and all(line.count(",") <= 3 for line in blocks), blocks  # counts per block, not 72 names


@pytest.mark.parametrize("method", METHODS)
def test_block_weight_one_everywhere_equals_the_plain_loader(comfy, tiny, files, base_unet, method):
    plain = load(comfy, tiny, files[method])
    weighted = load_blocks(comfy, tiny, files[method], "ALL")
    assert _patch_plan(weighted[0]) == _patch_plan(plain[0])
    assert _patch_plan(weighted[1].patcher) == _patch_plan(plain[1].patcher)  # the same CLIP patches, same strength
    if method in ("lora", "boft", "dora"):  # and the weights ComfyUI computes from them, bit for bit
        keys = list(base_unet)
        ref, got = patched(plain[0], keys), patched(weighted[0], keys)
        assert all(torch.equal(got[k], ref[k]) for k in keys)


@pytest.mark.parametrize("method", ["oft", "oft_rescaled", "boft", "dora"])
def test_half_weight_follows_the_methods_own_law(comfy, tiny, files, base_unet, method):
    """M00 at 0.5: each module equals lyco_core's apply(W, 0.5) — for OFT/BOFT the rotation interpolated halfway
    toward identity — and differs from ComfyUI core's s² law; for rescaled OFT, BOFT and DoRA it is also not the
    half-scaled delta W + 0.5·(W₁ − W)."""
    model, clip = tiny
    lyco_core = pack(comfy).lyco_core
    adapter = lyco_core.load_adapter(str(comfy.base.path / "models" / "loras" / files[method]))
    weighted = load_blocks(comfy, tiny, files[method], vector(M00=0.5))
    targets = {k: n for n, k in _unet_targets(model, clip).items() if k.startswith("diffusion_model.middle_block.")}
    got = patched(weighted[0], list(targets))
    for key, name in targets.items():
        module, w = adapter.modules[name], base_unet[key].float()
        expected = module.apply(w, 0.5)
        full = module.apply(w, 1.0)
        scale = (full - w).abs().max().item()
        error = (got[key].float() - expected).abs().max().item()
        # the node's float32 apply(W, 0.5) and this one: delta_agreement, depth 64 (OFT blocks 8, BOFT blocks ≤ 16,
        # DoRA's norm over a fan-in ≤ 2880 counted as √2880 ≤ 54), steps 8 (Cayley, ≤ 5 butterfly stages, R·W, the
        # interpolation)
        bound = delta_agreement(expected, w, 64, steps=8) * (expected - w).abs().max().item()
        assert error <= bound, (key, error, bound, scale)
        assert (got[key].float() - (w + 0.25 * (full - w))).abs().max().item() > 20 * error  # not core's s²
        if method != "oft":  # plain diag-OFT is linear in m: interpolating R *is* the half delta there
            assert (got[key].float() - (w + 0.5 * (full - w))).abs().max().item() > 20 * error
    assert "M00   ×0.5 → strength 0.5: 10 modules" in weighted[2]


def test_base_weight_is_the_text_encoder_strength(comfy, tiny, files):
    model, clip = tiny
    keys = [k for k in clip.cond_stage_model.state_dict() if k.endswith(".weight") and ".layers.0." in k]
    off = load_blocks(comfy, tiny, files["lora"], vector(BASE=0))
    assert off[1] is clip  # nothing patched on the text encoder at all
    half = load_blocks(comfy, tiny, files["lora"], vector(BASE=0.5), s_clip=0.8)
    ref = load(comfy, tiny, files["lora"], 1.0, 0.4)
    assert all(
        torch.equal(a, b)
        for a, b in zip(patched(half[1].patcher, keys).values(), patched(ref[1].patcher, keys).values())
    )
    assert "BASE  ×0.5 → strength 0.4: 72 modules" in half[2]


def test_block_weight_errors_are_clear(comfy, tiny, files):
    with pytest.raises(ValueError, match="expected 17"):
        load_blocks(comfy, tiny, files["lora"], "1,1,1")


# --------------------------------------------------------------------------- adapter stack (in-process)


def test_stack_applies_enabled_rows_in_order(comfy, tiny, files, base_unet):
    model, clip = tiny
    rows = [
        {"name": files["lokr"], "strength_model": 0.7, "strength_clip": 0.5},
        {"name": files["lora"], "on": False},
        {"name": files["oft"], "on": True, "strength_model": 1.0, "strength_clip": 1.0},
    ]
    stacked = node(comfy, "LyCOAdapterStack").execute(model, clip, json.dumps(rows))
    first = load(comfy, tiny, files["lokr"], 0.7, 0.5)
    chained = node(comfy, "LyCOLoadAdapter").execute(first[0], first[1], files["oft"], 1.0, 1.0)
    assert _patch_plan(stacked[0]) == _patch_plan(chained[0])
    assert _patch_plan(stacked[1].patcher) == _patch_plan(chained[1].patcher)
    keys = list(base_unet)
    assert all(
        torch.equal(a, b) for a, b in zip(patched(stacked[0], keys).values(), patched(chained[0], keys).values())
    )
    lines = stacked[2].splitlines()
    assert lines[0].startswith("1. (model 0.7, clip 0.5) ") and lines[-1].startswith("3. ")
    assert f"2. {files['lora']}: off" in lines
    assert model.patches == {} and clip.patcher.patches == {}  # inputs untouched


@pytest.mark.parametrize(
    "stack, message",
    [
        ("not json", "stack is not valid JSON"),
        ('{"name": "x"}', "must be a JSON list"),
        ('["x"]', "stack row 1 must be an object"),
        ('[{"name": "missing.safetensors"}]', "'missing.safetensors' is not in ComfyUI's loras folders"),
        ('[{"adapter": "x"}]', "unknown field(s) adapter"),
        ('[{"name": "LORA", "on": "yes"}]', "'on' must be true or false"),
        ('[{"name": "LORA", "strength_model": 11}]', "'strength_model' is 11, outside"),
        ('[{"name": "LORA", "strength_clip": "1"}]', "'strength_clip' must be a number"),
    ],
)
def test_stack_validation_names_row_and_field(comfy, files, stack, message):
    result = node(comfy, "LyCOAdapterStack").validate_inputs(stack.replace("LORA", files["lora"]))
    assert isinstance(result, str) and message in result, result


def test_linked_stack_is_checked_when_it_runs(comfy):
    assert node(comfy, "LyCOAdapterStack").validate_inputs(None) is True


def test_empty_stack_passes_through(comfy, tiny):
    model, clip = tiny
    out = node(comfy, "LyCOAdapterStack").execute(model, clip, "[]")
    assert out[0] is model and out[1] is clip and "empty" in out[2]


def test_info_follows_links_but_never_echoes_outside_bytes(comfy_server, demo, tmp_path):
    """Link policy: links in the loras folders are followed, as ComfyUI does for models; a linked file that is not an
    adapter gets 422 without quoting any of its bytes, and a sidecar that links outside its adapter's folder is
    not read."""
    loras = comfy_server.base.path / "models" / "loras"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRETWORDS, more private text\n", encoding="utf-8")
    (loras / "linked_secret.safetensors").symlink_to(secret)
    status, body = info(comfy_server, "linked_secret.safetensors")
    assert status == 422, body
    raw_length = str(int.from_bytes(secret.read_bytes()[:8], "little"))
    assert "TOPSECRET" not in body["error"] and raw_length not in body["error"], body["error"]

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(loras / demo["lora"], outside / "linked_adapter.safetensors")
    (loras / "linked_adapter.safetensors").symlink_to(outside / "linked_adapter.safetensors")
    (loras / "linked_adapter.txt").symlink_to(secret)
    status, body = info(comfy_server, "linked_adapter.safetensors")
    assert status == 200 and body["methods"] == {"lora": DEMO_MODULES}, body
    assert not any("TOPSECRET" in word for word in body["trigger_words"]), body["trigger_words"]
