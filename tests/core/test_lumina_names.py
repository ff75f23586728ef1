"""Lumina2/Z-Image adapters in diffusers naming on a checkpoint in ComfyUI naming, whose one fused
``attention.qkv`` stacks q (n_heads·head_dim rows), k and v (n_kv_heads·head_dim each), through the core API and the
CLI, with no host key map: Z-Image's names (``attention.to_q``, ai-toolkit's ``diffusion_model.`` files) and
Lumina2's (``attn.to_q``, ``feed_forward.linear_2``, ``norm1.linear``: diffusers' ``transformer.`` files).

The model has grouped K/V heads (4 q heads, 2 kv heads of 4: dim 16, ``qkv`` 16 + 8 + 8 rows, as Lumina2's 24 and 8),
so equal thirds would be wrong: q must land on the first ``in_features`` rows and k, v on the halves of the rest
(``keymap.WeightSlice(square_first=True)``). Each slice is patched exactly as the same module on that block alone;
nothing outside the targets changes.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import lyco_core
from lyco_core.cli import main
from lyco_core.keymap import WeightSlice
from tests.host.tolerances import delta_agreement

DIM, HEADS, KV_HEADS = 16, 4, 2
HEAD = DIM // HEADS
QKV_ROWS = (HEADS + 2 * KV_HEADS) * HEAD
ROWS = {"q": (0, HEADS * HEAD), "k": (DIM, KV_HEADS * HEAD), "v": (DIM + KV_HEADS * HEAD, KV_HEADS * HEAD)}
ROOT = "model.diffusion_model."
BLOCKS = ("layers.0", "noise_refiner.0")
SHAPES = {
    "attention.qkv": (QKV_ROWS, DIM),
    "attention.out": (DIM, DIM),
    "feed_forward.w2": (DIM, 2 * DIM),
    "adaLN_modulation.1": (4 * DIM, DIM),
}
# file prefix, {diffusers module in a block: (ComfyUI module in the block, rows or None for the whole weight)}
NAMINGS = {
    "z-image": (
        "diffusion_model.",
        {f"attention.to_{x}": ("attention.qkv", ROWS[x]) for x in "qkv"}
        | {"attention.to_out.0": ("attention.out", None)},
    ),
    "lumina2": (
        "transformer.",
        {f"attn.to_{x}": ("attention.qkv", ROWS[x]) for x in "qkv"}
        | {
            "attn.to_out.0": ("attention.out", None),
            "feed_forward.linear_2": ("feed_forward.w2", None),
            "norm1.linear": ("adaLN_modulation.1", None),
        },
    ),
}
RANK = 2
STRENGTH = 0.8


def _model() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(71)
    model = {ROOT + "cap_embedder.1.weight": torch.randn(DIM, 8, generator=gen)}
    for block in BLOCKS:
        model |= {f"{ROOT}{block}.{name}.weight": torch.randn(*shape, generator=gen) for name, shape in SHAPES.items()}
    return model


def _places(naming: str) -> dict[str, tuple[str, int, int]]:
    """{module name in the file: (model key, first row, rows)}."""
    prefix, modules = NAMINGS[naming]
    places = {}
    for block in BLOCKS:
        for module, (ours, rows) in modules.items():
            key = f"{ROOT}{block}.{ours}.weight"
            places[f"{prefix}{block}.{module}"] = (key, *(rows or (0, SHAPES[ours][0])))
    return places


def _file(tmp_path, model, naming: str) -> tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(path, {module: (up, down)}) of a PEFT-style LoRA (no alpha: scale 1) on every module of ``naming``."""
    gen = torch.Generator().manual_seed(72)
    factors, tensors = {}, {}
    for module, (key, _, rows) in _places(naming).items():
        up, down = torch.randn(rows, RANK, generator=gen), torch.randn(RANK, model[key].shape[1], generator=gen)
        factors[module] = (up, down)
        tensors |= {f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up}
    path = str(tmp_path / f"{naming}.safetensors")
    save_file(tensors, path)
    return path, factors


def _expected(model, places, factors) -> dict[str, torch.Tensor]:
    expected = {}
    for module, (up, down) in factors.items():
        key, first, rows = places[module]
        ref = expected.setdefault(key, model[key].double().clone())
        ref[first : first + rows] += STRENGTH * up.double() @ down.double()
    return expected


def _check(patched, model, expected) -> None:
    assert set(patched) == set(expected)
    for key, ref in expected.items():
        err = float((patched[key].double() - ref).abs().max() / (ref - model[key].double()).abs().max())
        assert err <= delta_agreement(ref, model[key], RANK), (key, err)


def test_grouped_qkv_slices_are_found_by_shape():
    shape = torch.Size((QKV_ROWS, DIM))
    for part, x in enumerate("qkv"):
        found = WeightSlice("qkv.weight", part, 3, square_first=True)
        assert found.rows(shape) == ROWS[x], x
        assert found.shape(shape) == (ROWS[x][1], DIM)
    bias = torch.arange(float(QKV_ROWS))
    k = WeightSlice("qkv.weight", 1, 3, square_first=True)
    first, rows = ROWS["k"]
    assert torch.equal(k.of(bias, shape), bias[first : first + rows])
    with pytest.raises(lyco_core.AdapterError, match="no in_features"):
        k.of(bias)  # a bias alone does not say where q's rows end
    with pytest.raises(lyco_core.AdapterError, match="do not split"):
        k.rows(torch.Size((DIM + 9, DIM)))  # 9 rows after q: no two equal k, v blocks


@pytest.mark.parametrize("naming", NAMINGS)
def test_diffusers_named_lora_lands_on_the_grouped_rows(tmp_path, naming):
    model, places = _model(), _places(naming)
    path, factors = _file(tmp_path, model, naming)
    adapter = lyco_core.load_adapter(path)
    report = adapter.match(model)
    assert not report.unmatched, report.unmatched
    prefix, _ = NAMINGS[naming]
    spelling = "attention" if naming == "z-image" else "attn"
    qkv = ROOT + "layers.0.attention.qkv.weight"
    assert report.matched[f"{prefix}layers.0.{spelling}.to_q"] == f"{qkv}[the first in_features rows]"
    assert report.matched[f"{prefix}layers.0.{spelling}.to_v"] == f"{qkv}[part 2 of 2 after the first in_features rows]"
    for module, (key, first, rows) in places.items():
        target = report.target(module)
        assert (target.key, target.rows(model[key].shape)) == (key, (first, rows)), module

    patched = adapter.patch(model, STRENGTH)
    _check(patched, model, _expected(model, places, factors))
    for module, (key, first, rows) in places.items():  # bit for bit the module on that block as a weight of its own
        alone = adapter.patch({"w.weight": model[key][first : first + rows].clone()}, STRENGTH, {module: "w.weight"})
        assert torch.equal(patched[key][first : first + rows], alone["w.weight"]), module


def test_cli_bakes_the_grouped_rows(tmp_path):
    model, places = _model(), _places("lumina2")
    lora, factors = _file(tmp_path, model, "lumina2")
    save_file(model, str(tmp_path / "lumina2-model.safetensors"))
    out = tmp_path / "baked.safetensors"
    assert main(["bake", str(tmp_path / "lumina2-model.safetensors"), f"{lora}:{STRENGTH}", "-o", str(out)]) == 0
    baked = load_file(str(out))
    _check({k: v for k, v in baked.items() if not torch.equal(v, model[k])}, model, _expected(model, places, factors))
