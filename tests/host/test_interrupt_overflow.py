"""A patch stops on ComfyUI's interrupt, and an adapter whose result overflows the weight's dtype is an error.

Interrupt: every ``LycoPatch.calculate_weight`` is a cancellation point, so a load of a large adapter (per module
at a full load, per forward in low-VRAM) stops when the user presses Cancel. After the stop the model holds its
original weights and the next load gives the uninterrupted result.

Overflow: factors whose product exceeds fp16's range would write Inf into the model (black images, no message);
the first result per key and strength is checked and an AdapterError names file and module. Bypass (the adapter as a
side branch of the forward) is not checked: its output is the layer's activation, not a stored weight.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

from adapter_fixtures import LAYERS
from test_loader_parity import read_full_load

STRENGTH = 0.8


def _loaded(comfy, parity_files, lora_name):
    node = comfy.lyco_nodes["LyCOLoadAdapter"]
    return node.execute(parity_files.model, parity_files.clip, lora_name, STRENGTH, 0.0).result[0]


def test_interrupt_stops_a_load_and_leaves_the_model_whole(comfy, parity_files):
    mm = importlib.import_module("comfy.model_management")
    utils = importlib.import_module("comfy.utils")
    name = "lyco_lokr_tucker"  # per-module math on conv and linear layers
    model = _loaded(comfy, parity_files, parity_files.fixtures[name].lora_name)
    keys = sorted(k for k in model.patches if k in parity_files.originals)
    assert keys
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            mm.load_models_gpu([model], force_full_load=True)
    finally:
        mm.interrupt_current_processing(False)
    model.unpatch_model()
    for key in keys:
        assert torch.equal(utils.get_attr(model.model, key).detach(), parity_files.originals[key]), key
    uninterrupted, restored = read_full_load(model, None, keys, parity_files.originals)
    fresh, _ = read_full_load(_loaded(comfy, parity_files, parity_files.fixtures[name].lora_name), None, keys,
                              parity_files.originals)  # fmt: skip
    assert restored and all(torch.equal(uninterrupted[k], fresh[k]) for k in keys)


@pytest.fixture
def overflowing_lora(comfy, parity_files):
    import folder_paths

    layer = next(layer for layer in LAYERS if layer.side == "unet" and layer.kind == "linear")
    module = "lora_unet_" + layer.path.replace(".", "_")
    path = comfy.base.path / "models" / "loras" / "overflowing.safetensors"
    rows, cols = parity_files.originals[layer.key].shape
    rank = 4
    save_file(
        {
            f"{module}.lora_up.weight": torch.full((rows, rank), 6e4, dtype=torch.float16),
            f"{module}.lora_down.weight": torch.full((rank, cols), 6e4, dtype=torch.float16),
        },
        str(path),
    )
    folder_paths.filename_list_cache.pop("loras", None)
    yield path.name, module, layer.key
    path.unlink()
    folder_paths.filename_list_cache.pop("loras", None)


def test_overflowing_adapter_is_an_error_not_inf(comfy, parity_files, overflowing_lora):
    lowvram_patch = importlib.import_module("comfy.model_patcher").LowVramPatch
    lyco_core = importlib.import_module(comfy.pack_module_name + ".lyco_core")
    lora_name, module, key = overflowing_lora
    model = _loaded(comfy, parity_files, lora_name)
    assert key in model.patches
    with pytest.raises(lyco_core.AdapterError) as info:
        lowvram_patch(key, model.patches)(parity_files.originals[key].to(torch.float16).clone())
    assert info.value.module == module and "NaN or Inf" in str(info.value), str(info.value)
    assert "overflowing.safetensors" in str(info.value)
