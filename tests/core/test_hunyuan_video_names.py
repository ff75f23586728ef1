"""HunyuanVideo adapters in diffusers naming (``HunyuanVideoTransformer3DModel``: diffusers ``save_lora_weights``,
finetrainers: ``transformer.context_embedder.token_refiner.refiner_blocks.N.attn.to_q.lora_A.weight``; SimpleTuner's
LyCORIS: ``lycoris_context_embedder_…``) on a checkpoint in ComfyUI naming (``txt_in.individual_token_refiner.
blocks.N.self_attn.qkv``), through the core API, with no host key map (neither ComfyUI host has a diffusers table for
HunyuanVideo): ``lyco_core.aliases.hunyuan_video_diffusers`` for the token refiner and the patch embedding, Flux's
aliases for the blocks and embedders HunyuanVideo shares with Flux.

The model is a tiny HunyuanVideo with the real key names (hidden h = 8, MLP ratio 4: ``linear1`` is ``(7h, h)``; two
refiner blocks as ComfyUI always builds); the expected weights are built here from the factors in float64, row block
by row block. Independently of our table, diffusers' own converter for original-named HunyuanVideo LoRAs
(``_convert_hunyuan_video_lora_to_diffusers``) renames a file in Tencent's names to diffusers names, and ComfyUI's
``HunyuanVideo.process_unet_state_dict`` renames Tencent's names to ComfyUI's (its string replacements restated in
``COMFY_RENAMES``): our loader must put each converted module on the ComfyUI weight those two renames compose to.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import lyco_core
from lyco_core.aliases.hunyuan_video_diffusers import hunyuan_video_diffusers_aliases
from tests.host.tolerances import delta_agreement

H, TEXT, VEC = 8, 6, 5
ROOT = "model.diffusion_model."
REFINER = "txt_in.individual_token_refiner.blocks."
SHAPES = {
    "img_in.proj.weight": (H, 4, 1, 2, 2),
    "time_in.in_layer.weight": (H, 256),
    "time_in.out_layer.weight": (H, H),
    "vector_in.in_layer.weight": (H, VEC),
    "vector_in.out_layer.weight": (H, H),
    "guidance_in.in_layer.weight": (H, 256),
    "guidance_in.out_layer.weight": (H, H),
    "txt_in.input_embedder.weight": (H, TEXT),
    "txt_in.t_embedder.in_layer.weight": (H, 256),
    "txt_in.t_embedder.out_layer.weight": (H, H),
    "txt_in.c_embedder.in_layer.weight": (H, TEXT),
    "txt_in.c_embedder.out_layer.weight": (H, H),
    **{
        f"{REFINER}{i}.{name}.weight": shape
        for i in (0, 1)
        for name, shape in {
            "adaLN_modulation.1": (2 * H, H),
            "norm1": (H,),
            "self_attn.qkv": (3 * H, H),
            "self_attn.proj": (H, H),
            "norm2": (H,),
            "mlp.0": (4 * H, H),
            "mlp.2": (H, 4 * H),
        }.items()
    },
    "double_blocks.0.img_mod.lin.weight": (6 * H, H),
    "double_blocks.0.img_attn.qkv.weight": (3 * H, H),
    "double_blocks.0.img_attn.norm.query_norm.weight": (H // 2,),
    "double_blocks.0.img_attn.proj.weight": (H, H),
    "double_blocks.0.img_mlp.0.weight": (4 * H, H),
    "double_blocks.0.img_mlp.2.weight": (H, 4 * H),
    "double_blocks.0.txt_mod.lin.weight": (6 * H, H),
    "double_blocks.0.txt_attn.qkv.weight": (3 * H, H),
    "double_blocks.0.txt_attn.proj.weight": (H, H),
    "double_blocks.0.txt_mlp.0.weight": (4 * H, H),
    "double_blocks.0.txt_mlp.2.weight": (H, 4 * H),
    "single_blocks.0.linear1.weight": (7 * H, H),
    "single_blocks.0.linear2.weight": (H, 5 * H),
    "single_blocks.0.modulation.lin.weight": (3 * H, H),
    "final_layer.linear.weight": (16, H),
    "final_layer.adaLN_modulation.1.weight": (2 * H, H),
}
# every diffusers Linear but the final modulation → (ComfyUI key, first row, rows)
PLACES = {
    "x_embedder.proj": None,  # a Conv3d: checked in the alias table, not adapted here
    "time_text_embed.timestep_embedder.linear_1": ("time_in.in_layer.weight", 0, H),
    "time_text_embed.timestep_embedder.linear_2": ("time_in.out_layer.weight", 0, H),
    "time_text_embed.text_embedder.linear_1": ("vector_in.in_layer.weight", 0, H),
    "time_text_embed.text_embedder.linear_2": ("vector_in.out_layer.weight", 0, H),
    "time_text_embed.guidance_embedder.linear_1": ("guidance_in.in_layer.weight", 0, H),
    "time_text_embed.guidance_embedder.linear_2": ("guidance_in.out_layer.weight", 0, H),
    "context_embedder.proj_in": ("txt_in.input_embedder.weight", 0, H),
    "context_embedder.time_text_embed.timestep_embedder.linear_1": ("txt_in.t_embedder.in_layer.weight", 0, H),
    "context_embedder.time_text_embed.timestep_embedder.linear_2": ("txt_in.t_embedder.out_layer.weight", 0, H),
    "context_embedder.time_text_embed.text_embedder.linear_1": ("txt_in.c_embedder.in_layer.weight", 0, H),
    "context_embedder.time_text_embed.text_embedder.linear_2": ("txt_in.c_embedder.out_layer.weight", 0, H),
    **{
        f"context_embedder.token_refiner.refiner_blocks.{i}.{ours}": (f"{REFINER}{i}.{comfy}.weight", first, rows)
        for i in (0, 1)
        for ours, (comfy, first, rows) in {
            "attn.to_q": ("self_attn.qkv", 0, H),
            "attn.to_k": ("self_attn.qkv", H, H),
            "attn.to_v": ("self_attn.qkv", 2 * H, H),
            "attn.to_out.0": ("self_attn.proj", 0, H),
            "ff.net.0.proj": ("mlp.0", 0, 4 * H),
            "ff.net.2": ("mlp.2", 0, H),
            "norm_out.linear": ("adaLN_modulation.1", 0, 2 * H),  # gates (attention, MLP) in the same order
        }.items()
    },
    "transformer_blocks.0.norm1.linear": ("double_blocks.0.img_mod.lin.weight", 0, 6 * H),
    "transformer_blocks.0.attn.to_q": ("double_blocks.0.img_attn.qkv.weight", 0, H),
    "transformer_blocks.0.attn.to_k": ("double_blocks.0.img_attn.qkv.weight", H, H),
    "transformer_blocks.0.attn.to_v": ("double_blocks.0.img_attn.qkv.weight", 2 * H, H),
    "transformer_blocks.0.attn.to_out.0": ("double_blocks.0.img_attn.proj.weight", 0, H),
    "transformer_blocks.0.ff.net.0.proj": ("double_blocks.0.img_mlp.0.weight", 0, 4 * H),
    "transformer_blocks.0.ff.net.2": ("double_blocks.0.img_mlp.2.weight", 0, H),
    "transformer_blocks.0.norm1_context.linear": ("double_blocks.0.txt_mod.lin.weight", 0, 6 * H),
    "transformer_blocks.0.attn.add_q_proj": ("double_blocks.0.txt_attn.qkv.weight", 0, H),
    "transformer_blocks.0.attn.add_k_proj": ("double_blocks.0.txt_attn.qkv.weight", H, H),
    "transformer_blocks.0.attn.add_v_proj": ("double_blocks.0.txt_attn.qkv.weight", 2 * H, H),
    "transformer_blocks.0.attn.to_add_out": ("double_blocks.0.txt_attn.proj.weight", 0, H),
    "transformer_blocks.0.ff_context.net.0.proj": ("double_blocks.0.txt_mlp.0.weight", 0, 4 * H),
    "transformer_blocks.0.ff_context.net.2": ("double_blocks.0.txt_mlp.2.weight", 0, H),
    "single_transformer_blocks.0.attn.to_q": ("single_blocks.0.linear1.weight", 0, H),
    "single_transformer_blocks.0.attn.to_k": ("single_blocks.0.linear1.weight", H, H),
    "single_transformer_blocks.0.attn.to_v": ("single_blocks.0.linear1.weight", 2 * H, H),
    "single_transformer_blocks.0.proj_mlp": ("single_blocks.0.linear1.weight", 3 * H, 4 * H),
    "single_transformer_blocks.0.proj_out": ("single_blocks.0.linear2.weight", 0, H),
    "single_transformer_blocks.0.norm.linear": ("single_blocks.0.modulation.lin.weight", 0, 3 * H),
    "proj_out": ("final_layer.linear.weight", 0, 16),  # the top-level one, not single_transformer_blocks.0.proj_out
}
PLACES = {module: place for module, place in PLACES.items() if place is not None}
RANK = 3  # divisible by 3: diffusers' converter cuts the refiner's qkv lora_A into thirds of its rank
STRENGTH = 0.7


def _model() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(91)
    return {ROOT + key: torch.randn(*shape, generator=gen) for key, shape in SHAPES.items()}


def _factors(places: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (up, down)}, seeded, for modules placed at ``places`` {module: (key, first row, rows)}."""
    gen = torch.Generator().manual_seed(92)
    out = {}
    for module, (key, _, rows) in places.items():
        cols = SHAPES[key][1]
        out[module] = (0.3 * torch.randn(rows, RANK, generator=gen), 0.3 * torch.randn(RANK, cols, generator=gen))
    return out


def _save(tmp_path, name: str, tensors: dict) -> str:
    path = str(tmp_path / f"{name}.safetensors")
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path)
    return path


def _file(tmp_path, factors, naming: str) -> str:
    """A LoRA without alpha (scale 1): PEFT/diffusers names (``transformer.<path>.lora_A.weight``) or SimpleTuner's
    LyCORIS names (``lycoris_<path with _>``, kohya factor names, alpha = rank)."""
    tensors = {}
    for module, (up, down) in factors.items():
        if naming == "peft":
            tensors |= {f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up}
        else:
            name = "lycoris_" + module.replace(".", "_")
            tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
            tensors[f"{name}.alpha"] = torch.tensor(float(RANK))
    return _save(tmp_path, naming, tensors)


def _check(model, patched, factors, places) -> None:
    """Each touched ComfyUI weight is W plus strength·up·down of each module on its rows; nothing else changes."""
    expected = {}
    for module, (up, down) in factors.items():
        key, first, rows = places[module]
        ref = expected.setdefault(ROOT + key, model[ROOT + key].double().clone())
        ref[first : first + rows] += STRENGTH * up.double() @ down.double()
    assert set(patched) == set(expected)
    for key, ref in expected.items():
        err = float((patched[key].double() - ref).abs().max() / (ref - model[key].double()).abs().max())
        assert err <= delta_agreement(ref, model[key], RANK, steps=2), (key, err)


@pytest.mark.parametrize("naming", ["peft", "lycoris"])
def test_diffusers_named_lora_lands_on_the_comfy_weights(tmp_path, naming):
    model = _model()
    factors = _factors(PLACES)
    adapter = lyco_core.load_adapter(_file(tmp_path, factors, naming))
    report = adapter.match(model)
    assert not report.unmatched, report.unmatched
    assert len(report.matched) == len(PLACES)
    for module, (key, first, rows) in PLACES.items():
        name = "lycoris_" + module.replace(".", "_") if naming == "lycoris" else f"transformer.{module}"
        target = report.target(name)
        assert target.key == ROOT + key, (module, target)
        assert target.rows(SHAPES[key]) == (first, rows), (module, target)
    _check(model, adapter.patch(model, STRENGTH), factors, PLACES)


def test_alias_table_of_a_hunyuan_video_model():
    keys = set(_model())
    aliases = {a.path: a for a in hunyuan_video_diffusers_aliases(keys)}
    qkv = ROOT + REFINER + "1.self_attn.qkv.weight"
    for part, name in enumerate(("to_q", "to_k", "to_v")):
        alias = aliases[f"transformer.context_embedder.token_refiner.refiner_blocks.1.attn.{name}"]
        assert (alias.key, alias.part, alias.blocks) == (qkv, (part, 3), 1)
    assert aliases["transformer.x_embedder.proj"].key == ROOT + "img_in.proj.weight"
    assert aliases["transformer.transformer_blocks.0.attn.norm_q"].key == (
        ROOT + "double_blocks.0.img_attn.norm.query_norm.weight"
    )
    # the final modulation is row-permuted in diffusers (scale, shift): never aliased
    assert not any(a.key.endswith("final_layer.adaLN_modulation.1.weight") for a in aliases.values())
    # a model without the token refiner (Flux) gets none
    assert not hunyuan_video_diffusers_aliases({k for k in keys if "individual_token_refiner" not in k})


def test_top_level_norm_out_is_not_placed(tmp_path):
    """diffusers' top-level ``norm_out.linear`` (ComfyUI's ``final_layer.adaLN_modulation.1`` with its halves
    swapped) has no alias; its last levels fit the two refiner blocks' ``norm_out.linear``, so it is reported
    ambiguous rather than put on either."""
    model = _model()
    up, down = torch.ones(2 * H, RANK), torch.ones(RANK, H)
    path = _save(tmp_path, "norm_out", {"transformer.norm_out.linear.lora_A.weight": down,
                                         "transformer.norm_out.linear.lora_B.weight": up})  # fmt: skip
    report = lyco_core.load_adapter(path).match(model)
    assert not report.matched, report.matched
    assert "ambiguous" in report.unmatched["transformer.norm_out.linear"], report.unmatched


# ComfyUI's HunyuanVideo.process_unet_state_dict: Tencent's names → ComfyUI's (the replacements it makes on the keys
# used here, in its order)
COMFY_RENAMES = (
    ("txt_in.t_embedder.mlp.0.", "txt_in.t_embedder.in_layer."),
    ("txt_in.t_embedder.mlp.2.", "txt_in.t_embedder.out_layer."),
    ("txt_in.c_embedder.linear_1.", "txt_in.c_embedder.in_layer."),
    ("txt_in.c_embedder.linear_2.", "txt_in.c_embedder.out_layer."),
    ("_mod.linear.", "_mod.lin."),
    ("_attn_qkv.", "_attn.qkv."),
    ("mlp.fc1.", "mlp.0."),
    ("mlp.fc2.", "mlp.2."),
    ("_attn_proj.", "_attn.proj."),
    (".modulation.linear.", ".modulation.lin."),
    ("_in.mlp.2.", "_in.out_layer."),
    ("_in.mlp.0.", "_in.in_layer."),
)
# Tencent's module names, as HunyuanVideo's own training code and musubi-tuner write them. Left out: the refiner's
# self_attn_qkv (diffusers' converter cuts its lora_A into thirds along the rank, not giving each of q/k/v the whole
# down factor as it does for the blocks' qkv) and single_blocks' linear1 (its converter splits at the real model's
# 3072 rows)
ORIGINAL = (
    "time_in.mlp.0",
    "time_in.mlp.2",
    "vector_in.in_layer",
    "guidance_in.mlp.2",
    "txt_in.input_embedder",
    "txt_in.t_embedder.mlp.0",
    "txt_in.t_embedder.mlp.2",
    "txt_in.c_embedder.linear_1",
    "txt_in.c_embedder.linear_2",
    *(f"{REFINER}{i}.{n}" for i in (0, 1) for n in ("self_attn_proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")),
    "double_blocks.0.img_mod.linear",
    "double_blocks.0.img_attn_qkv",
    "double_blocks.0.img_attn_proj",
    "double_blocks.0.txt_attn_qkv",
    "double_blocks.0.txt_mlp.fc1",
    "double_blocks.0.txt_mlp.fc2",
    "single_blocks.0.linear2",
    "single_blocks.0.modulation.linear",
    "final_layer.linear",
)


def _comfy_key(original: str) -> str:
    key = original + ".weight"
    for old, new in COMFY_RENAMES:
        key = key.replace(old, new)
    return key


def test_diffusers_own_converter_names_land_on_comfys_renames(tmp_path):
    """An original-named LoRA renamed to diffusers names by diffusers' converter lands, module by module, on the
    ComfyUI weight that ComfyUI's own renames give the original name, with W + ΔW of the original module there (the
    three converted q/k/v of a fused qkv together give its whole ΔW)."""
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    model = _model()
    places = {name: (_comfy_key(name), 0, SHAPES[_comfy_key(name)][0]) for name in ORIGINAL}
    assert all(key in SHAPES for key, _, _ in places.values()), places
    factors = _factors(places)
    original = {}
    for name, (up, down) in factors.items():
        original |= {f"diffusion_model.{name}.lora_A.weight": down, f"diffusion_model.{name}.lora_B.weight": up}
    converted = conversion._convert_hunyuan_video_lora_to_diffusers(dict(original))
    assert not any("txt_in" in k or "double_blocks" in k for k in converted)  # renamed by diffusers, not by us
    adapter = lyco_core.load_adapter(_save(tmp_path, "converted", converted))
    report = adapter.match(model)
    assert not report.unmatched, report.unmatched
    # each converted module on the ComfyUI weight of the original module it came from
    expected_keys = {ROOT + key for key, _, _ in places.values()}
    assert {report.target(m).key for m in report.matched} == expected_keys
    _check(model, adapter.patch(model, STRENGTH), factors, places)
