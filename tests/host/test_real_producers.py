"""Adapter files made BY the installable producers themselves (diffusers + peft, lycoris-lora), on diffusers twins of
the tiny ComfyUI models, loaded onto the ComfyUI models.

For SDXL, Flux.1, SD3.5, Qwen-Image, Z-Image, Wan 2.1 and HunyuanVideo (``arch_models``), ``diffusers_twins`` builds
the diffusers model class a trainer loads, with the same widths/depths/heads and the ComfyUI model's own weights
(through the host's conversion table; every diffusers tensor must be filled, Z-Image's timestep MLP excepted, see
``diffusers_twins.UNFILLABLE``). Neither host has a diffusers table for Wan or HunyuanVideo: their twins
(``WanTransformer3DModel``, ``HunyuanVideoTransformer3DModel``) are filled through our own alias tables
(``lyco_core.aliases.wan``; ``hunyuan_video_diffusers`` with the Flux names of its blocks), which are proved
independently first: the ComfyUI model and the twin must give the same output for the same random inputs (video
latents, timestep, text embeddings; HunyuanVideo's pooled text vector and guidance) (``diffusers_twins.forward_check``,
within ``forward_agreement``), and swapping two names must break that agreement
(``test_wan_twin_forward_proves_the_alias_table``, ``test_hunyuan_video_twin_forward_proves_the_alias_table``).
HunyuanVideo's final modulation (diffusers' ``norm_out.linear``, halves swapped) is no alias and not adapted.
Then the producer itself makes the file:

* ``peft LoRA (diffusers save)``: ``peft.LoraConfig(r=4, lora_alpha=2, init_lora_weights=False)`` added to the
  twin the way diffusers' training scripts do (``model.add_adapter``), seeded random factors, saved by the pipeline
  class's own ``save_lora_weights`` (``StableDiffusionXLPipeline`` ``unet_lora_layers``, ``FluxPipeline`` /
  ``StableDiffusion3Pipeline`` / ``QwenImagePipeline`` / ``WanPipeline`` / ``HunyuanVideoPipeline``
  ``transformer_lora_layers``) from ``get_peft_model_state_dict``, with ``<component>_lora_adapter_metadata`` = the
  LoraConfig dict, as ``diffusers.training_utils._collate_lora_metadata`` passes it (the file's only record of
  alpha: scale 2/4).
  Oracle: PEFT's own merge (``merge()`` of every tuner layer) of the same model. Also DoRA (``use_dora``, the
  scripts' ``--use_dora``) on SDXL and Flux (row norms of q/k/v slices of Flux's fused weights).
* ``peft LoKr/LoHa (PEFT folder)`` on Flux: ``get_peft_model(twin, LoKrConfig / LoHaConfig)``,
  ``save_pretrained`` (``adapter_model.safetensors`` + ``adapter_config.json``, keys ``base_model.model.<path>``),
  listed by ComfyUI as ``<folder>/adapter_model.safetensors``. Oracle: PEFT's merge, as above.
* ``lycoris (SimpleTuner)``: ``LycorisNetwork.apply_preset({"target_module": [...]})`` and
  ``create_lycoris(twin, 1.0, linear_dim, linear_alpha, algo=...)``, ``apply_to()`` exactly as SimpleTuner wraps a
  diffusers model, every tensor set to seeded random values (the library's init gives ΔW = 0), saved with the
  network's ``save_weights(path, dtype, {"lycoris_config": ...})`` → ``lycoris_<diffusers path>`` names. LoKr as
  SimpleTuner's default (``linear_dim`` 10000: full w1 and w2, factor 4 at these widths) and factorised
  (``linear_dim`` 4), LoHa, LoRA; LoRA with ``dora_wd`` (SDXL, Flux), diag-OFT (Flux, SD3.5), BOFT (SD3.5).
  Oracle: the weight the library's own training forward uses (``adapter_fixtures.effective_weight``, checked
  against the forward's output; lycoris' ``merge_to`` is not used, see adapter_fixtures).

Text encoders, in the files their producers really write:

* ``diffusers SDXL script``: the diffusion model's and both text encoders' LoRA in one file as diffusers'
  ``train_dreambooth_lora_sdxl.py --train_text_encoder`` saves it (``convert_state_dict_to_diffusers`` on each
  component: ``unet.…to_q.lora.down.weight``, ``text_encoder.…q_proj.lora_linear_layer.down.weight``; lora_alpha = r,
  no metadata), on transformers twins of the tiny CLIP-L/bigG (``CLIPTextModel``/``…WithProjection``; with
  transformers 5 CLIP-L's keys have no ``text_model.``);
* ``diffusers Flux script``: the transformer's and CLIP-L's PEFT state dicts with ``_collate_lora_metadata``;
* a PEFT LLM LoRA on Z-Image's Qwen3-4B text encoder (``Qwen3ForCausalLM`` twin, ``save_pretrained`` folder).

Each file is then loaded onto the ComfyUI model (with its text encoders: MODEL and CLIP) at strength 1 (the
producer's own scale, no strength law compared):

* by our ``LyCOLoadAdapter``: the coverage report must place every module of the file, none unmatched, no unknown
  keys; after a full load every patched weight is compared with the oracle mapped back through the same conversion
  table (q/k/v onto their rows of the fused ComfyUI weight); relative error ``max|got − ref| / max|ref − W|`` within
  ``delta_agreement(ref, W, RANK, steps=STEPS)``; unpatching restores the originals;
* by the core API (``lyco_core.load_adapter(file)``, the CLI's path) on the ComfyUI state dict, no host key map:
  ``match`` must match every module, ``patch`` (strength 1) must give the same weights within the same bound;
* by ComfyUI's native ``LoraLoaderModelOnly`` (``LoraLoader`` with text encoders): the number of modules it places
  is recorded.

Rows go to ``test-artifacts/real_producers.md`` (one section per host version).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import logging
import re
import time
import warnings
import zlib

import pytest
import torch

import arch_models
from comfy_bootstrap import REPO_ROOT
from conftest import one_thread
from patching import SUMMARY, full_load, listed, loras_folder, placed, write_host_section
from tolerances import delta_agreement

STRENGTH = 1.0
RANK, ALPHA = 4, 2.0
# Tolerance: the oracle (peft's merge / lycoris' forward weight, float32) and ours (float32) each compute
# W + ΔW from the file's factors: reductions over at most the rank (LoRA, LoHa's factors, a factorised LoKr w2) →
# depth RANK; chains: the factor products, the Kronecker/Hadamard product, the scale, the add to W → 3 steps.
# DoRA's weight norm reduces over the fan-in, an OFT rotation over its block (BOFT: × its stages): that depth then.
STEPS = 3
FOLDER = "lyco_real"
ARTIFACT = REPO_ROOT / "test-artifacts" / "real_producers.md"
ROWS: dict[tuple[str, str, str], dict] = {}
FORWARD: dict[str, tuple[float, float]] = {}  # twins filled through our alias table: (forward error, bound)
TIMINGS: dict[str, float] = {}

# (arch, producer, method); producer: "peft" (diffusers save_lora_weights), "peft folder", "lycoris"
ARCHES = ("sdxl", "flux", "sd3", "qwen_image", "zimage", "wan", "hunyuan_video")
LYCORIS_METHODS = ("lokr", "lokr factorised", "loha", "lora")
CASES = [
    *((arch, "peft", "lora") for arch in ARCHES),
    ("sdxl", "peft", "dora"),  # diffusers' scripts' --use_dora
    ("flux", "peft", "dora"),  # DoRA on q/k/v: row norms of slices of the fused img_attn.qkv / linear1
    ("flux", "peft folder", "lokr"),
    ("flux", "peft folder", "loha"),
    *((arch, "lycoris", method) for arch in ARCHES for method in LYCORIS_METHODS),
    ("sdxl", "lycoris", "lora dora_wd"),
    ("flux", "lycoris", "lora dora_wd"),
    ("flux", "lycoris", "diag-oft"),
    ("sd3", "lycoris", "diag-oft"),
    # BOFT needs out = blocks·2^p: on SD3's 128/512-wide layers; not Flux, whose single-block modulation (out 96)
    # the library refuses to decompose
    ("sd3", "lycoris", "boft"),
]
PRODUCER_LABEL = {
    "peft": "peft + diffusers save_lora_weights",
    "peft folder": "peft save_pretrained (PEFT folder)",
    "lycoris": "lycoris-lora (SimpleTuner)",
}
# lycoris-lora create_lycoris kwargs per method (SimpleTuner's default config is LoKr with linear_dim 10000,
# linear_alpha 1, factor 16: full w1 and w2; factor 4 at these widths)
LYCORIS_SPECS = {
    "lokr": dict(algo="lokr", linear_dim=10000, linear_alpha=1.0, factor=4),
    "lokr factorised": dict(algo="lokr", linear_dim=RANK, linear_alpha=ALPHA, factor=4),
    "loha": dict(algo="loha", linear_dim=RANK, linear_alpha=ALPHA),
    "lora": dict(algo="lora", linear_dim=RANK, linear_alpha=ALPHA),
    "lora dora_wd": dict(algo="lora", linear_dim=RANK, linear_alpha=ALPHA, dora_wd=True),
    # OFT: linear_dim is the block size, linear_alpha the constraint (SimpleTuner passes both from its config)
    "diag-oft": dict(algo="diag-oft", linear_dim=8, linear_alpha=1.0),
    "boft": dict(algo="boft", linear_dim=4, linear_alpha=1.0),
}
# std of the random factors (ΔW a visible fraction of W for every method)
LYCORIS_STD = {
    "lokr": 0.2,
    "lokr factorised": 0.2,
    "loha": 0.25,
    "lora": 0.1,
    "lora dora_wd": 0.1,
    "diag-oft": 0.03,  # rotations a few degrees from I, as trained ones
    "boft": 0.03,
}


def _case_id(case):
    return "-".join(re.sub(r"\W+", "_", part) for part in case)


# --------------------------------------------------------------------------------------------------- fixtures
_ARCHES: dict = {}
_TWINS: dict = {}


def _twin(comfy, name):
    """(arch, twin), built once; skips where the host or diffusers lacks the class."""
    import diffusers_twins

    if name not in _TWINS:
        t0 = time.perf_counter()
        arch = _ARCHES.setdefault(name, diffusers_twins.build_arch(name))
        if arch is None:
            _TWINS[name] = f"this host has no comfy.supported_models class for {name}"
        elif not hasattr(importlib.import_module("diffusers"), diffusers_twins.CLASSES[name]):
            _TWINS[name] = f"diffusers has no {diffusers_twins.CLASSES[name]}"
        else:  # a twin without a host table is filled through the pack's own alias table
            aliases = importlib.import_module(comfy.pack_module_name + ".lyco_core.aliases").model_aliases
            _TWINS[name] = diffusers_twins.build_twin(name, arch, aliases)
        TIMINGS[f"build {name} + twin"] = time.perf_counter() - t0
    twin = _TWINS[name]
    if isinstance(twin, str):
        pytest.skip(twin)
    return twin


@pytest.fixture(scope="module")
def loras_dir(comfy):
    with loras_folder(comfy, FOLDER, _TWINS, _TEXT, _ARCHES) as path:
        yield path


# --------------------------------------------------------------------------------------------------- producers
@contextlib.contextmanager
def _quiet():
    from lycoris.logging import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _seed(case) -> int:
    return zlib.crc32("|".join(case).encode()) & 0x7FFFFFFF


@torch.no_grad()
def _randomise_peft(model, gen):
    """Seeded values for every PEFT adapter factor (LoRA A/B, LoKr w1/w2…, LoHa hada_*); a DoRA magnitude (PEFT's
    init: the row norms) scaled by 1 + 0.1·n."""
    for name, p in model.named_parameters():
        if re.search(r"\.(lora_[AB]|lokr_\w+|hada_\w+)\.", name + "."):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        elif ".lora_magnitude_vector." in name:
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))


def _peft_merged(model) -> dict:
    """{module path: W'} from PEFT's own merge of every tuner layer of a copy."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    work = copy.deepcopy(model)
    out = {}
    for path, module in work.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            out[path.removeprefix("base_model.model.")] = module.get_base_layer().weight.detach().float().clone()
    return out


def _fan_in(model, paths) -> int:
    modules = dict(model.named_modules())
    return max(modules[p].in_features for p in paths)


def _make_peft_lora(twin, method, folder, gen) -> tuple[object, dict, int, int]:
    """diffusers' training path: add_adapter(LoraConfig), save_lora_weights with the adapter metadata."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = copy.deepcopy(twin.model)
    dora = method == "dora"
    config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=list(twin.targets), init_lora_weights=False, use_dora=dora
    )
    model.add_adapter(config)
    _randomise_peft(model, gen)
    pipeline = getattr(importlib.import_module("diffusers"), twin.pipeline)
    pipeline.save_lora_weights(
        str(folder),
        **{
            f"{twin.component}_lora_layers": get_peft_model_state_dict(model),
            f"{twin.component}_lora_adapter_metadata": model.peft_config["default"].to_dict(),
        },
    )
    merged = _peft_merged(model)
    # DoRA's weight norm is a reduction over the fan-in
    depth = max(RANK, _fan_in(twin.model, twin.targets)) if dora else RANK
    return folder / "pytorch_lora_weights.safetensors", merged, len(merged), depth


def _make_peft_folder(twin, method, folder, gen) -> tuple[object, dict, int, int]:
    from peft import LoHaConfig, LoKrConfig, get_peft_model

    cls = LoKrConfig if method == "lokr" else LoHaConfig
    config = cls(r=RANK, alpha=ALPHA, target_modules=list(twin.targets))
    model = get_peft_model(copy.deepcopy(twin.model), config)
    _randomise_peft(model, gen)
    model.save_pretrained(str(folder))
    merged = _peft_merged(model)
    return folder / "adapter_model.safetensors", merged, len(merged), RANK


def _make_lycoris(twin, method, path, gen) -> tuple[object, dict, int, int]:
    """SimpleTuner's LyCORIS path on the diffusers model; oracle = the library's training-forward weight."""
    from adapter_fixtures import effective_weight, lycoris_preset
    from lycoris import create_lycoris
    from lycoris_random import randomise_lycoris

    model = copy.deepcopy(twin.model)
    spec = dict(LYCORIS_SPECS[method])
    preset = {"target_module": list(twin.lycoris_modules)}
    with lycoris_preset(preset):
        network = create_lycoris(model, 1.0, spec.pop("linear_dim"), spec.pop("linear_alpha"), **spec)
    network.apply_to()
    network.eval()
    randomise_lycoris(network, gen, lambda lora: LYCORIS_STD[method], scalar=1.0)
    config = {"multiplier": 1.0, **LYCORIS_SPECS[method], "apply_preset": preset}
    network.save_weights(str(path), torch.float32, {"lycoris_config": json.dumps(config)})

    by_id = {id(module): name for name, module in model.named_modules()}
    merged, depth = {}, RANK
    for lora in network.loras:
        if "dora_scale" in dict(lora.named_parameters()):  # DoRA's weight norm: a reduction over the fan-in
            depth = max(depth, lora.org_module[0].in_features)
        if hasattr(lora, "oft_blocks"):  # each rotation block's product, BOFT's stages chained (test_architectures)
            blocks = lora.oft_blocks
            depth = max(depth, blocks.shape[-1] * (blocks.shape[0] if blocks.dim() == 4 else 1))
        layer = lora.org_module[0]
        w_base = layer.weight.detach().float()
        b_base = None if layer.bias is None else layer.bias.detach().float()
        merged[by_id[id(layer)]], _ = effective_weight(lora, layer, w_base, b_base, gen)
    return path, merged, len(network.loras), depth


# --------------------------------------------------------------------------------------------------- host
# name pairs whose swap the forward proof must catch: two projections of one attention, two norm scales (seeded
# around 1), a norm's bias and a projection's bias
WAN_SWAPS = (
    ("blocks.0.attn1.to_k.weight", "blocks.0.attn1.to_v.weight"),
    ("blocks.0.attn1.norm_q.weight", "blocks.0.attn1.norm_k.weight"),
    ("blocks.0.norm2.bias", "blocks.0.attn2.to_out.0.bias"),
)
# HunyuanVideo: k and v thirds of the refiner's fused qkv, the refiner's two LayerNorm scales, the same layer of its
# two blocks, its time and pooled-text MLPs, the image and text q norms of a double block, two biases of equal size
HUNYUAN_VIDEO_SWAPS = (
    ("context_embedder.token_refiner.refiner_blocks.0.attn.to_k.weight",
     "context_embedder.token_refiner.refiner_blocks.0.attn.to_v.weight"),
    ("context_embedder.token_refiner.refiner_blocks.0.norm1.weight",
     "context_embedder.token_refiner.refiner_blocks.0.norm2.weight"),
    ("context_embedder.token_refiner.refiner_blocks.0.ff.net.0.proj.weight",
     "context_embedder.token_refiner.refiner_blocks.1.ff.net.0.proj.weight"),
    ("context_embedder.time_text_embed.timestep_embedder.linear_2.weight",
     "context_embedder.time_text_embed.text_embedder.linear_2.weight"),
    ("transformer_blocks.0.attn.norm_q.weight", "transformer_blocks.0.attn.norm_added_q.weight"),
    ("x_embedder.proj.bias", "context_embedder.proj_in.bias"),
)  # fmt: skip


def _forward_proof(comfy, name: str, swaps: tuple, unswapped: tuple = ()) -> None:
    """The twin ``name``, filled through our alias table, gives the ComfyUI model's output (``build_twin`` checked
    it); each swap of two names in the table, and each of ``unswapped`` (diffusers keys copied through a function)
    copied as it is, breaks that agreement by far more than the bound."""
    import diffusers_twins

    twin = _twin(comfy, name)
    err, bound = twin.forward
    FORWARD[twin.arch.name] = (err, bound)
    assert err <= bound, (err, bound)
    state = twin.arch.patcher.model.state_dict()
    changes = [{a: twin.table[b], b: twin.table[a]} for a, b in swaps]
    changes += [{k: (*twin.table[k][:2], None)} for k in unswapped]
    with one_thread():
        for change in changes:
            table = {**twin.table, **change}
            model = copy.deepcopy(twin.model)
            assert not diffusers_twins.fill(model, table, state)
            broken, _ = diffusers_twins.forward_check(dataclasses.replace(twin, model=model, table=table))
            assert broken > 100 * bound, (sorted(change), broken, bound)


def test_wan_twin_forward_proves_the_alias_table(comfy):
    """The Wan twin's forward equals the ComfyUI model's; swapped names break it."""
    _forward_proof(comfy, "wan", WAN_SWAPS)


def test_hunyuan_video_twin_forward_proves_the_alias_table(comfy):
    """The HunyuanVideo twin's forward equals the ComfyUI model's; swapped names break it, and so does copying the
    final modulation (diffusers' norm_out.linear) without exchanging its halves: its rows are permuted, which is why
    no alias names it."""
    _forward_proof(comfy, "hunyuan_video", HUNYUAN_VIDEO_SWAPS, ("norm_out.linear.weight",))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_real_producer_file_is_placed_exactly(comfy, loras_dir, case):
    import diffusers_twins

    arch_name, producer, method = case
    twin = _twin(comfy, arch_name)
    row = ROWS.setdefault((twin.arch.name, PRODUCER_LABEL[producer], method), _row())
    with _case_folder(loras_dir, case) as folder, one_thread():
        gen = torch.Generator().manual_seed(_seed(case))
        with _quiet():
            if producer == "peft":
                path, merged, modules, depth = _make_peft_lora(twin, method, folder, gen)
            elif producer == "peft folder":
                path, merged, modules, depth = _make_peft_folder(twin, method, folder, gen)
            else:
                made = _make_lycoris(twin, method, folder / "lycoris_weights.safetensors", gen)
                path, merged, modules, depth = made
        originals = _state(twin.arch.patcher)
        expected = diffusers_twins.to_comfy(merged, twin.table, originals)
        _verify(
            comfy, loras_dir, path, row, twin.arch.patcher, None, (expected, {}), (modules, 0), originals, depth=depth
        )


def _row() -> dict:
    return {"modules": 0, "node": "—", "core": "—", "native": "—", "err": "—"}


@contextlib.contextmanager
def _case_folder(loras_dir, case):
    folder = loras_dir / _case_id(case)
    folder.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        yield folder
    finally:
        for f in sorted(folder.glob("*")):
            f.unlink()
        folder.rmdir()
        TIMINGS[_case_id(case)] = time.perf_counter() - t0


def _state(patcher) -> dict:
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def _errors(expected: dict, got: dict, originals: dict, depth: int = RANK) -> dict:
    """{key: (delta-relative error, bound)}; a key missing from ``got`` counts as unchanged (error 1)."""
    out = {}
    for key, ref in expected.items():
        base = originals[key].double()
        denom = float((ref - base).abs().max())
        err = float((got.get(key, originals[key]).double() - ref).abs().max()) / denom
        out[key] = (err, delta_agreement(ref, base, depth, steps=STEPS))
    return out


def _verify(comfy, loras_dir, path, row, unet, clip, expected, modules, originals, clip_originals=None, depth=RANK):
    """Load ``path`` by our node, the core API and ComfyUI's native loader; ``expected``/``modules`` are
    (UNet side, CLIP side): {comfy key: W'} and module counts. ``clip`` None: a model-only file."""
    name = listed(path, loras_dir.parent)
    row["modules"] = sum(modules)
    strengths = (STRENGTH, STRENGTH if clip is not None else 0.0)
    if clip is None:
        native = [comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(unet, name, STRENGTH)[0]]
    else:
        native = comfy.nodes.LoraLoader().load_lora(unet, clip, name, STRENGTH, STRENGTH)
        native = [native[0], native[1].patcher]
    row["native"] = sum(placed(p) for p in native)

    node = comfy.lyco_nodes["LyCOLoadAdapter"]
    model, clip_out, summary = node.execute(unet, clip, name, *strengths).result
    m = SUMMARY.search(summary)
    assert m, summary
    unet_n, clip_n, unmatched, unknown = map(int, m.groups())
    row["node"] = unet_n + clip_n
    row["unmatched"] = re.findall(r"(?m)^  unmatched (\S+):", summary)

    # the core API (the CLI's path) on the ComfyUI weights (the CLIP's keys beside the model's, as in a
    # checkpoint), no host key map: match, then patch
    core = importlib.import_module(comfy.pack_module_name + ".lyco_core").load_adapter(path)
    state = dict(unet.model_state_dict())
    if clip is not None:
        state.update(clip.cond_stage_model.state_dict())
    report = core.match(state)
    row["core"] = len(report.matched)
    row["core_unmatched"] = sorted(report.unmatched)
    core_patched = core.patch({k: v.detach().clone() for k, v in state.items()}, STRENGTH) if report.matched else {}

    got, restored = full_load(model, list(expected[0]), originals)
    errors = _errors(expected[0], got, originals, depth)
    core_errors = _errors(expected[0], core_patched, originals, depth)
    if clip is not None:
        got_clip, clip_restored = full_load(clip_out.patcher, list(expected[1]), clip_originals)
        restored = restored and clip_restored
        errors |= _errors(expected[1], got_clip, clip_originals)
        core_errors |= _errors(expected[1], core_patched, clip_originals)
    row["err"] = f"{max(e for e, _ in errors.values()):.1e}"
    row["core_err"] = f"{max(e for e, _ in core_errors.values()):.1e}"
    row["tol"] = f"{max(t for _, t in errors.values()):.1e}"

    assert (unet_n, clip_n, unmatched, unknown) == (*modules, 0, 0), summary
    assert placed(model) == modules[0]
    assert clip is None or placed(clip_out.patcher) == modules[1]
    assert not report.unmatched, report.unmatched
    assert len(report.matched) == sum(modules), (len(report.matched), modules)
    bad = {k: v for k, v in errors.items() if not v[0] <= v[1]}
    assert not bad, bad
    bad = {k: v for k, v in core_errors.items() if not v[0] <= v[1]}
    assert not bad, ("core", bad)
    assert restored, "unpatch_model did not restore the originals"


# diffusers' own training scripts with --train_text_encoder: one file with the diffusion model's and the text
# encoders' LoRA. SDXL (examples/dreambooth/train_dreambooth_lora_sdxl.py): every component's
# get_peft_model_state_dict goes through convert_state_dict_to_diffusers (to_q.lora.down, q_proj.lora_linear_layer.
# down …), LoraConfig lora_alpha = r and no adapter metadata (scale 1). Flux (train_dreambooth_lora_flux.py): the PEFT
# names as they are, CLIP-L only (T5 is never trained), with _collate_lora_metadata (here lora_alpha 2, r 4). Text
# encoders adapt q/k/v/out_proj as those scripts' LoraConfig target_modules.
TE_CASES = [
    ("sdxl", "sdxl_clip", "diffusers SDXL script (convert_state_dict_to_diffusers)"),
    ("flux", "flux_clip", "diffusers Flux script (+ lora_adapter_metadata)"),
]
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_TEXT: dict = {}


def _text_twins(comfy, name):
    import diffusers_twins

    if name not in _TEXT:
        t0 = time.perf_counter()
        arch = _ARCHES.setdefault(name, arch_models.BUILDERS[name]())
        _TEXT[name] = (arch, diffusers_twins.build_text_twins(name, arch))
        TIMINGS[f"build {name} + twins"] = time.perf_counter() - t0
    return _TEXT[name]


def _add_lora(model, targets, alpha, gen):
    from peft import LoraConfig

    model = copy.deepcopy(model)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False))
    _randomise_peft(model, gen)
    return model


@pytest.mark.parametrize(("unet_name", "clip_name", "producer"), TE_CASES, ids=[c[0] for c in TE_CASES])
def test_diffusers_script_file_with_text_encoders(comfy, loras_dir, unet_name, clip_name, producer):
    import diffusers_twins
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    twin = _twin(comfy, unet_name)
    arch, texts = _text_twins(comfy, clip_name)
    sdxl = unet_name == "sdxl"
    alpha = float(RANK) if sdxl else ALPHA
    row = ROWS.setdefault((f"{twin.arch.name} + {arch.name}", producer, "lora"), _row())
    case = (unet_name, "te", "lora")
    with _case_folder(loras_dir, case) as folder, one_thread(), _quiet():
        gen = torch.Generator().manual_seed(_seed(case))
        adapted = [(twin.component, twin, _add_lora(twin.model, twin.targets, alpha, gen))]
        for text in texts:
            targets = [t for t in text.targets if t.endswith(TE_TARGETS)]
            adapted.append((text.component, text, _add_lora(text.model, targets, alpha, gen)))
        kwargs = {}
        for component, _, model in adapted:
            layers = get_peft_model_state_dict(model)
            kwargs[f"{component}_lora_layers"] = convert_state_dict_to_diffusers(layers) if sdxl else layers
            if not sdxl:
                kwargs[f"{component}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
        getattr(importlib.import_module("diffusers"), twin.pipeline).save_lora_weights(str(folder), **kwargs)
        path = folder / "pytorch_lora_weights.safetensors"

        originals, clip_originals = _state(twin.arch.patcher), _state(arch.clip.patcher)
        expected, expected_clip, counts = {}, {}, []
        for _, source, model in adapted:
            merged = _peft_merged(model)
            counts.append(len(merged))
            if source is twin:
                expected = diffusers_twins.to_comfy(merged, twin.table, originals)
            else:
                expected_clip |= diffusers_twins.to_comfy(merged, source.table, clip_originals)
        modules = (counts[0], sum(counts[1:]))
        _verify(
            comfy,
            loras_dir,
            path,
            row,
            twin.arch.patcher,
            arch.clip,
            (expected, expected_clip),
            modules,
            originals,
            clip_originals,
        )


# An LLM LoRA made with PEFT on the transformers model of Z-Image's text encoder (Qwen3-4B): get_peft_model +
# save_pretrained, the folder every PEFT user gets (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight +
# adapter_config.json). No image trainer writes Qwen text-encoder LoRAs for Z-Image or Qwen-Image (diffusers'
# ZImage/QwenImage LoRA loaders hold the transformer only; musubi-tuner and ai-toolkit train the DiT only), so this is
# the one producer that makes such a file.
def test_peft_llm_lora_on_zimage_qwen3_text_encoder(comfy, loras_dir):
    import diffusers_twins
    from peft import LoraConfig, get_peft_model

    unet = _twin(comfy, "zimage").arch
    if "zimage_qwen3" not in _TEXT:
        t0 = time.perf_counter()
        arch = arch_models.build_zimage_qwen3()
        _TEXT["zimage_qwen3"] = (arch, arch and diffusers_twins.build_qwen3_twin(arch))
        TIMINGS["build Z-Image Qwen3 + twin"] = time.perf_counter() - t0
    arch, text = _TEXT["zimage_qwen3"]
    if arch is None:
        pytest.skip("this host has no comfy.supported_models.ZImage")
    row = ROWS.setdefault((arch.name, "peft save_pretrained (PEFT folder)", "lora"), _row())
    case = ("zimage_qwen3", "peft folder", "lora")
    with _case_folder(loras_dir, case) as folder, one_thread(), _quiet():
        gen = torch.Generator().manual_seed(_seed(case))
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(text.targets), init_lora_weights=False)
        model = get_peft_model(copy.deepcopy(text.model), config)
        _randomise_peft(model, gen)
        model.save_pretrained(str(folder))
        merged = _peft_merged(model)
        originals, clip_originals = _state(unet.patcher), _state(arch.clip.patcher)
        expected = diffusers_twins.to_comfy(merged, text.table, clip_originals)
        path = folder / "adapter_model.safetensors"
        _verify(
            comfy,
            loras_dir,
            path,
            row,
            unet.patcher,
            arch.clip,
            ({}, expected),
            (0, len(merged)),
            originals,
            clip_originals,
        )


def test_write_real_producers_table():
    if not ROWS:
        pytest.skip("no real-producer results in this run")
    version = importlib.import_module("comfyui_version").__version__
    versions = []
    for dist in ("diffusers", "peft", "lycoris-lora"):
        with contextlib.suppress(Exception):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    lines = [
        f"## ComfyUI {version}",
        "",
        f"Files made by the producers themselves ({', '.join(versions)}) on diffusers twins of the tiny models",
        "(same config, same weights through the host's conversion table), loaded at strength 1. 'modules' = adapter",
        "modules in the file, 'node' = placed by LyCOLoadAdapter, 'core' = matched by lyco_core.load_adapter(…).match",
        "on the ComfyUI state dict, 'native' = patch entries placed by core LoraLoaderModelOnly (LoraLoader, MODEL +",
        "CLIP, for rows with text encoders), 'max err' = the",
        "node's worst delta-relative error (after a full load) against the producer's own merged weight (peft merge /",
        "lycoris forward weight) mapped back onto the ComfyUI keys, 'core err' = the same for",
        "lyco_core's Adapter.patch on the ComfyUI state dict, 'bound' = the derived tolerance.",
        "",
        "| architecture | producer | method | modules | node | core | native | max err | core err | bound "
        "| unmatched |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, producer, method), r in sorted(ROWS.items()):
        missed = [*r.get("unmatched", ()), *(f"core: {m}" for m in r.get("core_unmatched", ()))]
        cells = (
            arch,
            producer,
            method,
            r["modules"],
            r["node"],
            r["core"],
            r["native"],
            r["err"],
            r.get("core_err", "—"),
            r.get("tol", "—"),
            ", ".join(f"`{m}`" for m in missed),
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if FORWARD:
        lines += [
            "",
            "Twins filled through our alias table (no host table), proved by one forward against the ComfyUI model:",
        ]
        lines += [
            f"* {arch}: max|y_comfy − y_twin| / max|y_comfy| = {e:.1e} (bound {b:.1e})"
            for arch, (e, b) in FORWARD.items()
        ]
    section = "\n".join(lines) + "\n"
    write_host_section(ARTIFACT, "Files made by the real producers (tests/host/test_real_producers.py)", section)
