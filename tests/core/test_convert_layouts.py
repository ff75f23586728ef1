"""Layout conversion: A→B→A round trips for every method a target can express (weights equal up to rounding),
refusals naming the modules it cannot, and interop with the real libraries: converted LyCORIS-layout files load in
``lycoris`` (``create_lycoris_from_weights``) and converted PEFT folders in ``PeftModel.from_pretrained`` with the
same effective weights."""

from __future__ import annotations

import warnings

import pytest
import torch

import lyco_core
from lyco_core import AdapterError
from lyco_core.convert import convert

from tests.host.tolerances import agreement, close, delta_agreement
from .convert_fixtures import relative
from .oracles import lycoris_oracle, peft_oracle

# Every case's reductions are ≤ 16 long (ranks ≤ 16, OFT blocks ≤ 16); a conversion re-rounds the factors once and
# the patch forms ≤ 2 chained products: 3 steps.
DEPTH, STEPS = 16, 3
TOL = agreement(DEPTH, steps=STEPS)  # the report's float64 relative error of float32 factors: 2ε·(1 + 48) ≈ 1.2e-5

# (case, target) → None when exact, else a fragment the refusal must contain
LYCORIS_TARGETS = {
    "lycoris-locon": {"peft": None, "diffusers": None},
    "lycoris-locon-tucker": {"peft": "Tucker", "diffusers": "Tucker"},
    "lycoris-loha": {"peft": None, "diffusers": "LoRA only"},
    "lycoris-loha-tucker": {"peft": None},
    "lycoris-lokr": {"peft": None},
    "lycoris-lokr-full-matrix": {"peft": None},
    "lycoris-lokr-tucker": {"peft": None},
    "lycoris-lokr-decompose-both": {"peft": None},
    "lycoris-oft": {"peft": "output rows"},
    "lycoris-boft": {"peft": "output rows"},
    "lycoris-glora": {"peft": "GLoRA"},
    "lycoris-ia3": {"peft": "bias"},
    "lycoris-ia3-on-input": {"peft": None},
    "lycoris-norm": {"peft": "norm"},
    "lycoris-locon-dora-out": {"peft": None, "diffusers": None},
    "lycoris-locon-dora-in": {"peft": "input axis"},
    "lycoris-mixed": {"peft": "one method"},
}
PEFT_TARGETS = {
    "peft-lora-patterns": {"lycoris": None, "diffusers": None},
    "peft-lora-rslora": {"lycoris": None},
    "peft-dora": {"lycoris": None, "diffusers": None},
    "peft-loha": {"lycoris": None, "diffusers": "LoRA only"},
    "peft-loha-tucker": {"lycoris": None},
    "peft-lokr": {"lycoris": None},
    "peft-lokr-full-full": {"lycoris": None},
    "peft-ia3": {"lycoris": "bias"},
    "peft-oft": {"lycoris": "input columns"},
    "diffusers-lora": {"lycoris": None, "peft": "one model"},
}


def _round_trip(case, target, component=None):
    adapter = lyco_core.load_adapter(case.path)
    reference = adapter.patch(case.base)
    there, report = convert(adapter, target, model_keys=case.base.keys(), component=component)
    assert there.layout == target
    assert report.total_error() is None or report.total_error() < TOL
    back, _ = convert(there, adapter.layout, model_keys=case.base.keys())
    assert len(back.modules) == len(adapter.modules)
    assert component is not None or set(back.modules) == set(adapter.modules)
    bound = delta_agreement(reference, case.base, DEPTH, steps=STEPS)
    there_error = relative(there.patch(case.base), reference, case.base)
    return there_error, relative(back.patch(case.base), reference, case.base), bound


@pytest.mark.parametrize("name,target", [(n, t) for n, ts in LYCORIS_TARGETS.items() for t in ts])
def test_lycoris_round_trips_or_refusals(name, target, lyco_cases):
    case, expected = lyco_cases[name], LYCORIS_TARGETS[name][target]
    if expected is not None:
        with pytest.raises(AdapterError) as info:
            convert(lyco_core.load_adapter(case.path), target, model_keys=case.base.keys(), component="unet")
        assert expected in str(info.value) and "to-lora" in str(info.value)
        assert expected == "one method" or "lycoris_" in str(info.value)  # the modules are named
        return
    there, back, bound = _round_trip(case, target, component="unet" if target == "diffusers" else None)
    assert there <= bound and back <= bound, (there, back, bound)


@pytest.mark.parametrize("name,target", [(n, t) for n, ts in PEFT_TARGETS.items() for t in ts])
def test_peft_round_trips_or_refusals(name, target, peft_cases):
    case, expected = peft_cases[name], PEFT_TARGETS[name][target]
    component = "unet" if target == "diffusers" else None
    if expected is not None:
        with pytest.raises(AdapterError) as info:
            convert(lyco_core.load_adapter(case.path), target, model_keys=case.base.keys(), component=component)
        assert expected in str(info.value)
        return
    there, back, bound = _round_trip(case, target, component)
    assert there <= bound and back <= bound, (there, back, bound)


def test_kohya_names_need_the_model_to_become_dotted(lyco_cases):
    adapter = lyco_core.load_adapter(lyco_cases["lycoris-locon"].path)
    with pytest.raises(AdapterError, match="--base MODEL"):
        convert(adapter, "peft")
    with pytest.raises(AdapterError, match="match no weight"):
        convert(adapter, "peft", model_keys=["other.weight"])
    peft_named, _ = convert(adapter, "peft", model_keys=lyco_cases["lycoris-locon"].base.keys())
    assert set(peft_named.modules) == {f"base_model.model.{n}" for n in ("fc1", "fc2", "conv1", "conv3")}


def test_component_names_and_text_encoders(peft_cases):
    case = peft_cases["diffusers-lora"]
    adapter = lyco_core.load_adapter(case.path)
    kohya, _ = convert(adapter, "lycoris")
    assert any(n.startswith("lora_unet_down_blocks_0_attentions_0") for n in kohya.modules)
    assert any(n.startswith("lora_te_encoder_layers_0_self_attn") for n in kohya.modules)
    back, _ = convert(kohya, "diffusers", model_keys=case.base.keys())
    assert set(back.modules) == set(adapter.modules)
    generic = lyco_core.load_adapter(peft_cases["peft-loha"].path)
    with pytest.raises(AdapterError, match="pipeline component"):
        convert(generic, "diffusers")
    assert set(convert(generic, "lycoris", component="unet")[0].modules) == {
        "lora_unet_fc1",
        "lora_unet_fc2",
        "lora_unet_conv1",
        "lora_unet_conv3",
    }


def test_full_matrix_lokr_scale_is_folded_for_lycoris(peft_cases):
    adapter = lyco_core.load_adapter(peft_cases["peft-lokr-full-full"].path)
    out, report = convert(adapter, "lycoris")
    assert any("folded" in note for note in report.notes)
    module = out.modules["lycoris_fc1"]
    assert module.full_matrix and module.scale_value() == 1.0
    expected = adapter.modules["base_model.model.fc1"].params["lokr_w1"] * 0.5  # PEFT alpha 4 / r 8
    torch.testing.assert_close(module.params["lokr_w1"], expected, **close(expected, depth=1))  # one product


# ---------------------------------------------------------------------------------------------- real libraries
def _lycoris_forward(file, model) -> dict[str, torch.Tensor]:
    """Effective weights of ``model`` with the LyCORIS network from ``file`` applied (library forward, probed)."""
    from lycoris import create_lycoris_from_weights

    with lycoris_oracle._quiet_lycoris():
        network, _ = create_lycoris_from_weights(1.0, str(file), model)
        network.apply_to()
    layers = dict(model.named_modules())
    return {
        f"{lora.lora_name[len('lycoris_') :]}.weight": lycoris_oracle.probe_layer(
            layers[lora.lora_name[len("lycoris_") :]]
        )[0]
        for lora in network.loras
    }


@pytest.mark.parametrize(
    "name",
    [
        "peft-lora-patterns",
        "peft-lora-rslora",
        "peft-dora",
        "peft-loha",
        "peft-loha-tucker",
        "peft-lokr",
        "peft-lokr-full-full",
    ],
)
def test_converted_lycoris_file_loads_in_lycoris(name, peft_cases, tmp_path):
    pytest.importorskip("lycoris")
    case = peft_cases[name]
    path = lyco_core.save_adapter(lyco_core.load_adapter(case.path), tmp_path / f"{name}.safetensors", "lycoris")
    with torch.no_grad():
        effective = _lycoris_forward(path, peft_oracle._tiny_model())
    reference = {k: v for k, v in case.reference[1.0].items() if k in effective}
    # the case's own bound (PEFT's merge against ours), one step more: the conversion re-rounds the factors
    bound = delta_agreement(reference, case.base, case.depth, steps=case.steps + 1)
    assert relative(effective, reference, case.base) <= bound
    assert set(effective) == {k for k in case.reference[1.0] if k.endswith("weight")}


@pytest.mark.parametrize(
    "name",
    [
        "lycoris-locon",
        "lycoris-loha",
        "lycoris-loha-tucker",
        "lycoris-lokr",
        "lycoris-lokr-full-matrix",
        "lycoris-lokr-tucker",
        "lycoris-lokr-decompose-both",
        "lycoris-locon-dora-out",
        "lycoris-ia3-on-input",
    ],
)
def test_converted_peft_folder_loads_in_peft(name, lyco_cases, tmp_path):
    peft = pytest.importorskip("peft")
    case = lyco_cases[name]
    folder = lyco_core.save_adapter(
        lyco_core.load_adapter(case.path), tmp_path / name, "peft", model_keys=case.base.keys()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(lycoris_oracle.tiny_model(), str(folder))
        merged = {k: v.float() for k, v in model.merge_and_unload().state_dict().items()}
    # the case's own bound (LyCORIS' forward against PEFT's merge), one step more: the conversion re-rounds the factors
    bound = delta_agreement(case.reference[1.0], case.base, case.depth, steps=case.steps + 1)
    assert relative(merged, case.reference[1.0], case.base) <= bound
