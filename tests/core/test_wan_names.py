"""Wan 2.x adapters in diffusers naming (``WanTransformer3DModel``: diffusers ``save_lora_weights``, finetrainers,
ai-toolkit: ``transformer.blocks.N.attn1.to_q.lora_A.weight``; SimpleTuner's LyCORIS: ``lycoris_blocks_N_attn1_to_q``)
on a checkpoint in the original/ComfyUI naming (``blocks.N.self_attn.q``), through the core API, with no host key map
(neither ComfyUI host has a diffusers table for Wan): ``lyco_core.aliases.wan``.

The model is a tiny image-to-video Wan with the real key names (dim 8; ``cross_attn.k_img/v_img`` and ``img_emb``
present), two blocks. Every module lands on its own ComfyUI weight and is patched as W + ΔW there (float64 reference
from the factors); nothing else changes. Independently of our table, diffusers' own converter for original-named Wan
LoRAs (``_convert_non_diffusers_wan_lora_to_diffusers``) renames an original-named file to diffusers names: both files
must then land on the same weights with the same result.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import lyco_core
from lyco_core.aliases.wan import wan_aliases
from tests.host.tolerances import delta_agreement

D, FFN, TEXT, FREQ, IMG = 8, 16, 6, 4, 10
ROOT = "model.diffusion_model."
BLOCKS = (0, 1)
# ComfyUI module in a block → (diffusers module in the block, weight shape)
BLOCK = {
    "self_attn.q": ("attn1.to_q", (D, D)),
    "self_attn.k": ("attn1.to_k", (D, D)),
    "self_attn.v": ("attn1.to_v", (D, D)),
    "self_attn.o": ("attn1.to_out.0", (D, D)),
    "cross_attn.q": ("attn2.to_q", (D, D)),
    "cross_attn.k": ("attn2.to_k", (D, D)),
    "cross_attn.v": ("attn2.to_v", (D, D)),
    "cross_attn.o": ("attn2.to_out.0", (D, D)),
    "cross_attn.k_img": ("attn2.add_k_proj", (D, D)),
    "cross_attn.v_img": ("attn2.add_v_proj", (D, D)),
    "ffn.0": ("ffn.net.0.proj", (FFN, D)),
    "ffn.2": ("ffn.net.2", (D, FFN)),
}
TOP = {
    "text_embedding.0": ("condition_embedder.text_embedder.linear_1", (D, TEXT)),
    "text_embedding.2": ("condition_embedder.text_embedder.linear_2", (D, D)),
    "time_embedding.0": ("condition_embedder.time_embedder.linear_1", (D, FREQ)),
    "time_embedding.2": ("condition_embedder.time_embedder.linear_2", (D, D)),
    "time_projection.1": ("condition_embedder.time_proj", (6 * D, D)),
    "head.head": ("proj_out", (4 * 4, D)),
    "img_emb.proj.1": ("condition_embedder.image_embedder.ff.net.0.proj", (IMG, IMG)),
    "img_emb.proj.3": ("condition_embedder.image_embedder.ff.net.2", (D, IMG)),
}
# tensors that are no adapted Linear: norms, modulation tables, the Conv3d patch embedding
OTHER = {
    "blocks.0.norm3.weight": (D,),
    "blocks.0.self_attn.norm_q.weight": (D,),
    "blocks.0.modulation": (1, 6, D),
    "head.modulation": (1, 2, D),
    "patch_embedding.weight": (D, 4, 1, 2, 2),
}
RANK = 2
STRENGTH = 0.7


def _places() -> dict[str, tuple[str, str]]:
    """{diffusers module: (ComfyUI module, ComfyUI key)} for every adapted Linear."""
    places = {f"blocks.{i}.{ours}": f"blocks.{i}.{comfy}" for i in BLOCKS for comfy, (ours, _) in BLOCK.items()}
    places |= {ours: comfy for comfy, (ours, _) in TOP.items()}
    return {ours: (comfy, f"{ROOT}{comfy}.weight") for ours, comfy in places.items()}


def _model() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(81)
    shapes = {f"blocks.{i}.{comfy}.weight": shape for i in BLOCKS for comfy, (_, shape) in BLOCK.items()}
    shapes |= {f"{comfy}.weight": shape for comfy, (_, shape) in TOP.items()} | OTHER
    return {ROOT + key: torch.randn(*shape, generator=gen) for key, shape in shapes.items()}


def _factors(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{diffusers module: (up, down)}, seeded."""
    gen = torch.Generator().manual_seed(82)
    out = {}
    for ours, (_, key) in _places().items():
        rows, cols = model[key].shape
        out[ours] = (0.3 * torch.randn(rows, RANK, generator=gen), 0.3 * torch.randn(RANK, cols, generator=gen))
    return out


def _save(tmp_path, name: str, tensors: dict) -> str:
    path = str(tmp_path / f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def _diffusers_file(tmp_path, factors, naming: str) -> tuple[str, dict[str, str]]:
    """(path, {module name in the file: diffusers module}) of a LoRA without alpha (scale 1)."""
    tensors, names = {}, {}
    for ours, (up, down) in factors.items():
        if naming == "peft":
            name, down_key, up_key = f"transformer.{ours}", "lora_A.weight", "lora_B.weight"
        else:  # SimpleTuner's LyCORIS LoRA: lycoris_<path with _>, kohya factor names, alpha = rank (scale 1)
            name, down_key, up_key = "lycoris_" + ours.replace(".", "_"), "lora_down.weight", "lora_up.weight"
            tensors[f"{name}.alpha"] = torch.tensor(float(RANK))
        tensors |= {f"{name}.{down_key}": down, f"{name}.{up_key}": up}
        names[name] = ours
    return _save(tmp_path, naming, tensors), names


def _check(model, patched, factors) -> None:
    """Each ComfyUI weight is W + strength·up·down of its module's factors; no other key is touched."""
    places = _places()
    assert set(patched) == {key for _, key in places.values()}
    for ours, (up, down) in factors.items():
        key = places[ours][1]
        ref = model[key].double() + STRENGTH * up.double() @ down.double()
        err = float((patched[key].double() - ref).abs().max() / (ref - model[key].double()).abs().max())
        assert err <= delta_agreement(ref, model[key], RANK, steps=2), (ours, key, err)


@pytest.mark.parametrize("naming", ["peft", "lycoris"])
def test_diffusers_named_lora_lands_on_the_comfy_weights(tmp_path, naming):
    model = _model()
    factors = _factors(model)
    path, names = _diffusers_file(tmp_path, factors, naming)
    adapter = lyco_core.load_adapter(path)
    report = adapter.match(model)
    assert not report.unmatched, report.unmatched
    places = _places()
    assert {name: report.matched[name] for name in names} == {name: places[ours][1] for name, ours in names.items()}
    _check(model, adapter.patch(model, STRENGTH), factors)


def test_alias_table_of_a_wan_model():
    keys = set(_model())
    aliases = {a.path: a.key for a in wan_aliases(keys)}
    assert all(a.part is None and not a.transposed for a in wan_aliases(keys))  # whole weights only
    assert aliases["blocks.1.attn2.add_v_proj"] == ROOT + "blocks.1.cross_attn.v_img.weight"
    # diffusers swaps the two block norm names: its norm2 is ComfyUI's norm3 (the affine cross-attention norm)
    assert aliases["blocks.0.norm2"] == ROOT + "blocks.0.norm3.weight"
    assert aliases["blocks.0.attn1.norm_q"] == ROOT + "blocks.0.self_attn.norm_q.weight"
    assert not any(key.endswith(("modulation", "patch_embedding.weight")) for key in aliases.values())
    # a model without Wan's time projection (another family with blocks.N.self_attn) gets none
    assert not wan_aliases({k for k in keys if "time_projection" not in k})


def test_diffusers_own_converter_names_land_alike(tmp_path):
    """diffusers renames an original-named Wan LoRA (``diffusion_model.blocks.0.self_attn.q.lora_A.weight``) to its
    own names; our loader must place that file exactly where it places the original one (its own ComfyUI paths)."""
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    model = _model()
    factors = _factors(model)
    original = {}
    for ours, (up, down) in factors.items():
        comfy = _places()[ours][0]
        original |= {f"diffusion_model.{comfy}.lora_A.weight": down, f"diffusion_model.{comfy}.lora_B.weight": up}
    converted = conversion._convert_non_diffusers_wan_lora_to_diffusers(dict(original))
    assert not any("self_attn" in k or "cross_attn" in k for k in converted)  # renamed by diffusers, not by us

    reports, patched = [], []
    for name, tensors in (("original", original), ("converted", converted)):
        adapter = lyco_core.load_adapter(_save(tmp_path, name, tensors))
        reports.append(adapter.match(model))
        assert not reports[-1].unmatched, (name, reports[-1].unmatched)
        patched.append(adapter.patch(model, STRENGTH))
    assert sorted(reports[0].matched.values()) == sorted(reports[1].matched.values())
    assert len(reports[1].matched) == len(factors)
    for key, value in patched[0].items():
        assert torch.equal(patched[1][key], value), key
    _check(model, patched[1], factors)
