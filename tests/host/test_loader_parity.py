"""Our loader on a real architecture: applies every LyCORIS-family method exactly, inside a real ComfyUI.

The tiny SD1.5 checkpoint is loaded in-process (CheckpointLoaderSimple). For a handful of its real layers (UNet
attention q/k/out, ff proj, a 3x3 resnet conv, a 1x1 proj_in conv, a GroupNorm and a LayerNorm; CLIP-L layer 0
q/v/out_proj and fc1) adapter files are generated at test time by the reference libraries (lycoris-lora, peft;
see ``adapter_fixtures``) together with the reference effective weights at strengths 1, 0.6 and -0.5.

For every file and strength our ``LyCOLoadAdapter`` node patches clones of MODEL and CLIP, and the weights the
model really uses are read back

* after a **full load** (``comfy.model_management.load_models_gpu([patcher], force_full_load=True)``, the path
  samplers and text encoders take on a CPU machine: the patched weight is written into the module, cast back to
  the weight's dtype), followed by ``unpatch_model`` and a bit-exact check of the originals;
* on the **low-VRAM path** (``ModelPatcher.partially_load(cpu, extra_memory=1)``, i.e. a 1-byte weight budget:
  every module gets a ``LowVramPatch`` that recomputes the patch on each forward; the weight is obtained exactly
  as a forward does, through ``comfy.ops.cast_bias_weight`` with an fp32 input), followed by the same check;

and compared with the reference: relative error = max|ours − ref| / max|ref − base| within the float32 rounding
bound per layer, ``delta_agreement(ref, base, DEPTH, steps=STEPS)`` = 2ε·(max|ref|/max|ref − base| + 8·64) (about
6e-5 plus the ratio's share; see ``tolerances.py``).

dtype note: on the CPU, ComfyUI keeps this checkpoint's UNet in fp32 but its CLIP-L in **fp16** (the text
encoder dtype), and runs CLIP's matmuls in fp32 (manual cast). The full load therefore rounds patched CLIP weights
to fp16 once, while the low-VRAM path hands the fp32 result straight to the forward. For fp16 tensors the error
measure forgives one rounding per element, ``u·max(|got|, |ref|)`` with the fp16 unit roundoff u = 2⁻¹¹ (plus
2⁻²⁵ for subnormals), before taking the maximum: a correctly rounded result costs nothing, anything beyond counts.
The same measure is applied to core ``LoraLoader``.

Side by side, ComfyUI's own ``LoraLoader`` runs on the same files; its errors go into
``test-artifacts/native_vs_ours.md`` and the known ComfyUI 0.3.75 errors (docs/methods.md, "ComfyUI's built-in
adapters") are pinned, so the claim "ours is exact where core is not" stays checked.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from dataclasses import dataclass, field

import pytest
import torch

import adapter_fixtures as af
from comfy_bootstrap import REPO_ROOT
from conftest import one_thread
from tolerances import delta_agreement

# Every fixture's reductions: ranks ≤ 8, Kronecker factors and OFT/BOFT blocks ≤ 16, DoRA's norm over a fan-in
# n ≤ 2880 (a 320-channel 3×3 conv) counted as √n ≤ 54 (the probabilistic bound of forward_agreement: the worst
# case n would allow 2ε·2·2880 ≈ 6.9e-4, 7 times the former fixed 1e-4) → depth 64. Chains: BOFT's Cayley solve,
# ≤ 5 butterfly stages (20 blocks of 16), R·W, the strength interpolation → 8 steps. Measured: ≤ 0.11 of it.
DEPTH, STEPS = 64, 8


def bound(ref: torch.Tensor, base: torch.Tensor) -> float:
    """The rounding bound on ``max|ours − ref| / max|ref − base|`` for one key (float32, on any CPU)."""
    return delta_agreement(ref, base, DEPTH, steps=STEPS)


ARTIFACT = REPO_ROOT / "test-artifacts" / "native_vs_ours.md"
FIXTURE_NAMES = (*af.LYCORIS_SPECS, *af.PEFT_NAMES)
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------------- measures
FP16_UNIT_ROUNDOFF = 2.0**-11  # |fp16(x) − x| ≤ u·|x| for normal x (plus 2^-25 in the subnormal range)


def rel_err(got: torch.Tensor, ref: torch.Tensor, denom: float) -> float:
    """max|got − ref| / denom (denom = max|ref − base|); for fp16 ``got`` one fp16 rounding is forgiven."""
    diff = (got.float() - ref).abs_()
    if got.dtype == torch.float16:
        allowance = torch.maximum(got.float().abs_(), ref.abs()).mul_(FP16_UNIT_ROUNDOFF).add_(2.0**-25)
        diff = diff.sub_(allowance).clamp_min_(0)
    return diff.max().item() / denom if denom > 0 else math.inf


# --------------------------------------------------------------------------------------------------- records
@dataclass
class Outcome:
    """One (fixture, strength): what our node and core's LoraLoader made of it."""

    error: str = ""  # exception from our node, if any
    summary: str = ""
    patched: set = field(default_factory=set)  # keys our clones carry patches for
    full: dict = field(default_factory=dict)  # key -> rel err, full load
    lowvram: dict = field(default_factory=dict)  # key -> rel err, LowVramPatch path
    full_vs_lowvram: float = 0.0  # max |full − lowvram| over fp32 keys
    full_vs_lowvram_share: float = 0.0  # the same per key as a fraction of bound(ref, base)·max|ref − base|
    bounds: dict = field(default_factory=dict)  # key -> bound(ref, base)
    lowvram_hooked: bool = False  # every patched module carried a LowVramPatch
    restored: bool = False  # unpatch_model restored every original bit-exactly
    input_untouched: bool = False
    native_patched: set = field(default_factory=set)
    native: dict = field(default_factory=dict)  # key -> rel err of core LoraLoader
    native_log: dict = field(default_factory=dict)  # counts of core's warning/error lines


@dataclass
class Parity:
    model: object
    clip: object
    fixtures: dict
    originals: dict  # key -> original tensor (model dtype)
    base: dict  # key -> fp32 copy
    outcomes: dict  # (fixture, strength) -> Outcome
    timings: dict


class _Counter(logging.Handler):
    PATTERNS = ("lora key not loaded", "NOT LOADED", "ERROR")

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.counts = {p: 0 for p in self.PATTERNS}

    def emit(self, record):
        msg = record.getMessage()
        for p in self.PATTERNS:
            if msg.startswith(p) or (p != "ERROR" and p in msg):
                self.counts[p] += 1


# --------------------------------------------------------------------------------------------------- ComfyUI
def _split(keys):
    unet = [k for k in keys if k.startswith(af.UNET_PREFIX)]
    clip = [k for k in keys if k.startswith(af.CLIP_PREFIX)]
    assert len(unet) + len(clip) == len(keys)
    return unet, clip


def _patchers(model, clip, keys):
    unet, te = _split(keys)
    return [(p, ks) for p, ks in ((model, unet), (clip.patcher if clip is not None else None, te)) if ks]


def _check_restored(patcher, keys, originals) -> bool:
    utils = importlib.import_module("comfy.utils")
    return all(torch.equal(utils.get_attr(patcher.model, k).detach(), originals[k]) for k in keys)


def read_full_load(model, clip, keys, originals) -> tuple[dict, bool]:
    """Weights after a full load, then unpatch and check the originals.

    The load is the production path on a CPU machine: ``load_models_gpu([patcher], force_full_load=True)``
    (→ ``partially_load``: unpatch whatever another clone left patched, then ``load(..., full_load=True)``, which
    writes ``calculate_weight``'s result into each module cast to the weight's dtype). ``unpatch_model`` is the
    restore every unload path ends in.
    """
    utils = importlib.import_module("comfy.utils")
    mm = importlib.import_module("comfy.model_management")
    out, restored = {}, True
    for patcher, ks in _patchers(model, clip, keys):
        if not patcher.patches:  # nothing to apply (core LoraLoader on files it cannot read): weights stay
            out.update({k: originals[k] for k in ks})
            continue
        mm.load_models_gpu([patcher], force_full_load=True)
        try:
            for k in ks:
                out[k] = utils.get_attr(patcher.model, k).detach().clone()
        finally:
            patcher.unpatch_model()
        restored &= _check_restored(patcher, ks, originals)
    return out, restored


def read_lowvram(model, clip, keys, originals) -> tuple[dict, bool, bool]:
    """Weights as a forward sees them when every module is offloaded (LowVramPatch recomputation).

    ``partially_load(cpu, extra_memory=1)`` is what ``LoadedModel.model_load`` runs with a 1-byte weight budget: no
    module fits, so each patched module gets ``weight_function = [LowVramPatch]``; the weight is then obtained
    exactly as the module's forward does, ``comfy.ops.cast_bias_weight`` with an fp32 input (CPU compute dtype).
    """
    ops = importlib.import_module("comfy.ops")
    out, restored, hooked = {}, True, True
    patcher_module = importlib.import_module("comfy.model_patcher")
    for patcher, ks in _patchers(model, clip, keys):
        # ComfyUI 0.33: a full load of a patcher with force_cast_weights (CLIP, after set_model_compute_dtype)
        # leaves ``prev_comfy_cast_weights`` on its modules, which unpatch_model does not clear; the next low-VRAM
        # load then takes every module for "already lowvramed" and attaches no LowVramPatch (native patches vanish
        # alike). Cleared here, as on a model never fully loaded before.
        for module in patcher.model.modules():
            patcher_module.wipe_lowvram_weight(module)
        patcher.partially_load(CPU, extra_memory=1)
        try:
            assert patcher.model.model_lowvram, "the 1-byte budget did not produce a low-VRAM load"
            for k in ks:
                module_path, part = k.rsplit(".", 1)
                module = patcher.model.get_submodule(module_path)
                funcs = module.weight_function if part == "weight" else module.bias_function
                hooked &= any(type(f).__name__ == "LowVramPatch" for f in funcs)
                x = torch.zeros(1, dtype=torch.float32)
                weight, bias = ops.cast_bias_weight(module, x)  # fresh tensors: the patch functions copy
                out[k] = (weight if part == "weight" else bias).detach()
        finally:
            patcher.unpatch_model()
        restored &= _check_restored(patcher, ks, originals)
    return out, restored, hooked


def _state(model, clip):
    return (tuple(model.patches), model.patches_uuid, tuple(clip.patcher.patches), clip.patcher.patches_uuid)


def evaluate(env, parity_model, parity_clip, fixture: af.Fixture, s: float, originals, base) -> Outcome:
    out = Outcome()
    ref = fixture.reference[s]
    keys = sorted(ref)
    denom = {k: (ref[k] - base[k]).abs().max().item() for k in keys}
    out.bounds = {k: bound(ref[k], base[k]) for k in keys}
    before = _state(parity_model, parity_clip)
    node = env.lyco_nodes["LyCOLoadAdapter"]
    try:  # an exception from our node or from our patches at load time is recorded; the per-file test reports it
        new_model, new_clip, summary = node.execute(parity_model, parity_clip, fixture.lora_name, s, s).result
        out.summary = summary
        out.patched = set(new_model.patches) | set(new_clip.patcher.patches)
        full, ok_full = read_full_load(new_model, new_clip, keys, originals)
        low, ok_low, out.lowvram_hooked = read_lowvram(new_model, new_clip, keys, originals)
        out.restored = ok_full and ok_low
        out.full = {k: rel_err(full[k], ref[k], denom[k]) for k in keys}
        out.lowvram = {k: rel_err(low[k], ref[k], denom[k]) for k in keys}
        out.full_vs_lowvram = max(
            [(full[k].float() - low[k].float()).abs().max().item() for k in keys if full[k].dtype == torch.float32]
            or [0.0]
        )
        out.full_vs_lowvram_share = max(
            [
                (full[k].float() - low[k].float()).abs().max().item() / (out.bounds[k] * denom[k])
                for k in keys
                if full[k].dtype == torch.float32 and denom[k] > 0
            ]
            or [0.0]
        )
    except Exception as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.input_untouched = _state(parity_model, parity_clip) == before

    counter = _Counter()
    root = logging.getLogger()
    root.addHandler(counter)
    try:  # core logs unloaded keys at load time and swallowed adapter exceptions at patch time
        n_model, n_clip = env.nodes.LoraLoader().load_lora(parity_model, parity_clip, fixture.lora_name, s, s)
        native, _ = read_full_load(n_model, n_clip, keys, originals)
    finally:
        root.removeHandler(counter)
    out.native_log = dict(counter.counts)
    out.native_patched = set(n_model.patches) | set(n_clip.patcher.patches)
    out.native = {k: rel_err(native[k], ref[k], denom[k]) for k in keys}
    out.input_untouched &= _state(parity_model, parity_clip) == before
    return out


# --------------------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="session")
def parity(comfy, parity_files) -> Parity:
    with one_thread():
        t0 = time.perf_counter()
        outcomes = {}
        for fx in parity_files.fixtures.values():
            for s in af.STRENGTHS:
                outcomes[(fx.name, s)] = evaluate(
                    comfy, parity_files.model, parity_files.clip, fx, s, parity_files.originals, parity_files.base
                )
        timings = {**parity_files.timings, "ours + native, all strengths": time.perf_counter() - t0}
    return Parity(
        model=parity_files.model,
        clip=parity_files.clip,
        fixtures=parity_files.fixtures,
        originals=parity_files.originals,
        base=parity_files.base,
        outcomes=outcomes,
        timings=timings,
    )


# --------------------------------------------------------------------------------------------------- files
def _combo_options(node_cls, name: str) -> list:
    spec = node_cls.INPUT_TYPES()["required"][name]
    return list(spec[1].get("options", [])) if spec[0] == "COMBO" else list(spec[0])


def test_fixture_files_are_what_they_claim(parity, comfy):
    """Each generated file holds the variant its row claims (so the table compares what it says it does), and the
    loader's combo lists every file (PEFT folders as ``<dir>/adapter_model.safetensors``)."""
    from safetensors.torch import load_file

    options = _combo_options(comfy.lyco_nodes["LyCOLoadAdapter"], "adapter_name")
    files = {name: load_file(str(fx.path)) for name, fx in parity.fixtures.items()}
    for name, fx in parity.fixtures.items():
        assert fx.lora_name in options, fx.lora_name
        if fx.family == "lycoris":  # kohya names, as ComfyUI's key maps spell them
            expected = {
                ("lora_unet_" if la.side == "unet" else "lora_te_") + la.path.replace(".", "_") for la in fx.layers
            }
            modules = {k.split(".", 1)[0] for k in files[name]}
        else:  # PEFT: base_model.model.<ComfyUI module path>.<param>
            expected = {"base_model.model." + la.path for la in fx.layers}
            modules = {p for k in files[name] for p in expected if k.startswith(p + ".")}
            assert all(any(k.startswith(p + ".") for p in expected) for k in files[name]), name
            assert (fx.path.parent / "adapter_config.json").is_file()
        assert modules == expected, f"{name}: {sorted(modules ^ expected)}"

    def suffixes(name, module_part=""):
        return {k.split(".", 1)[1] for k in files[name] if module_part in k.split(".", 1)[0]}

    conv3 = "in_layers_2"
    assert "lora_mid.weight" in suffixes("lyco_locon_tucker", conv3)
    assert {"hada_t1", "hada_t2"} <= suffixes("lyco_loha_tucker", conv3)
    assert "lokr_t2" in suffixes("lyco_lokr_tucker", conv3)
    assert not any(s.endswith(("_a", "_b")) for s in suffixes("lyco_lokr_full_matrix"))
    assert "lokr_w1_a" in suffixes("lyco_lokr_decompose_both")
    assert {tuple(v.shape) for k, v in files["lyco_lokr_factor4"].items() if k.endswith(".lokr_w1")} == {(4, 4)}
    for name, on_out in (("lyco_dora_out", True), ("lyco_dora_in", False)):
        scales = [v for k, v in files[name].items() if k.endswith(".dora_scale")]
        assert len(scales) == len(af.ADAPTER_LAYERS)
        assert all((v.shape[0] > 1) == on_out for v in scales), name
    assert "rescale" in suffixes("lyco_oft_rescaled")
    assert all(v.ndim == 4 for k, v in files["lyco_boft"].items() if k.endswith(".oft_blocks"))
    assert "on_input" in suffixes("lyco_ia3")
    assert {"diff", "diff_b"} <= suffixes("lyco_full")
    assert suffixes("lyco_norm") == {"w_norm", "b_norm"}
    assert any(k.endswith("lora_magnitude_vector") for k in files["peft_dora"])
    assert any(k.endswith("oft_R.weight") for k in files["peft_oft"])
    # the OFT constraint is active on every layer: ‖Q‖ over all blocks exceeds LyCORIS' bound alpha·out
    sd = files["lyco_oft_constraint"]
    for key, blocks in sd.items():
        if key.endswith(".oft_blocks"):
            alpha = float(sd[key.replace("oft_blocks", "alpha")])
            q = blocks - blocks.transpose(1, 2)
            out_dim = blocks.shape[0] * blocks.shape[1]
            assert alpha == pytest.approx(1e-3) and q.norm().item() > alpha * out_dim, key


# --------------------------------------------------------------------------------------------------- ours
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_ours_exact_full_and_lowvram(parity, name):
    fixture = parity.fixtures[name]
    for s in af.STRENGTHS:
        o = parity.outcomes[(name, s)]
        where = f"{name} at strength {s}"
        assert not o.error, f"{where}: our node raised {o.error}"
        assert o.input_untouched, f"{where}: the input MODEL/CLIP patch lists changed"
        assert " 0 unmatched" in o.summary and "0 unknown keys" in o.summary, f"{where}: {o.summary}"
        assert o.patched == set(fixture.reference[s]), (
            f"{where}: patched {sorted(o.patched ^ set(fixture.reference[s]))} differ from the changed keys"
        )
        bad_full = {k: (v, o.bounds[k]) for k, v in o.full.items() if not v <= o.bounds[k]}
        bad_low = {k: (v, o.bounds[k]) for k, v in o.lowvram.items() if not v <= o.bounds[k]}
        assert not bad_full, f"{where}: full-load relative error > its rounding bound (error, bound): {bad_full}"
        assert not bad_low, f"{where}: low-VRAM relative error > its rounding bound (error, bound): {bad_low}"
        assert o.lowvram_hooked, f"{where}: a patched module had no LowVramPatch in the low-VRAM load"
        assert o.restored, f"{where}: unpatch_model did not restore the original weights bit-exactly"


def test_strength_zero_is_bit_identical(parity, comfy):
    """0/0 returns the inputs; 0 on one side leaves that side's weights bit-identical (DoRA and rescaled OFT
    would change W even at LyCORIS multiplier 0; our strength 0 means off)."""
    node = comfy.lyco_nodes["LyCOLoadAdapter"]
    model, clip = parity.model, parity.clip
    with one_thread():
        _check_strength_zero(node, model, clip, parity)
    assert not model.patches and not clip.patcher.patches


def _check_strength_zero(node, model, clip, parity):
    for name in ("lyco_dora_out", "lyco_oft_rescaled", "peft_ia3"):
        fixture = parity.fixtures[name]
        m, c, _ = node.execute(model, clip, fixture.lora_name, 0.0, 0.0).result
        assert m is model and c is clip
        keys = sorted(fixture.reference[1.0])
        unet_keys, clip_keys = _split(keys)
        for s_model, s_clip, frozen in ((0.0, 1.0, unet_keys), (1.0, 0.0, clip_keys)):
            m, c, _ = node.execute(model, clip, fixture.lora_name, s_model, s_clip).result
            full, restored = read_full_load(m, c, keys, parity.originals)
            low, restored_low, _ = read_lowvram(m, c, keys, parity.originals)
            assert restored and restored_low
            for k in frozen:
                assert torch.equal(full[k], parity.originals[k]), f"{name} ({s_model}, {s_clip}): {k} changed"
                assert torch.equal(low[k], parity.originals[k].float()), f"{name} lowvram: {k} changed"
            moved = [k for k in keys if k not in frozen]
            assert any(not torch.equal(full[k], parity.originals[k]) for k in moved), f"{name}: nothing applied"
    assert not model.patches and not clip.patcher.patches


def test_fresh_checkpoint_with_grad_enabled(parity, comfy):
    """Outside inference mode (scripts, tests, training nodes) a freshly loaded UNet may have weights that require
    grad (0.3.75 loads them so; 0.33 does not, so here they are set); ComfyUI patches a copy of them. Our patches
    must work there too (the fused OFT/BOFT kernels once raised "functions with out=... arguments don't support
    automatic differentiation")."""
    node = comfy.lyco_nodes["LyCOLoadAdapter"]
    with one_thread():
        model, clip, _ = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)
        assert torch.is_grad_enabled()
        for name in ("lyco_oft", "lyco_boft", "lyco_loha"):
            fixture = parity.fixtures[name]
            ref = fixture.reference[0.6]
            keys = [k for k in sorted(ref) if k.startswith(af.UNET_PREFIX)]
            for k in keys:
                model.model.get_parameter(k).requires_grad_(True)  # as 0.3.75 loads them (an unpatch resets it)
            m, c, _ = node.execute(model, clip, fixture.lora_name, 0.6, 0.6).result
            full, restored = read_full_load(m, None, keys, parity.originals)
            low, restored_low, _ = read_lowvram(m, None, keys, parity.originals)
            assert restored and restored_low
            for k in keys:
                denom, tol = (ref[k] - parity.base[k]).abs().max().item(), bound(ref[k], parity.base[k])
                assert rel_err(full[k], ref[k], denom) <= tol, (name, k)
                assert rel_err(low[k], ref[k], denom) <= tol, (name, k)


def test_full_and_lowvram_agree_on_fp32_weights(parity):
    # two float32 computations of the same W' = W + ΔW: each key within its rounding bound of the other
    worst = max(o.full_vs_lowvram_share for o in parity.outcomes.values())
    assert worst <= 1, f"full load and LowVramPatch differ by {worst} of the rounding bound on fp32 weights"


# --------------------------------------------------------------------------------------------------- native
def _native(parity, name, s):
    return max(parity.outcomes[(name, s)].native.values())


def _native_exact(parity, name, s, skip: str = "") -> bool:
    """'Core is right here': every key (but those containing ``skip``) within the same rounding bound as ours."""
    o = parity.outcomes[(name, s)]
    return all(v <= o.bounds[k] for k, v in o.native.items() if not (skip and skip in k))


def _native_layer(parity, name, s, path_part):
    values = [v for k, v in parity.outcomes[(name, s)].native.items() if path_part in k]
    assert values, path_part
    return max(values)


def test_native_known_errors_are_pinned(parity):
    """What core 0.3.75 gets wrong (docs/methods.md), still wrong here (so 'ours is exact' means
    something), and what it gets right still right (which also cross-checks the references)."""
    p = parity
    for name in (
        "lyco_lora",
        "lyco_locon_tucker",
        "lyco_loha",
        "lyco_loha_tucker",
        "lyco_lokr_factor4",
        "lyco_lokr_decompose_both",
        "lyco_lokr_full_matrix",
        "lyco_full",
        "lyco_norm",
    ):
        for s in af.STRENGTHS:
            assert _native_exact(p, name, s), f"core became inexact on {name} at {s}: {_native(p, name, s)}"
    # LoKr + Tucker conv: the 3x3 layer stays unpatched (swallowed 'view size' error); the rest is exact
    for s in af.STRENGTHS:
        assert _native_layer(p, "lyco_lokr_tucker", s, "in_layers.2") >= 0.99
        assert _native_exact(p, "lyco_lokr_tucker", s, skip="in_layers.2")
    assert p.outcomes[("lyco_lokr_tucker", 1.0)].native_log["ERROR"] >= 1
    # OFT: exact at 1, strength applied twice (relerr |s − 1|) elsewhere
    assert _native_exact(p, "lyco_oft", 1.0)
    for s in (0.6, -0.5):
        assert abs(_native(p, "lyco_oft", s) - abs(s - 1)) < 0.02, _native(p, "lyco_oft", s)
    # OFT constraint bounded by raw alpha (not alpha·out): almost nothing applied
    for s in af.STRENGTHS:
        assert _native(p, "lyco_oft_constraint", s) > 0.9
    # OFT rescale ignored: wrong even at strength 1
    for s in af.STRENGTHS:
        assert _native(p, "lyco_oft_rescaled", s) > 0.05
    # BOFT: exact at 1, not at other strengths
    assert _native_exact(p, "lyco_boft", 1.0)
    for s in (0.6, -0.5):
        assert _native(p, "lyco_boft", s) > 0.1
    # DoRA: on-out wrong at every strength; on-in exact at 1 only
    for s in af.STRENGTHS:
        assert _native(p, "lyco_dora_out", s) > 0.01
    assert _native_exact(p, "lyco_dora_in", 1.0)
    for s in (0.6, -0.5):
        assert _native(p, "lyco_dora_in", s) > 0.1
    # IA3 and PEFT files: not loaded at all (relative error 1 on every layer)
    for name in ("lyco_ia3", *af.PEFT_NAMES):
        for s in af.STRENGTHS:
            assert min(p.outcomes[(name, s)].native.values()) >= 0.99, name
            assert not p.outcomes[(name, s)].native_patched, name


# --------------------------------------------------------------------------------------------------- table
def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.1e}" if x < 1e-2 else f"{x:.2f}"


def _short(key: str) -> str:
    for layer in af.LAYERS:
        if key in (layer.key, layer.bias_key):
            return layer.label + (" bias" if key == layer.bias_key else "")
    return key


def render_table(parity) -> str:
    lines = [
        "# Core LoraLoader vs LyCOLoadAdapter on the tiny SD1.5 checkpoint (ComfyUI 0.3.75, CPU)",
        "",
        "Relative error per method and strength: max over the adapted layers of max|W_used − W_ref| / "
        "max|W_ref − W_base| (W_ref from lycoris-lora's training forward or PEFT's merge). 0 = exact, 1.00 = "
        "not applied. fp16 CLIP weights (full load): one fp16 rounding (2^-11·|w|) per element is forgiven. "
        "ours = full load / low-VRAM (LowVramPatch) path; core = LoraLoader, full load.",
        "",
        "| method | file | ours s=1 | ours s=0.6 | ours s=-0.5 | core s=1 | core s=0.6 | core s=-0.5 | core notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in FIXTURE_NAMES:
        fx = parity.fixtures[name]
        ours, native, notes = [], [], []
        for s in af.STRENGTHS:
            o = parity.outcomes[(name, s)]
            if o.error:
                ours.append("raised")
            else:
                ours.append(f"{_fmt(max(o.full.values()))} / {_fmt(max(o.lowvram.values()))}")
            native.append(_fmt(max(o.native.values())))
        o1 = parity.outcomes[(name, 1.0)]
        worst = [_short(k) for k, v in o1.native.items() if v >= 0.99]
        if not o1.native_patched:
            notes.append("nothing loaded")
        elif worst:
            notes.append("unchanged: " + ", ".join(sorted(set(worst))))
        for pat, count in o1.native_log.items():
            if count:
                notes.append(f"{count}× '{pat}'")
        file = fx.path.name if fx.family == "lycoris" else fx.name + "/"
        lines.append(f"| {fx.method} | `{file}` | {' | '.join(ours)} | {' | '.join(native)} | {'; '.join(notes)} |")
    worst_fl = max(o.full_vs_lowvram for o in parity.outcomes.values())
    lines += [
        "",
        f"Ours, full load vs low-VRAM path on the fp32 UNet weights: max |difference| {worst_fl:.1e}. "
        "CLIP-L is fp16 here: the full load rounds once to fp16, the low-VRAM path stays fp32.",
        "",
        "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in parity.timings.items()),
    ]
    return "\n".join(lines) + "\n"


def test_native_vs_ours_table(parity, capsys):
    table = render_table(parity)
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(table, encoding="utf-8")
    with capsys.disabled():
        print("\n" + table)
    assert all(not o.error for o in parity.outcomes.values())
