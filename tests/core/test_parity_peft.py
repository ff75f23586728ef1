"""Parity of lyco_core with the real PEFT (and diffusers-in-PEFT) merge.

The cases are built once per session by ``tests/core/oracles/peft_oracle.py`` (real peft 0.21.2, seeded): a saved
adapter, the base state dict, and PEFT's merged tensors per strength. lyco_core must read the same file (layout,
module names, methods, DoRA) and produce the same tensors from ``patch``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from tests.host.tolerances import delta_agreement  # noqa: E402
from tests.core.oracles.common import ParityCase, patch_failures, read_failures, relative_error  # noqa: E402
from tests.core.oracles.peft_oracle import CASE_NAMES, build_peft_cases  # noqa: E402


@pytest.fixture(scope="session")
def peft_cases(tmp_path_factory) -> dict[str, ParityCase]:
    cases = build_peft_cases(tmp_path_factory.mktemp("peft_cases"))
    return {case.name: case for case in cases}


@pytest.fixture(scope="session")
def core():
    import lyco_core  # a real import error must fail the tests, not skip them

    return lyco_core


@pytest.fixture(scope="session")
def loaded(core, peft_cases):
    """One Adapter per case (loading is part of what is tested, but once is enough)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = core.load_adapter(peft_cases[name].path)
        return cache[name]

    return get


# ------------------------------------------------------------------------------------------------------------
# lyco_core against the oracle


@pytest.mark.parametrize("name", CASE_NAMES)
def test_reads_layout_modules_and_methods(name, peft_cases, loaded):
    failures = read_failures(peft_cases[name], loaded(name))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_patch_matches_peft_merge(name, peft_cases, loaded):
    case = peft_cases[name]
    failures = [f for m in sorted(case.reference, reverse=True) for f in patch_failures(case, loaded(name), m)]
    assert not failures, f"{case.name} (depth {case.depth}, steps {case.steps}; {case.note}):\n" + "\n".join(
        failures[:40]
    )


# ------------------------------------------------------------------------------------------------------------
# the oracle against hand formulas of the spec (no lyco_core): guards the references themselves


def _file_tensors(case: ParityCase) -> dict[str, torch.Tensor]:
    file = case.path if case.path.suffix == ".safetensors" else case.path / "adapter_model.safetensors"
    with safe_open(str(file), "pt") as handle:
        return {k: handle.get_tensor(k).to(torch.float64) for k in handle.keys()}


def _config(case: ParityCase) -> dict:
    folder = case.path if case.path.is_dir() else case.path.parent
    return json.loads((folder / "adapter_config.json").read_text())


def test_oracle_lora_is_w_plus_scaled_ba(peft_cases):
    """PEFT LoRA merge = W + m * alpha / r * B @ A (spec 2.10), conv reshaped."""
    case = peft_cases["peft-lora"]
    cfg, t = _config(case), _file_tensors(case)
    scale = cfg["lora_alpha"] / cfg["r"]
    for m, reference in case.reference.items():
        for module in ("fc1", "conv3"):
            w = case.base[f"{module}.weight"].to(torch.float64)
            a = t[f"base_model.model.{module}.lora_A.weight"]
            b = t[f"base_model.model.{module}.lora_B.weight"]
            expected = w + m * scale * (b.reshape(w.shape[0], -1) @ a.reshape(a.shape[0], -1)).reshape(w.shape)
            ref = reference[f"{module}.weight"]  # PEFT's float32 merge; ours float64: its rounding only
            assert relative_error(ref, expected, w) <= delta_agreement(ref, w, depth=a.shape[0])


def test_oracle_lokr_full_full_uses_alpha_over_r(peft_cases):
    """PEFT scales a LoKr whose halves are both full by alpha / r (spec 2.10), unlike LyCORIS."""
    case = peft_cases["peft-lokr-full-full"]
    cfg, t = _config(case), _file_tensors(case)
    assert "base_model.model.fc1.lokr_w1" in t and "base_model.model.fc1.lokr_w2" in t
    w = case.base["fc1.weight"].to(torch.float64)
    kron = torch.kron(t["base_model.model.fc1.lokr_w1"], t["base_model.model.fc1.lokr_w2"])
    expected = w + cfg["alpha"] / cfg["r"] * kron
    assert cfg["alpha"] != cfg["r"]
    ref = case.reference[1.0]["fc1.weight"]  # a Kronecker product: one rounded product per element
    assert relative_error(ref, expected, w) <= delta_agreement(ref, w, depth=1)


def test_oracle_ia3_scales_rows_columns_and_bias(peft_cases):
    """PEFT IA3: W*l on rows (+ b*l) for normal layers, on columns (bias kept) for feed-forward ones (spec 2.9)."""
    case = peft_cases["peft-ia3"]
    t, ref = _file_tensors(case), case.reference[1.0]
    l1 = t["base_model.model.fc1.ia3_l"]  # (96, 1): output rows
    w1, b1 = case.base["fc1.weight"].to(torch.float64), case.base["fc1.bias"].to(torch.float64)
    # one rounded product per element (depth 1), relative to the change W·(l − 1)
    assert relative_error(ref["fc1.weight"], w1 * l1, w1) <= delta_agreement(ref["fc1.weight"], w1, depth=1)
    assert relative_error(ref["fc1.bias"], b1 * l1.reshape(-1), b1) <= delta_agreement(ref["fc1.bias"], b1, depth=1)
    l2 = t["base_model.model.fc2.ia3_l"]  # (1, 96): feed-forward, input columns
    w2 = case.base["fc2.weight"].to(torch.float64)
    assert relative_error(ref["fc2.weight"], w2 * l2, w2) <= delta_agreement(ref["fc2.weight"], w2, depth=1)
    assert "fc2.bias" not in ref


def test_oracle_boft_cpu_fallback_file_has_one_factor(peft_cases):
    """The config asks for 2 butterfly factors; without PEFT's CUDA extension the file holds 1 (spec 2.12)."""
    case = peft_cases["peft-boft-cpu-fallback"]
    assert _config(case)["boft_n_butterfly_factor"] == 2
    assert _file_tensors(case)["base_model.model.fc1.boft_R"].shape[0] == 1
    assert _file_tensors(peft_cases["peft-boft-butterfly2"])["base_model.model.fc1.boft_R"].shape[0] == 2
