"""Lumina2's fused ``attention.qkv`` with GROUPED K/V heads, on a real host model.

Lumina2 2B has 24 query heads and 8 key/value heads, so its ``attention.qkv`` rows are q (n_heads·head_dim = dim),
then k and v (n_kv_heads·head_dim each) — not equal thirds. ComfyUI's key map for every Lumina2 model
(``comfy.lora.model_lora_keys_unet`` through ``comfy.utils.z_image_to_diffusers``) cuts it into thirds of ``dim``
rows, right for Z-Image (30/30 heads), wrong here. Our matcher places q/k/v from the weight's shape (q the first
``in_features`` rows, k and v halves of the rest) and lets that win over the host's entry where they disagree
(``keymap.Side.host_target``).

A tiny Lumina2 through the host's own ``comfy.supported_models.Lumina2`` (``arch_models.build_lumina2_gqa``: dim 32,
4 q heads and 2 kv heads of 8, so qkv = 32 + 16 + 16 rows; one layer and one refiner layer each; float32, seeded).
For each naming real files use —

* ai-toolkit on Z-Image: ``diffusion_model.layers.0.attention.to_q.lora_A.weight`` (PEFT, no alpha);
* diffusers Lumina2 (``Lumina2Transformer2DModel``, ``save_lora_weights``): ``transformer.layers.0.attn.to_q.
  lora_A.weight``, ``attn.to_out.0``, ``feed_forward.linear_1/2/3``, ``norm1.linear`` (PEFT, no alpha);
* musubi-tuner on Z-Image: ``lora_unet_layers_0_attention_to_q.lora_down.weight`` + ``alpha``;

— a LoRA file (random factors, seeded) on q, k, v, out and the feed-forward of every block is loaded by our
``LyCOLoadAdapter``: every module placed, none unmatched; after a full load each qkv region (q rows [0, dim), k rows
[dim, dim+kv), v the rest) must equal ``W_rows + strength·ΔW`` of its own module (float64 reference) within
``delta_agreement``; unpatching restores the originals bit-exactly. The core API on the model's own state dict
must put every module on the same rows and its ``patch`` give the same weights, without a host map and with the
host's own key map (whose equal-thirds rows for to_k/to_v give way to the weight's shape, ``keymap.place``).

Measured, not asserted (the host's behaviour): how many modules ComfyUI's ``LoraLoaderModelOnly`` places and, after
its full load (on a separate copy of the model), its error per qkv region against the expected weight. Results go
to ``test-artifacts/lumina2_gqa.md`` (one section per host).
"""

from __future__ import annotations

import importlib
import logging
import re
import time
import zlib
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

import arch_models
import producer_names as pn
from comfy_bootstrap import REPO_ROOT
from conftest import one_thread
from patching import SUMMARY, full_load, listed, loras_folder, placed, write_host_section
from tolerances import delta_agreement

STRENGTH = 0.8
RANK, ALPHA = 4, 2.0
STEPS = 3  # up·down, the scale, the add to W (as test_architectures)
FOLDER = "lyco_lumina2_gqa"
ARTIFACT = REPO_ROOT / "test-artifacts" / "lumina2_gqa.md"
ROWS: dict[str, dict] = {}

# Z-Image diffusers names (arch_models' Target paths) → diffusers Lumina2Transformer2DModel names
LUMINA2_DIFFUSERS = (
    (".attention.to_", ".attn.to_"),
    (".feed_forward.w1", ".feed_forward.linear_1"),
    (".feed_forward.w2", ".feed_forward.linear_2"),
    (".feed_forward.w3", ".feed_forward.linear_3"),
    (".adaLN_modulation.1", ".norm1.linear"),
)


def _lumina2_name(path: str) -> str:
    for old, new in LUMINA2_DIFFUSERS:
        path = path.replace(old, new)
    return path


PRODUCERS = {
    "ai-toolkit (Z-Image names)": pn.AI_TOOLKIT_DIFFUSERS_DM,
    "diffusers (Lumina2 names)": replace(
        pn.DIFFUSERS,
        name="diffusers Lumina2",
        source="huggingface/diffusers Lumina2Transformer2DModel",
        rename=_lumina2_name,
    ),
    "musubi-tuner (Z-Image names)": pn.MUSUBI_ZIMAGE,
}


def _targets(arch, producer_label: str) -> list:
    """The file's modules: q/k/v/out/feed-forward of every block; diffusers' Lumina2 naming also the modulation
    (``norm1.linear`` = ``adaLN_modulation.1``, in the blocks that have one)."""
    targets = list(arch.diffusers)
    if producer_label.startswith("diffusers"):
        targets += [t for t in arch.native if t.path.endswith(".adaLN_modulation.1")]
    return sorted(targets, key=lambda t: t.path)


def _build():
    arch = arch_models.build_lumina2_gqa()
    if arch is None:
        pytest.skip("this host has no comfy.supported_models.Lumina2")
    return arch


@pytest.fixture(scope="module")
def loras_dir(comfy):
    with loras_folder(comfy, FOLDER) as path:
        yield path


def _write(arch, producer, targets, path) -> dict:
    """Write the LoRA file; returns {weight key: expected float64 W'}."""
    state = arch.patcher.model.state_dict()
    gen = torch.Generator().manual_seed(zlib.crc32(f"lumina2-gqa|{producer.name}".encode()))
    tensors, expected = {}, {}
    for t in targets:
        weight = state[t.key]
        base = weight.narrow(*t.offset) if t.offset else weight
        out_dim, in_dim = base.shape
        down = (torch.randn(RANK, in_dim, generator=gen) * 0.3).float()
        up = (torch.randn(out_dim, RANK, generator=gen) * 0.3).float()
        scale = ALPHA / RANK if producer.has_alpha else 1.0
        tensors[producer.tensor(t.path, "down")] = down.contiguous()
        tensors[producer.tensor(t.path, "up")] = up.contiguous()
        if producer.has_alpha:
            tensors[producer.tensor(t.path, "alpha")] = torch.tensor(ALPHA)
        ref = expected.setdefault(t.key, weight.detach().double().clone())
        (ref.narrow(*t.offset) if t.offset else ref).add_(STRENGTH * scale * (up.double() @ down.double()))
    save_file(tensors, str(path))
    return expected


def _regions(arch) -> dict[str, tuple[int, int]]:
    """{"q"/"k"/"v": (start, rows)} of ``attention.qkv`` from the head counts."""
    cfg = arch.unet_config
    head_dim = cfg["dim"] // cfg["n_heads"]
    q, kv = cfg["n_heads"] * head_dim, cfg["n_kv_heads"] * head_dim
    return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}


def _errors(got: dict, expected: dict, originals: dict, regions: dict) -> dict[str, tuple[float, float]]:
    """{key or "key[q|k|v]": (delta-relative error, its bound)}; a fused qkv is measured per region against that
    region's own change."""
    out = {}
    for key, ref in expected.items():
        base = originals[key].double()
        parts = {x: regions[x] for x in "qkv"} if key.endswith(".attention.qkv.weight") else {"": (0, ref.shape[0])}
        for x, (start, rows) in parts.items():
            r, b, g = ref[start : start + rows], base[start : start + rows], got[key].double()[start : start + rows]
            err = float((g - r).abs().max()) / float((r - b).abs().max())
            out[f"{key}[{x}]" if x else key] = (err, delta_agreement(r, b, RANK, steps=STEPS))
    return out


@pytest.mark.parametrize("label", list(PRODUCERS))
def test_grouped_qkv_rows_are_placed_from_the_shape(comfy, loras_dir, label):
    producer = PRODUCERS[label]
    t0 = time.perf_counter()
    arch = _build()
    regions = _regions(arch)
    targets = _targets(arch, label)
    slug = re.sub(r"\W+", "_", label).strip("_").lower()
    path = loras_dir / f"lumina2_gqa-{slug}.safetensors"
    row = ROWS.setdefault(label, {"modules": len(targets)})
    try:
        with one_thread():
            _check(comfy, arch, producer, targets, regions, path, row)
    finally:
        path.unlink(missing_ok=True)
        row["seconds"] = time.perf_counter() - t0


def _check(comfy, arch, producer, targets, regions, path, row):
    expected = _write(arch, producer, targets, path)
    name = listed(path, path.parent.parent)
    originals = arch.originals()
    keys = list(expected)

    # ---- our node, with the host's key map (which names thirds of qkv) in play
    out = comfy.lyco_nodes["LyCOLoadAdapter"].execute(arch.patcher, None, name, STRENGTH, 0.0).result
    model, summary = out[0], out[2]
    m = SUMMARY.search(summary)
    assert m, summary
    unet_n, clip_n, unmatched, unknown = map(int, m.groups())
    row["ours"] = unet_n
    assert (unet_n, clip_n, unmatched, unknown) == (len(targets), 0, 0, 0), summary
    assert placed(model) == len(targets)
    got, restored = full_load(model, keys, originals)
    errors = _errors(got, expected, originals, regions)
    row["err"] = max(e for e, _ in errors.values())
    bad = {k: v for k, v in errors.items() if not v[0] <= v[1]}
    assert not bad, bad  # k/v on the wrong rows would be off by their whole delta (error ≥ 1)
    assert restored, "unpatch_model did not restore the originals"

    # ---- the core API on the model's own state dict (no host map): the same rows, the same weights
    core = importlib.import_module(comfy.pack_module_name + ".lyco_core")
    state = arch.patcher.model_state_dict()
    adapter = core.load_adapter(path)
    report = adapter.match(state)
    row["core"] = len(report.matched)
    assert not report.unmatched, report.unmatched
    for t in targets:
        found = report.target(producer.module(t.path))
        rows = found.rows(state[found.key].shape) if found.sliced else None
        assert (found.key, rows) == (t.key, t.offset and tuple(t.offset[1:])), (t, str(found))
    patched = adapter.patch({k: v.detach().clone() for k, v in state.items()}, STRENGTH)
    assert set(patched) == set(expected)
    core_errors = _errors(patched, expected, originals, regions)
    row["core_err"] = max(e for e, _ in core_errors.values())
    bad = {k: v for k, v in core_errors.items() if not v[0] <= v[1]}
    assert not bad, bad

    # ---- the core API given the host's key map: the same rows (the state dict's shapes check the map's rows)
    host_map = importlib.import_module("comfy.lora").model_lora_keys_unet(arch.patcher.model, {})
    row["host_conflicts"] = sum(  # modules whose exact name the host's key map puts on other rows of qkv
        isinstance(host_map.get(producer.module(t.path)), tuple)
        and tuple(host_map[producer.module(t.path)][1][1:]) != tuple(t.offset[1:])
        for t in targets
        if t.offset is not None
    )
    with_map = adapter.match(state, host_map=host_map)
    qkv_rows = {}
    for t in targets:
        if t.offset is None:
            continue
        module = producer.module(t.path)
        if module not in with_map.matched:
            qkv_rows[module] = "unmatched"
            continue
        found = with_map.target(module)
        qkv_rows[module] = found.rows(state[found.key].shape) if found.sliced else "whole"
    row["core_host_map"] = {m: r for m, r in qkv_rows.items() if ".layers" in m or "_layers_" in m}
    row["core_host_map_wrong"] = sum(
        qkv_rows[producer.module(t.path)] != tuple(t.offset[1:]) for t in targets if t.offset is not None
    )
    assert row["core_host_map_wrong"] == 0, qkv_rows

    # ---- measured only: ComfyUI's own loader, on a fresh copy of the model (its full load may fail midway)
    _native(comfy, targets, regions, name, expected, originals, row)


def _native(comfy, targets, regions, name, expected, originals, row):
    """ComfyUI's ``LoraLoaderModelOnly`` on a fresh copy of the model: modules placed, its qkv patches (rows), and
    its error per region after a full load. Where the full load raises (a patch whose rows run past the weight),
    again on another copy without those patches, to see what the rest does; errors ComfyUI only logs are counted."""
    mm = importlib.import_module("comfy.model_management")
    for attempt in ("as loaded", "without patches past the weight"):
        twin = _build()
        assert all(torch.equal(v, originals[k]) for k, v in twin.originals().items())  # same seed, same weights
        native = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(twin.patcher, name, STRENGTH)[0]
        state = twin.patcher.model.state_dict()
        if attempt == "as loaded":
            row["native"] = placed(native)
            row["native_qkv"] = sorted(
                (k, p[3] and tuple(p[3][1:]))
                for k, ps in native.patches.items()
                for p in ps
                if k.endswith(".qkv.weight")
            )
        else:
            for key, patches in native.patches.items():
                patches[:] = [p for p in patches if not p[3] or p[3][1] + p[3][2] <= state[key].shape[p[3][0]]]
            row["native_kept"] = placed(native)
        logged = _Logged()
        logging.getLogger().addHandler(logged)
        try:
            got, _ = full_load(native, list(expected), originals)
        except Exception as e:
            native.unpatch_model()
            row["native_error"] = f"full load raised {type(e).__name__}: {e}"
            continue
        finally:
            logging.getLogger().removeHandler(logged)
            mm.unload_all_models()
        row["native_logged"] = logged.errors
        row["native_attempt"] = attempt
        row["native_err"] = {k: e for k, (e, _) in _errors(got, expected, originals, regions).items()}
        return


class _Logged(logging.Handler):
    """Counts the errors ComfyUI logs (and skips) while calculating patched weights."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record):
        self.errors.append(record.getMessage())


def test_write_lumina2_gqa_table():
    if not ROWS:
        pytest.skip("no Lumina2 GQA results in this run")
    version = importlib.import_module("comfyui_version").__version__
    lines = [
        f"## ComfyUI {version}",
        "",
        f"Tiny Lumina2 (dim 32, 4 q heads, 2 kv heads of 8: qkv = 32 + 16 + 16 rows), LoRA rank {RANK} at strength"
        f" {STRENGTH} on q/k/v/out/feed-forward of every block. 'err' = worst delta-relative error per qkv region"
        " (and whole weight) after a full load; native = ComfyUI's LoraLoaderModelOnly on a copy of the model.",
        "",
        "| naming | modules | host map names other qkv rows | ours placed | ours err | core placed | core err |"
        " core+host map: wrong q/k/v rows |"
        " native placed | native err, layers.0 qkv q / k / v (1 = change missing) | native logged errors | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for label, r in ROWS.items():
        nerr, key = r.get("native_err"), "diffusion_model.layers.0.attention.qkv.weight"
        native = " / ".join(f"{nerr.get(f'{key}[{x}]', float('nan')):.2g}" for x in "qkv") if nerr else "—"
        if "native_error" in r:
            native = f"raised; without the patches past the weight's rows ({r.get('native_kept', '—')} kept): {native}"
        cells = (
            label,
            r["modules"],
            r.get("host_conflicts", "—"),
            r.get("ours", "—"),
            f"{r['err']:.1e}" if "err" in r else "—",
            r.get("core", "—"),
            f"{r['core_err']:.1e}" if "core_err" in r else "—",
            r.get("core_host_map_wrong", "—"),
            r.get("native", "—"),
            native,
            len(r.get("native_logged", ())),
            f"{r.get('seconds', 0):.1f}",
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
        notes.append(f"* {label}: native qkv patches (key, (first row, rows)): {r.get('native_qkv')}")
        if "native_error" in r:
            notes.append(f"  native {r['native_error']}")
        notes += [f"  native logged: {m}" for m in r.get("native_logged", ())[:3]]
        notes.append(f"  core API + host key map, layers.0 q/k/v rows: {r.get('core_host_map')}")
    section = "\n".join([*lines, "", *notes]) + "\n"
    print("\n" + section)
    write_host_section(ARTIFACT, "Lumina2 fused qkv with grouped K/V heads (tests/host/test_lumina2_gqa.py)", section)
