"""Trained adapters load elsewhere with the same effect: PEFT layout in ``PeftModel.from_pretrained``, LyCORIS layout
in ``lycoris.create_lycoris_from_weights`` and in our own loader (``lyco_core.load_adapter(...).patch``); layouts
that cannot hold a module refuse it (``lyco_core.save_adapter``). The PEFT variants of OFT/BOFT are also checked
tensor for tensor inside a real PEFT model built from our config (test_peft_write.py covers the other PEFT forms)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import lyco_core
from lyco_core import AdapterError
from lyco_core.train import save_trained, wrap
from .train_fixtures import one_thread, CASES, inputs, output_tolerance, randomize, tiny_model  # noqa: F401  (autouse fixture)

# Which layouts each case can be saved in (the others must refuse with a clear message).
PEFT_OK = {
    "lora",
    "lora-dora-rslora",
    "lora-balanced",
    "loha",
    "loha-tucker",
    "lokr",
    "lokr-both-tucker",
    "lokr-full",
    "ia3-peft",
    "oft-peft",
    "oft-peft-neumann-coft",
    "boft-peft",
}
PEFT_MATH = {"oft-peft", "oft-peft-neumann-coft", "boft-peft"}
LYCORIS_OK = {
    "lora",
    "lora-dora-rslora",
    "lora-balanced",
    "loha",
    "loha-tucker",
    "lokr",
    "lokr-both-tucker",
    "lokr-full",
    "oft-lycoris",
    "boft-lycoris",
    "glora",
    "ia3-lycoris",
}
# lycoris-lora 4.1.3's IA3Module.make_module_from_state_dict takes 4 arguments where its loader passes 5.
LYCORIS_LIB_BROKEN = {"ia3-lycoris"}


def _trained(config):
    tuner = wrap(tiny_model(), config)
    randomize(tuner.adapter())
    x, image = inputs()
    with torch.no_grad():
        return tuner, tuner(x, image)


def _gap(ours, theirs) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("name, config", CASES, ids=[c[0] for c in CASES])
def test_peft_layout_loads_in_peft(name, config, tmp_path):
    tuner, ours = _trained(config)
    if name not in PEFT_OK:
        with pytest.raises(AdapterError, match="cannot write"):
            save_trained(tuner.adapter(), tmp_path / "peft", layout="peft")
        return
    from peft import PeftModel

    folder = save_trained(tuner.adapter(), tmp_path / "peft", layout="peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(tiny_model(), str(folder))
    with torch.no_grad():
        theirs = model(*inputs())
    assert _gap(ours, theirs) <= output_tolerance(ours)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lycoris_layout_loads_in_lycoris_and_ours(case, tmp_path):
    name, config = case
    tuner, ours = _trained(config)
    path = tmp_path / "adapter.safetensors"
    if name not in LYCORIS_OK:
        with pytest.raises(AdapterError, match="cannot write"):
            save_trained(tuner.adapter(), path)
        return
    save_trained(tuner.adapter(), path)

    state = tiny_model().state_dict()
    patched = tiny_model()
    patched.load_state_dict({**state, **lyco_core.load_adapter(path).patch(state)})
    with torch.no_grad():
        assert _gap(ours, patched(*inputs())) <= output_tolerance(ours)

    if name in LYCORIS_LIB_BROKEN:
        return
    from lycoris import create_lycoris_from_weights

    base = tiny_model()
    logging.disable(logging.WARNING)
    try:
        network, _ = create_lycoris_from_weights(1.0, str(path), base)
    finally:
        logging.disable(logging.NOTSET)
    assert len(network.loras) == len(tuner.adapter().modules)
    network.apply_to()
    with torch.no_grad():
        assert _gap(ours, base(*inputs())) <= output_tolerance(ours)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in PEFT_MATH], ids=sorted(PEFT_MATH))
def test_peft_variant_math_equals_peft(case):
    """Our PEFT-variant OFT/BOFT tensors, put into PEFT's own model of the same config, give the same outputs."""
    import peft
    from peft import get_peft_model, set_peft_model_state_dict

    from .oracles.peft_oracle import _boft_extension as boft_extension

    name, config = case
    tuner, ours = _trained(config)
    fields = {k: v for k, v in config.peft_dict().items() if k not in ("peft_type", "task_type")}
    peft_config = getattr(peft, f"{config.peft_type}Config")(**fields)
    with warnings.catch_warnings(), boft_extension(stand_in=False):
        warnings.simplefilter("ignore")
        model = get_peft_model(tiny_model(), peft_config)
    state = {
        f"base_model.model.{path}.{key}": tensor.detach()
        for path, t in tuner.adapter().modules.items()
        for key, tensor in t.tensors().items()
    }
    result = set_peft_model_state_dict(model, state)
    assert not [k for k in result.unexpected_keys]
    with torch.no_grad():
        assert _gap(ours, model(*inputs())) <= output_tolerance(ours)
