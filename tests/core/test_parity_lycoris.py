"""Parity of lyco_core with the real LyCORIS (lycoris-lora 4.x) training forward.

The cases are built once per session by ``tests/core/oracles/lycoris_oracle.py``: a tiny model wrapped with every
LyCORIS algorithm/option, random (seeded) adapter tensors saved with the library's ``save_weights``, and the
effective weights/biases probed from the library's forward at several strengths. lyco_core must read the same
file (layout, module names, algorithms, DoRA) and produce the same tensors from ``patch``, mapping the LyCORIS /
kohya module names (``lycoris_fc1``, ``lora_unet_down_blocks_0_...``) onto the state-dict keys by itself.
"""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("lycoris")

from safetensors import safe_open  # noqa: E402

from tests.host.tolerances import agreement, delta_agreement  # noqa: E402
from tests.core.oracles.common import ParityCase, patch_failures, read_failures, relative_error  # noqa: E402
from tests.core.oracles.lycoris_oracle import (  # noqa: E402
    CASE_NAMES,
    STRENGTHS,
    build_lycoris_cases,
    check_probe,
    loha_merge_vs_forward,
    tiny_model,
)


@pytest.fixture(scope="session")
def lycoris_cases(tmp_path_factory) -> dict[str, ParityCase]:
    cases = build_lycoris_cases(tmp_path_factory.mktemp("lycoris_cases"))
    return {case.name: case for case in cases}


@pytest.fixture(scope="session")
def core():
    import lyco_core  # a real import error must fail the tests, not skip them

    return lyco_core


@pytest.fixture(scope="session")
def loaded(core, lycoris_cases):
    """One Adapter per case (loading is part of what is tested, but once is enough)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = core.load_adapter(lycoris_cases[name].path)
        return cache[name]

    return get


# ------------------------------------------------------------------------------------------------------------
# lyco_core against the oracle


@pytest.mark.parametrize("name", CASE_NAMES)
def test_reads_layout_modules_and_algorithms(name, lycoris_cases, loaded):
    failures = read_failures(lycoris_cases[name], loaded(name))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("strength", STRENGTHS, ids=lambda m: f"m={m:g}")
@pytest.mark.parametrize("name", CASE_NAMES)
def test_patch_matches_lycoris_forward(name, strength, lycoris_cases, loaded):
    case = lycoris_cases[name]
    failures = patch_failures(case, loaded(name), strength)
    assert not failures, f"{case.name} (depth {case.depth}, steps {case.steps}; {case.note}):\n" + "\n".join(
        failures[:40]
    )


# ------------------------------------------------------------------------------------------------------------
# the oracle against hand formulas of the spec (no lyco_core): guards the references themselves


def _file_tensors(case: ParityCase) -> dict[str, torch.Tensor]:
    with safe_open(str(case.path), "pt") as handle:
        return {k: handle.get_tensor(k).to(torch.float64) for k in handle.keys()}


def test_oracle_probe_recovers_plain_layers():
    assert check_probe() <= 1  # a fraction of the probe's float32 rounding bound


def test_oracle_lora_is_w_plus_scaled_up_down(lycoris_cases):
    """LoCon: W + m * alpha / r * up @ down (spec 2.2), conv reshaped; 1x1 conv uses the linear rank/alpha."""
    case = lycoris_cases["lycoris-locon"]
    t = _file_tensors(case)
    for m, reference in case.reference.items():
        for module in ("fc1", "conv3", "conv1"):
            w = case.base[f"{module}.weight"].to(torch.float64)
            up, down = t[f"lycoris_{module}.lora_up.weight"], t[f"lycoris_{module}.lora_down.weight"]
            scale = float(t[f"lycoris_{module}.alpha"]) / down.shape[0]
            delta = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(w.shape)
            ref = reference[f"{module}.weight"]  # the library's float32 merge; ours float64: its rounding only
            assert relative_error(ref, w + m * scale * delta, w) <= delta_agreement(ref, w, depth=down.shape[0])


def test_oracle_loha_matches_spec_formula(lycoris_cases):
    """LoHa plain and Tucker: scale applied once (spec 2.3), unlike the library's merge helper."""
    plain, tucker = lycoris_cases["lycoris-loha"], lycoris_cases["lycoris-loha-tucker"]
    t = _file_tensors(plain)
    for module in ("fc1", "conv3"):
        w = plain.base[f"{module}.weight"].to(torch.float64)
        p = f"lycoris_{module}."
        scale = float(t[p + "alpha"]) / t[p + "hada_w1_b"].shape[0]
        assert scale != 1.0
        delta = ((t[p + "hada_w1_a"] @ t[p + "hada_w1_b"]) * (t[p + "hada_w2_a"] @ t[p + "hada_w2_b"])).reshape(w.shape)
        rank = t[p + "hada_w1_b"].shape[0]
        for m, reference in plain.reference.items():
            ref = reference[f"{module}.weight"]  # two rank-r products, multiplied: 2 steps
            assert relative_error(ref, w + m * scale * delta, w) <= delta_agreement(ref, w, depth=rank, steps=2)

    t = _file_tensors(tucker)
    p = "lycoris_conv3."
    assert p + "hada_t1" in t
    w = tucker.base["conv3.weight"].to(torch.float64)

    def half(j):
        return torch.einsum("pq...,po,qi->oi...", t[f"{p}hada_t{j}"], t[f"{p}hada_w{j}_a"], t[f"{p}hada_w{j}_b"])

    scale = float(t[p + "alpha"]) / t[p + "hada_w1_b"].shape[0]
    rank = t[p + "hada_w1_b"].shape[0]
    for m, reference in tucker.reference.items():
        ref = reference["conv3.weight"]  # each half contracts the core with two factors (2 steps), two halves: 4
        assert relative_error(ref, w + m * scale * half(1) * half(2), w) <= delta_agreement(ref, w, depth=rank, steps=4)


def test_oracle_lokr_full_full_ignores_alpha(lycoris_cases):
    """LoKr with both halves full: scale 1 whatever the stored alpha says (spec 2.1)."""
    case = lycoris_cases["lycoris-lokr"]
    t = _file_tensors(case)
    p = "lycoris_conv1."
    assert p + "lokr_w1" in t and p + "lokr_w2" in t and float(t[p + "alpha"]) != 1.0
    w = case.base["conv1.weight"].to(torch.float64)
    w2 = t[p + "lokr_w2"]
    delta = torch.kron(t[p + "lokr_w1"], w2.reshape(w2.shape[0], -1)).reshape(w.shape)
    for m, reference in case.reference.items():
        ref = reference["conv1.weight"]  # a Kronecker product: one rounded product per element
        assert relative_error(ref, w + m * delta, w) <= delta_agreement(ref, w, depth=1)


def test_oracle_rebuild_forward_keeps_bias(lycoris_cases):
    """In the default (rebuild) forward only full/norm touch a bias (spec 2.15); IA3/OFT/BOFT leave it alone."""
    for name in ("lycoris-ia3", "lycoris-oft-rescaled", "lycoris-boft-rescaled"):
        for reference in lycoris_cases[name].reference.values():
            assert "fc1.weight" in reference and "conv3.weight" in reference
            assert "fc1.bias" not in reference and "conv3.bias" not in reference
    for m, reference in lycoris_cases["lycoris-full"].reference.items():
        assert "fc1.bias" in reference and "conv3.bias" in reference


def test_library_loha_merge_applies_scale_twice():
    """Pins spec 3 ‡: LyCORIS' get_diff_weight (used by merge_to) applies alpha/r twice for LoHa."""
    merge_delta, forward_delta, scale = loha_merge_vs_forward()
    assert scale == 0.5
    # the forward delta is read back as W' − W (float32 probe of W' = W + ΔW): its rounding is ε·max|W'|, so the
    # ratio max|W'|/max|ΔW| counts, with W the seeded tiny model's fc1; rank 4, two products (steps=2)
    w = tiny_model().fc1.weight.detach()
    bound = agreement(
        4, torch.float32, ratio=float((w + forward_delta).abs().max() / forward_delta.abs().max()), steps=2
    )
    assert relative_error(merge_delta, forward_delta * scale, torch.zeros_like(merge_delta)) <= bound
    assert relative_error(merge_delta, forward_delta, torch.zeros_like(merge_delta)) > 0.4
