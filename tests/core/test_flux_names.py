"""Flux.1 adapters in diffusers naming (diffusers ``save_lora_weights`` and ai-toolkit: ``transformer.<path>.lora_A/B
.weight``; SimpleTuner's LyCORIS: ``lycoris_<path with _>``) on a checkpoint in BFL/ComfyUI naming, through the core
API and the CLI: each module lands on its own rows of the fused ``qkv``/``linear1`` weights, nothing else changes; the
top-level ``proj_out`` is the final layer (the path needing least in front), not a single block's ``proj_out``.

The model is a tiny Flux with the real key names (hidden size h = 8, MLP ratio 4: ``linear1`` is ``(7h, h)``); the
expected weights are built here from the factors in float64, row block by row block.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

import lyco_core
from lyco_core.cli import main

H = 8
SHAPES = {
    "double_blocks.0.img_attn.qkv.weight": (3 * H, H),
    "double_blocks.0.txt_attn.qkv.weight": (3 * H, H),
    "double_blocks.0.img_attn.proj.weight": (H, H),
    "double_blocks.0.img_mlp.0.weight": (4 * H, H),
    "single_blocks.0.linear1.weight": (7 * H, H),
    "single_blocks.0.linear2.weight": (H, 5 * H),
    "img_in.weight": (H, 4),
    "final_layer.linear.weight": (16, H),
}
ROOT = "model.diffusion_model."
# diffusers module → (BFL key, first row, rows)
PLACES = {
    "transformer_blocks.0.attn.to_k": ("double_blocks.0.img_attn.qkv.weight", H, H),
    "transformer_blocks.0.attn.add_v_proj": ("double_blocks.0.txt_attn.qkv.weight", 2 * H, H),
    "transformer_blocks.0.attn.to_out.0": ("double_blocks.0.img_attn.proj.weight", 0, H),
    "transformer_blocks.0.ff.net.0.proj": ("double_blocks.0.img_mlp.0.weight", 0, 4 * H),
    "single_transformer_blocks.0.attn.to_q": ("single_blocks.0.linear1.weight", 0, H),
    "single_transformer_blocks.0.proj_mlp": ("single_blocks.0.linear1.weight", 3 * H, 4 * H),
    "single_transformer_blocks.0.proj_out": ("single_blocks.0.linear2.weight", 0, H),
    "x_embedder": ("img_in.weight", 0, H),
    "proj_out": ("final_layer.linear.weight", 0, 16),  # the top-level one, not single_transformer_blocks.0.proj_out
}


def _model() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(51)
    return {ROOT + key: torch.randn(*shape, generator=gen) for key, shape in SHAPES.items()}


def _factors() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(52)
    out = {}
    for module, (key, _, rows) in PLACES.items():
        out[module] = (0.1 * torch.randn(rows, 2, generator=gen), 0.1 * torch.randn(2, SHAPES[key][1], generator=gen))
    return out


def _expected(model, factors, strength):
    expected = {k: v.double().clone() for k, v in model.items()}
    for module, (up, down) in factors.items():
        key, first, rows = PLACES[module]
        expected[ROOT + key][first : first + rows] += strength * up.double() @ down.double()  # alpha = r: scale 1
    return expected


def _check(patched, model, expected):
    changed = {ROOT + PLACES[m][0] for m in PLACES}
    assert set(patched) == changed
    for key, value in patched.items():
        scale = float(expected[key].abs().max())
        assert float((value.double() - expected[key]).abs().max()) <= 64 * torch.finfo(torch.float32).eps * scale, key


def test_diffusers_named_lora_lands_on_the_fused_rows(tmp_path):
    model, factors = _model(), _factors()
    tensors = {}
    for module, (up, down) in factors.items():
        tensors[f"transformer.{module}.lora_A.weight"] = down
        tensors[f"transformer.{module}.lora_B.weight"] = up
    save_file(tensors, str(tmp_path / "aitk.safetensors"))
    adapter = lyco_core.load_adapter(tmp_path / "aitk.safetensors")
    report = adapter.match(model)
    assert not report.unmatched, report.unmatched
    assert report.matched["transformer.single_transformer_blocks.0.proj_mlp"] == (
        f"{ROOT}single_blocks.0.linear1.weight[parts 4–7 of 7]"
    )
    _check(adapter.patch(model, 0.8), model, _expected(model, factors, 0.8))
    save_file(model, str(tmp_path / "flux.safetensors"))
    code = main(["bake", str(tmp_path / "flux.safetensors"), f"{tmp_path / 'aitk.safetensors'}:0.8", "-o",
                 str(tmp_path / "baked.safetensors")])  # fmt: skip
    assert code == 0
    baked = load_file(str(tmp_path / "baked.safetensors"))
    _check({k: v for k, v in baked.items() if not torch.equal(v, model[k])}, model, _expected(model, factors, 0.8))


def test_simpletuner_lycoris_names_lands_on_the_fused_rows(tmp_path):
    model, factors = _model(), _factors()
    tensors = {}
    for module, (up, down) in factors.items():
        name = "lycoris_" + module.replace(".", "_")
        tensors.update(
            {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(2.0)}
        )
    save_file(tensors, str(tmp_path / "st.safetensors"))
    adapter = lyco_core.load_adapter(tmp_path / "st.safetensors")
    assert not adapter.match(model).unmatched
    _check(adapter.patch(model, 1.0), model, _expected(model, factors, 1.0))


def test_a_linear1_that_does_not_split_in_seven_is_refused():
    model = _model()
    model[ROOT + "single_blocks.0.linear1.weight"] = torch.randn(9 * H, H)  # another MLP ratio: rows unknown
    up, down = torch.randn(H, 2), torch.randn(2, H)
    adapter = lyco_core.adapter_from_tensors({
        "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": down,
        "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": up,
    })  # fmt: skip
    try:
        adapter.patch(model)
    except lyco_core.AdapterError as exc:
        assert "7 equal parts" in str(exc)
    else:
        raise AssertionError("a linear1 of another MLP ratio was patched")
