"""``keymap.place``: the one matcher of the core API, the CLI and the nodes. A host's own key map (given as data,
as the nodes pass ComfyUI's) comes first under every name ``kohya_aliases`` gives; then the rules on the weights'
own paths; a module fitting two sides is ambiguous, never guessed; rows named by a host (a fused q/k/v weight) are
patched alone."""

from __future__ import annotations

import torch

import lyco_core
from lyco_core.keymap import Side, WeightIndex, WeightSlice, place
from lyco_core.layouts.base import ModulePath

FUSED = "diffusion_model.double_blocks.0.img_attn.qkv.weight"


def _lora(name: str, out: int, inp: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"{name}.lora_up.weight": torch.randn(out, 2, generator=gen),
        f"{name}.lora_down.weight": torch.randn(2, inp, generator=gen),
        f"{name}.alpha": torch.tensor(2.0),
    }


def test_host_map_comes_first_and_names_rows():
    sides = [Side("unet", WeightIndex([FUSED]), {"lora_unet_double_blocks_0_img_attn_q": (FUSED, (0, 0, 8))})]
    side, found, reason = place(
        "lora_unet_double_blocks_0_img_attn_q", ModulePath("double_blocks_0_img_attn_q", True), sides
    )
    assert (side.label, found, reason) == ("unet", WeightSlice(FUSED, span=(0, 8)), "")
    assert str(found) == f"{FUSED}[rows 0:8]" and found.shape(torch.Size((24, 8))) == (8, 8)


def test_without_a_host_map_the_same_module_is_not_found():
    _, found, reason = place("lora_unet_double_blocks_0_img_attn_q", ModulePath("double_blocks_0_img_attn_q", True),
                             [Side("unet", WeightIndex([FUSED]))])  # fmt: skip
    assert found is None and "no weight of the model has the path" in reason


def test_two_sides_that_fit_are_ambiguous():
    sides = [Side("unet", WeightIndex(["a.fc.weight"])), Side("clip", WeightIndex(["b.fc.weight"]))]
    side, found, reason = place("fc", ModulePath("fc", False), sides)
    assert side is None and found is None and reason.startswith("ambiguous: fits both unet") and "clip" in reason


def test_core_patch_with_a_host_map_changes_only_the_named_rows():
    gen = torch.Generator().manual_seed(5)
    weights = {FUSED: torch.randn(24, 8, generator=gen)}
    tensors = {**_lora("lora_unet_double_blocks_0_img_attn_k", 8, 8, 1)}
    host_map = {"lora_unet_double_blocks_0_img_attn_k": (FUSED, (0, 8, 8))}
    adapter = lyco_core.adapter_from_tensors(tensors)
    assert adapter.match(weights).unmatched  # the weights' own paths do not name q/k/v
    report = adapter.match(weights, host_map=host_map)
    assert report.matched == {"lora_unet_double_blocks_0_img_attn_k": f"{FUSED}[rows 8:16]"}
    alone = {"k.weight": weights[FUSED][8:16].clone()}
    patched = adapter.patch(alone, 0.5, key_map={"lora_unet_double_blocks_0_img_attn_k": "k.weight"})["k.weight"]
    got = adapter.patch(weights, 0.5, host_map=host_map)[FUSED]
    assert torch.equal(got[:8], weights[FUSED][:8]) and torch.equal(got[16:], weights[FUSED][16:])
    assert torch.equal(got[8:16], patched)


def test_host_map_rows_that_contradict_the_weights_shape_give_way_to_the_rules():
    """ComfyUI's Z-Image table cuts ``attention.qkv`` into equal thirds; with grouped K/V heads (4 q, 2 kv heads of
    4: 16 + 8 + 8 rows) its ``to_k``/``to_v`` rows are wrong. Given the weights' shapes, ``place`` keeps the host's
    entry only where the rules (from the weight's shape) agree: k is the half after the first ``in_features``
    rows."""
    fused = "diffusion_model.layers.0.attention.qkv.weight"
    keys = [fused, "diffusion_model.cap_embedder.1.weight"]
    shapes = {fused: torch.Size((32, 16)), keys[1]: torch.Size((16, 8))}
    thirds = {f"diffusion_model.layers.0.attention.to_{x}": (fused, (0, 16 * i, 16)) for i, x in enumerate("qkv")}
    sides = [Side("unet", WeightIndex(keys), thirds, shapes)]
    rows = {}
    for x in "qkv":
        target = ModulePath(f"layers.0.attention.to_{x}", False, ("diffusion_model",), "unet")
        side, found, reason = place(f"diffusion_model.layers.0.attention.to_{x}", target, sides)
        assert reason == "" and found.key == fused
        rows[x] = found.rows(shapes[fused])
    assert rows == {"q": (0, 16), "k": (16, 8), "v": (24, 8)}
    flux = [Side("unet", WeightIndex([FUSED]), {"lora_unet_double_blocks_0_img_attn_q": (FUSED, (0, 0, 8))},
                 {FUSED: torch.Size((24, 8))})]  # fmt: skip
    _, found, _ = place("lora_unet_double_blocks_0_img_attn_q", ModulePath("double_blocks_0_img_attn_q", True), flux)
    assert found.span == (0, 8)  # no rule of ours places it: the host's entry stands


def test_core_api_checks_a_host_maps_rows_against_the_state_dict():
    """``Adapter.match``/``patch`` given tensors (not just keys) and a host map that cuts a grouped-head q/k/v weight
    into equal thirds: k lands on its 8 rows after q's 16, and patching changes only those."""
    fused = "diffusion_model.layers.0.attention.qkv.weight"
    gen = torch.Generator().manual_seed(7)
    weights = {fused: torch.randn(32, 16, generator=gen), "diffusion_model.cap_embedder.1.weight": torch.randn(16, 8)}
    thirds = {f"diffusion_model.layers.0.attention.to_{x}": (fused, (0, 16 * i, 16)) for i, x in enumerate("qkv")}
    name = "diffusion_model.layers.0.attention.to_k"
    adapter = lyco_core.adapter_from_tensors(
        {f"{name}.lora_A.weight": torch.randn(2, 16, generator=gen), f"{name}.lora_B.weight": torch.randn(8, 2)}
    )
    report = adapter.match(weights, host_map=thirds)
    assert report.target(name).rows(weights[fused].shape) == (16, 8)
    got = adapter.patch(weights, 1.0, host_map=thirds)[fused]
    assert torch.equal(got[:16], weights[fused][:16]) and torch.equal(got[24:], weights[fused][24:])
    assert not torch.equal(got[16:24], weights[fused][16:24])
