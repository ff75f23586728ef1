"""Beyond SD1.5: our loader on tiny models of other architectures built through the host's own classes.

For every architecture (``arch_models``) and every producer that trains it (``producer_names``), an adapter file is
written in the producer's real naming for every targeted module (LoRA, LoKr, LoHa as that producer writes them;
random factors, seeded) into the loras folder. Then

* our ``LyCOLoadAdapter`` loads it onto the model and its coverage report must place every module, none unmatched,
  no unknown keys;
* the patched model is fully loaded (``load_models_gpu(force_full_load=True)``, the CPU production path) and every
  patched weight is compared with the expected ``W + strength·ΔW`` placed at the module's rows (ΔW computed here in
  float64: ``up·down·alpha/r``, ``kron(w1, w2)``, ``(w1_a·w1_b) ⊙ (w2_a·w2_b)·alpha/r``); the relative error
  ``max|got − ref| / max|ref − W|`` must be within ``delta_agreement(ref, W, RANK, steps=STEPS)``; unpatching must
  restore every original bit-exactly;
* the core API (what the CLI runs: the model's own keys, no host key map) matches the same file and must place every
  module on the weight and rows the host's conversion table names;
* ComfyUI's native ``LoraLoaderModelOnly`` loads the same file and the number of modules it places is recorded.

diag-OFT and BOFT files (LyCORIS via kohya and via musubi-tuner, SimpleTuner's LyCORIS; on every architecture those
trainers train here) take their expected weight from the reference library instead: a lycoris-lora
``DiagOFTModule`` / ``ButterflyOFTModule`` on an ``nn.Linear`` holding the module's base weight (or row slice) with
the file's tensors, its ``get_merged_weight(multiplier=1)``; those rows run at strength 1 so that no strength law is
compared.

Diffusers-named files on Flux/SD3/Z-Image land on row slices of fused weights (``img_attn.qkv``, single-block
``linear1`` = q, k, v and the MLP input; MMDiT ``attn.qkv``; Lumina2's ``attention.qkv``, q its first ``in_features``
rows); several slices of one weight are checked together.

The coverage table (architecture × producer × method: modules in file, ours placed, native placed) goes to
``test-artifacts/architectures.md`` (one section per host version).
"""

from __future__ import annotations

import importlib
import re
import time
import zlib

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
# OFT/BOFT rows at strength 1: the reference library's multiplier 1, so no strength law is compared (ours
# interpolates each rotation block, docs/methods.md "Strength laws"; LyCORIS folds the multiplier in differently)
OFT_STRENGTH = 1.0
OFT_METHODS = ("oft", "boft")
OFT_STD = 0.03  # std of the random oft_blocks (rotations a few degrees from I, as trained ones)
OFT_CONSTRAINT = 0.01  # the file's alpha: LyCORIS rescales Q to ‖Q‖_F ≤ alpha·out where it is larger
RANK, ALPHA = 4, 2.0
# Reductions: a rank-4 product (LoRA, LoHa's two factors, LoKr's w2_a·w2_b) → depth 4; chains: the factor
# products, the Kronecker/Hadamard product, the scale, the add to W → 3 steps.
STEPS = 3
FOLDER = "lyco_arch"
ARTIFACT = REPO_ROOT / "test-artifacts" / "architectures.md"
ROWS: dict[tuple[str, str, str], dict] = {}
TIMINGS: dict[str, float] = {}


def _cases():
    for arch, producers in pn.PRODUCERS.items():
        for producer in producers:
            for method in producer.methods:
                yield pytest.param(arch, producer, method, id=f"{arch}-{producer.name}-{method}")


# --------------------------------------------------------------------------------------------------- fixtures
_ARCHES: dict = {}


def _arch(comfy, name):
    if name not in _ARCHES:
        t0 = time.perf_counter()
        _ARCHES[name] = arch_models.BUILDERS[name]()
        TIMINGS[f"build {name}"] = time.perf_counter() - t0
    arch = _ARCHES[name]
    if arch is None:
        pytest.skip(f"this host has no comfy.supported_models class for {name}")
    return arch


@pytest.fixture(scope="module")
def loras_dir(comfy):
    with loras_folder(comfy, FOLDER, _ARCHES) as path:
        yield path


# --------------------------------------------------------------------------------------------------- factors
def _factor_pair(n: int) -> tuple[int, int]:
    """(a, b) with a·b = n and a the largest divisor ≤ 4 (LyCORIS' small left factor)."""
    a = next(d for d in (4, 3, 2, 1) if n % d == 0)
    return a, n // a


def _factors(method: str, shape: tuple[int, int], full: bool, gen: torch.Generator) -> tuple[dict, torch.Tensor]:
    """({factor: fp32 tensor}, ΔW in float64) for one module of ``shape`` (out, in)."""
    out_dim, in_dim = shape

    def rnd(*size, scale=0.1):
        return (torch.randn(size, generator=gen) * scale).float()

    if method == "lora":
        f = {"down": rnd(RANK, in_dim, scale=0.3), "up": rnd(out_dim, RANK, scale=0.3), "alpha": torch.tensor(ALPHA)}
        return f, f["up"].double() @ f["down"].double() * (ALPHA / RANK)
    if method == "lokr":
        (a1, b1), (a2, b2) = _factor_pair(out_dim), _factor_pair(in_dim)
        f = {"w1": rnd(a1, a2, scale=0.5)}
        if full:  # both factors full: the file's alpha is not a scale (LyCORIS stores alpha = dim; scale 1)
            f |= {"w2": rnd(b1, b2), "alpha": torch.tensor(float(max(b1, b2)))}
            return f, torch.kron(f["w1"].double(), f["w2"].double())
        f |= {"w2_a": rnd(b1, RANK), "w2_b": rnd(RANK, b2), "alpha": torch.tensor(ALPHA)}
        w2 = f["w2_a"].double() @ f["w2_b"].double()
        return f, torch.kron(f["w1"].double(), w2) * (ALPHA / RANK)
    if method == "loha":
        f = {
            "w1_a": rnd(out_dim, RANK, scale=0.5),
            "w1_b": rnd(RANK, in_dim, scale=0.5),
            "hw2_a": rnd(out_dim, RANK, scale=0.5),
            "hw2_b": rnd(RANK, in_dim, scale=0.5),
            "alpha": torch.tensor(ALPHA),
        }
        d = (f["w1_a"].double() @ f["w1_b"].double()) * (f["hw2_a"].double() @ f["hw2_b"].double())
        return f, d * (ALPHA / RANK)
    raise ValueError(method)


def _strength(method: str) -> float:
    return OFT_STRENGTH if method in OFT_METHODS else STRENGTH


def _lycoris_oft(method: str, base: torch.Tensor, index: int, gen: torch.Generator) -> tuple[dict, torch.Tensor, int]:
    """({tensor: value}, W' − W in float64, reduction depth) for one diag-OFT / BOFT module on the weight ``base``,
    from the reference library (lycoris-lora ``DiagOFTModule`` / ``ButterflyOFTModule`` on an ``nn.Linear``
    holding ``base``): the library chooses the block layout for the out size, its ``oft_blocks`` are set to seeded
    random values, ``rescale`` on every other module, and W' is its own ``get_merged_weight(multiplier=1)``.
    The library computes in float32 (its Cayley inverse casts with ``.float()``), so W' is a float32 computation
    like ours. Raises where the library cannot build the module (BOFT needs out = 2k·2^p, k ≤ the block size) rather
    than leave a target out."""
    from lycoris.modules import ButterflyOFTModule, DiagOFTModule

    cls = DiagOFTModule if method == "oft" else ButterflyOFTModule
    linear = torch.nn.Linear(base.shape[1], base.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(base.float())
    rescaled = index % 2 == 1
    module = None
    for block in (8, 4, 16, 32) if method == "oft" else (4, 8, 16, 32):
        try:
            module = cls(f"m{index}", linear, 1.0, lora_dim=block, constraint=OFT_CONSTRAINT, rescaled=rescaled)
            break
        except ValueError:  # BOFT: "impossible to decompose … under BOFT constraints"
            continue
    if module is None:
        raise ValueError(f"lycoris-lora builds no {method} module for a weight of shape {tuple(base.shape)}")
    with torch.no_grad():
        module.oft_blocks.copy_(torch.randn(module.oft_blocks.shape, generator=gen) * OFT_STD)
        if rescaled:
            module.rescale.copy_(1 + torch.randn(module.rescale.shape, generator=gen) * 0.1)
        merged, _ = module.get_merged_weight(multiplier=1.0)
    tensors = {"oft_blocks": module.oft_blocks.detach().clone(), "alpha": torch.tensor(OFT_CONSTRAINT)}
    if rescaled:
        tensors["rescale"] = module.rescale.detach().clone()
    # reductions: bs-term products in the Cayley inverse and each rotation stage
    stages = module.oft_blocks.shape[0] if method == "boft" else 1
    return tensors, merged.double() - base.double(), module.oft_blocks.shape[-1] * stages


def _write(arch, producer, method, path) -> tuple[list, dict, int]:
    """Write the file; returns (targets, {weight key: expected float64 W'}, reduction depth for the tolerance)."""
    targets = arch.native if producer.naming == "native" else arch.diffusers
    state = arch.patcher.model.state_dict()
    gen = torch.Generator().manual_seed(zlib.crc32(f"{arch.name}|{producer.name}|{method}".encode()))
    tensors, expected, depth = {}, {}, RANK
    for index, t in enumerate(targets):
        weight = state[t.key]
        base = weight.narrow(*t.offset) if t.offset else weight
        if method in OFT_METHODS:
            factors, delta, module_depth = _lycoris_oft(method, base.detach(), index, gen)
            depth = max(depth, module_depth)
        else:
            factors, delta = _factors(method, tuple(base.shape), producer.lokr_full, gen)
        if not producer.has_alpha:  # PEFT files carry no alpha: scale 1
            delta = delta / (ALPHA / RANK) if method == "lora" else delta
            factors.pop("alpha", None)
        for name, value in factors.items():
            tensors[producer.tensor(t.path, name)] = value.contiguous()
        ref = expected.setdefault(t.key, weight.detach().double().clone())
        (ref.narrow(*t.offset) if t.offset else ref).add_(delta * _strength(method))
    save_file(tensors, str(path))
    return targets, expected, depth


# --------------------------------------------------------------------------------------------------- host


@pytest.mark.parametrize(("arch_name", "producer", "method"), list(_cases()))
def test_architecture_file_is_placed_exactly(comfy, loras_dir, arch_name, producer, method):
    arch = _arch(comfy, arch_name)
    slug = re.sub(r"\W+", "_", producer.name).strip("_").lower()
    path = loras_dir / f"{arch_name}-{slug}-{method}.safetensors"
    row = ROWS.setdefault((arch.name, producer.name, method), {"modules": 0, "ours": "—", "native": "—", "err": "—"})
    try:
        _check(comfy, arch, producer, method, path, row)
    finally:
        path.unlink(missing_ok=True)


def _check(comfy, arch, producer, method, path, row):
    with one_thread():
        targets, expected, depth = _write(arch, producer, method, path)
        strength = _strength(method)
        row["modules"] = len(targets)
        name = listed(path, path.parent.parent)
        originals = arch.originals()

        node = comfy.lyco_nodes["LyCOLoadAdapter"]
        if arch.clip is None:
            native = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(arch.patcher, name, strength)[0]
            out = node.execute(arch.patcher, None, name, strength, 0.0).result
            model = out[0]
        else:  # text encoders: with their checkpoint's tiny diffusion model beside them, as its MODEL and CLIP
            unet = _arch(comfy, arch.unet).patcher
            native = comfy.nodes.LoraLoader().load_lora(unet, arch.clip, name, strength, strength)[1].patcher
            out = node.execute(unet, arch.clip, name, strength, strength).result
            model = out[1].patcher
        row["native"] = placed(native)
        summary = out[2]
        m = SUMMARY.search(summary)
        assert m, summary
        unet_n, clip_n, unmatched, unknown = map(int, m.groups())
        ours, elsewhere = (unet_n, clip_n) if arch.clip is None else (clip_n, unet_n)
        assert elsewhere == 0, summary
        row["ours"] = ours
        row["unmatched"] = re.findall(r"(?m)^  unmatched (\S+):", summary)
        assert (ours, unmatched, unknown) == (len(targets), 0, 0), summary
        assert placed(model) == len(targets)

        # the core API (and so the CLI) on the same model's own state dict, no host key map: the same matcher
        state = arch.patcher.model_state_dict() if arch.clip is None else arch.clip.cond_stage_model.state_dict()
        core = importlib.import_module(comfy.pack_module_name + ".lyco_core").load_adapter(path)
        report = core.match(state)
        row["core"] = len(report.matched)
        assert not report.unmatched, report.unmatched
        for t in targets:  # on the same weight and rows as the host's conversion table says
            found = report.target(producer.module(t.path))
            rows = found.rows(state[found.key].shape) if found.sliced else None
            assert (found.key, rows) == (t.key, t.offset and tuple(t.offset[1:])), (t, str(found))

        got, restored = full_load(model, list(expected), originals)
        errors = {}
        for key, ref in expected.items():
            base = originals[key].double()
            denom = float((ref - base).abs().max())
            err = float((got[key].double() - ref).abs().max()) / denom
            errors[key] = (err, delta_agreement(ref, base, depth, steps=STEPS))
        row["err"] = f"{max(e for e, _ in errors.values()):.1e}"
        bad = {k: v for k, v in errors.items() if not v[0] <= v[1]}
        assert not bad, bad
        assert restored, "unpatch_model did not restore the originals"


def test_write_architectures_table():
    if not ROWS:
        pytest.skip("no architecture results in this run")
    version = importlib.import_module("comfyui_version").__version__
    lines = [
        f"## ComfyUI {version}",
        "",
        f"Tiny models through the host's classes; every file at strength {STRENGTH} (OFT/BOFT at {OFT_STRENGTH},",
        "checked against lycoris-lora's own merged weight); 'modules' = adapter modules in the file, 'ours' = placed",
        "by LyCOLoadAdapter, 'native' = patch entries placed by core LoraLoaderModelOnly,",
        "'max err' = our worst delta-relative error against the float64 expectation after a full load.",
        "",
        "'unmatched by ours' lists the modules our coverage report leaves unmatched (then that test fails).",
        "",
        "| architecture | producer | method | modules | ours | native | core/CLI | max err | unmatched by ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, producer, method), r in sorted(ROWS.items()):
        missed = ", ".join(f"`{m}`" for m in r.get("unmatched", ())) or ""
        cells = (arch, producer, method, r["modules"], r["ours"], r["native"], r.get("core", "—"), r["err"], missed)
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    section = "\n".join(lines) + "\n"
    write_host_section(ARTIFACT, "Adapter coverage beyond SD1.5 (tests/host/test_architectures.py)", section)


def test_bias_delta_on_a_fused_slice_changes_only_its_rows(comfy, loras_dir):
    """A module with a bias delta (a full difference with ``diff_b``) on q/k/v of Flux's fused ``img_attn.qkv``,
    named the diffusers way: the node patches those rows of the weight *and* of the bias, nothing else."""
    from tolerances import agreement

    arch = _arch(comfy, "flux")
    target = next(t for t in arch.diffusers if t.offset is not None and t.key.endswith("img_attn.qkv.weight"))
    bias_key = target.key[: -len("weight")] + "bias"
    originals = {**arch.originals(), bias_key: arch.patcher.model.state_dict()[bias_key].detach().clone()}
    _, start, rows = target.offset
    gen = torch.Generator().manual_seed(61)
    diff = 0.1 * torch.randn(rows, originals[target.key].shape[1], generator=gen)
    diff_b = 0.1 * torch.randn(rows, generator=gen)
    path = loras_dir / "flux-fused-bias.safetensors"
    save_file({f"{target.path}.diff": diff, f"{target.path}.diff_b": diff_b}, str(path))
    try:
        node = comfy.lyco_nodes["LyCOLoadAdapter"]
        model, _, summary = node.execute(arch.patcher, None, listed(path, loras_dir.parent), STRENGTH, 0.0).result
        assert "UNet 1 · CLIP 0 patched · 0 unmatched" in summary, summary
        got, restored = full_load(model, [target.key, bias_key], originals)
    finally:
        path.unlink(missing_ok=True)
    assert restored
    for key, delta in ((target.key, diff), (bias_key, diff_b)):
        expected = originals[key].double().clone()
        expected[start : start + rows] += STRENGTH * delta.double()
        error = float((got[key].double() - expected).abs().max() / expected.abs().max())
        assert error <= agreement(1, steps=2), (key, error)
        assert torch.equal(got[key][:start], originals[key][:start])
        assert torch.equal(got[key][start + rows :], originals[key][start + rows :])
