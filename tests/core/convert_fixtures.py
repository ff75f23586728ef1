"""Shared fixtures of the conversion tests (registered in conftest.py): a subset of the oracle cases (real
lycoris-lora / peft files of a tiny model, with the library's own effective weights), built once per session at
test time with fixed seeds, and small helpers to compare patched weights."""

from __future__ import annotations

import warnings

import pytest
import torch

from .oracles import lycoris_oracle, peft_oracle
from .oracles.common import ParityCase

LYCORIS_NAMES = (
    "lycoris-locon",
    "lycoris-locon-tucker",
    "lycoris-loha",
    "lycoris-loha-tucker",
    "lycoris-lokr",
    "lycoris-lokr-full-matrix",
    "lycoris-lokr-tucker",
    "lycoris-lokr-decompose-both",
    "lycoris-oft",
    "lycoris-boft",
    "lycoris-glora",
    "lycoris-ia3",
    "lycoris-ia3-on-input",
    "lycoris-full",
    "lycoris-norm",
    "lycoris-locon-dora-out",
    "lycoris-locon-dora-in",
    "lycoris-mixed",
)


def _peft_specs():
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

    targets = peft_oracle.TARGETS
    return {
        "peft-lora-patterns": (
            LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules=targets,
                rank_pattern={"fc1": 8, "conv3": 2},
                alpha_pattern={"fc2": 3, r"conv\d": 5},
            ),
            3,
            0.1,
        ),
        "peft-lora-rslora": (LoraConfig(r=8, lora_alpha=4, use_rslora=True, target_modules=targets), 2, 0.1),
        "peft-dora": (LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=targets), 5, 0.1),
        "peft-loha": (LoHaConfig(r=4, alpha=8, target_modules=targets), 11, 0.3),
        "peft-loha-tucker": (
            LoHaConfig(
                r=4,
                alpha=2,
                use_effective_conv2d=True,
                target_modules=targets,
                rank_pattern={"conv3": 3},
                alpha_pattern={"fc1": 5},
            ),
            12,
            0.3,
        ),
        "peft-lokr": (LoKrConfig(r=2, alpha=3, target_modules=targets), 21, 0.2),
        "peft-lokr-full-full": (LoKrConfig(r=8, alpha=4, target_modules=targets), 24, 0.2),
        "peft-ia3": (IA3Config(target_modules=targets, feedforward_modules=["fc2", "conv1"]), 51, 0.1),
        "peft-oft": (OFTConfig(oft_block_size=8, use_cayley_neumann=False, target_modules=targets), 31, 0.1),
    }


def build_lycoris(out_dir) -> dict[str, ParityCase]:
    with lycoris_oracle._quiet_lycoris():
        return {n: lycoris_oracle._build_generic(out_dir, n, lycoris_oracle.GENERIC_CASES[n]) for n in LYCORIS_NAMES}


def build_peft(out_dir) -> dict[str, ParityCase]:
    cases = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (config, seed, std) in _peft_specs().items():
            cases[name] = peft_oracle._peft_case(out_dir, name, config, seed, (1.0,), factor_std=std)
        cases["diffusers-lora"] = peft_oracle._diffusers_case(out_dir, "diffusers-lora", 61, dora=False)
    return cases


@pytest.fixture(scope="session")
def lyco_cases(tmp_path_factory) -> dict[str, ParityCase]:
    return build_lycoris(tmp_path_factory.mktemp("convert_lycoris"))


@pytest.fixture(scope="session")
def peft_cases(tmp_path_factory) -> dict[str, ParityCase]:
    return build_peft(tmp_path_factory.mktemp("convert_peft"))


def relative(new: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> float:
    """Worst ``max|new − ref| / max|ref − base|`` over the keys ``ref`` changes (missing keys count as base)."""
    worst = 0.0
    for key, value in ref.items():
        denom = float((value - base[key]).abs().max())
        got = new.get(key, base[key])
        worst = max(worst, float((got.double() - value.double()).abs().max()) / max(denom, 1e-30))
    return worst


def low_rank(out: int, inp: int, rank: int, seed: int, decay: float = 1.0, kernel=()) -> torch.Tensor:
    """A delta of exactly ``rank`` with singular values ``decay**i`` (times a random rotation on each side)."""
    gen = torch.Generator().manual_seed(seed)
    cols = inp * int(torch.tensor(kernel).prod()) if kernel else inp
    u, _ = torch.linalg.qr(torch.randn(out, rank, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=gen, dtype=torch.float64))
    s = decay ** torch.arange(rank, dtype=torch.float64)
    return ((u * s) @ v.T).float().reshape(out, inp, *kernel)
