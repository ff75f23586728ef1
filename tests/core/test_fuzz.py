"""Seeded mutation fuzz of real reference-library files: only AdapterError escapes, quickly, and harmless
re-encodings patch bit-identically.

Seeds: every LyCORIS case of the conversion fixtures (files written by lycoris-lora 4.1.3 for a tiny model) and the
PEFT LoRA/DoRA/LoHa/LoKr/IA3/OFT folders written by peft 0.21.2. Each mutant goes through what a user's file goes
through: the header-only load and ``summary()`` (the browser panel, ``inspect``), the full load, and ``patch`` at
strengths 1 and 0 on the case's own base weights.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lyco_core
from lyco_core import AdapterError

MUTANTS_PER_FILE = 12
SECONDS_PER_MUTANT = 10.0
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "fuzz.md"
PEFT_SEEDS = ("peft-lora-patterns", "peft-dora", "peft-loha", "peft-lokr", "peft-ia3", "peft-oft")


def _tensor_file(case):
    return case.path / "adapter_model.safetensors" if case.path.is_dir() else case.path


def _mutate(tensors: dict[str, torch.Tensor], rng: random.Random) -> tuple[str, dict[str, torch.Tensor]]:
    """One random damage to a copy of ``tensors``: (what was done, mutated tensors)."""
    out = dict(tensors)
    key = rng.choice(sorted(out))
    t = out[key]
    kinds = ["drop", "flatten", "scalar", "fewer rows", "double rows", "transpose", "nan", "huge", "integer",
             "empty", "extra partner", "alpha vector", "second spelling"]  # fmt: skip
    kind = rng.choice(kinds)
    if kind == "drop":
        del out[key]
    elif kind == "flatten":
        out[key] = t.reshape(-1)
    elif kind == "scalar":
        out[key] = t.reshape(-1)[:1].reshape(())
    elif kind == "fewer rows" and t.ndim and t.shape[0] > 1:
        out[key] = t[: t.shape[0] // 2].contiguous()
    elif kind == "double rows" and t.ndim:
        out[key] = torch.cat([t, t])
    elif kind == "transpose" and t.ndim >= 2:
        out[key] = t.transpose(0, 1).contiguous()
    elif kind == "nan" and t.is_floating_point() and t.numel():
        out[key] = t.clone().reshape(-1).index_fill(0, torch.tensor([0]), float("nan")).reshape(t.shape)
    elif kind == "huge" and t.is_floating_point():
        out[key] = t.float() * 1e30
    elif kind == "integer":
        out[key] = t.to(torch.int32)
    elif kind == "empty" and t.ndim:
        out[key] = t[:0].contiguous()
    elif kind == "extra partner":
        module = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        out[f"{module}.hada_w1_a"] = torch.ones(2, 2)
    elif kind == "alpha vector":
        module = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        out[f"{module}.alpha"] = torch.tensor([1.0, 2.0])
    elif kind == "second spelling" and key.endswith("lora_up.weight"):
        out[key[: -len("lora_up.weight")] + "lora.up.weight"] = t.clone()
    elif kind == "second spelling" and key.endswith("lora_B.weight"):
        out[key[: -len("lora_B.weight")] + "lora_B.default.weight"] = t.clone()
    return kind, key, out


# damage to adapter_config.json: (field, value) pairs a stranger's folder may hold
CONFIG_DAMAGE = [
    ("r", "four"),
    ("r", -1),
    ("r", float("nan")),
    ("lora_alpha", [8]),
    ("lora_alpha", 1e308),
    ("alpha", "big"),
    ("rank_pattern", "fc1"),
    ("rank_pattern", {"(a+)+$": 2}),
    ("alpha_pattern", {"[": 1}),
    ("use_rslora", "false"),
    ("num_cayley_neumann_terms", 1e9),
    ("eps", "small"),
    ("peft_type", "IA3"),
    ("peft_type", "ADALORA"),
    ("peft_type", 5),
    ("target_modules", 5),
    ("fan_in_fan_out", "yes"),
]


def _exercise(path, case):
    """What a user's file goes through; returns the patched weights at strength 1 and the adapter. A result holding
    NaN or Inf that was not refused is a silent wrong answer: an AssertionError, which the fuzz reports."""
    lyco_core.load_adapter(path, header_only=True).summary()
    adapter = lyco_core.load_adapter(path)
    adapter.summary()
    adapter.patch(case.base, strength=0.0, key_map=case.key_map)
    patched = adapter.patch(case.base, strength=1.0, key_map=case.key_map)
    assert all(bool(torch.isfinite(v).all()) for v in patched.values()), "NaN/Inf written without an error"
    return patched, adapter


def _seeds(lyco_cases, peft_cases):
    return [*lyco_cases.values(), *(peft_cases[name] for name in PEFT_SEEDS)]


def _outcome(target, case, kind, added) -> str:
    """'clean', 'AdapterError' or what escaped. A clean mutant that gained a tensor must list it as unknown."""
    try:
        _, adapter = _exercise(target, case)
    except AdapterError:
        return "AdapterError"
    except Exception as exc:  # noqa: BLE001 - what the test is about
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    unlisted = [key for key in added if key not in adapter.unknown_keys and not _read(adapter, key)]
    return f"silent: {unlisted} neither read nor listed" if unlisted else "clean"


def _read(adapter, key) -> bool:
    return any(key.startswith(name + ".") or key.startswith(name + "_") for name in adapter.modules)


def _mutants(case, tensors, rng, tmp_path):
    """(kind, what, path) for MUTANTS_PER_FILE tensor mutants and, for PEFT folders, every config damage."""
    source = _tensor_file(case)
    for n in range(MUTANTS_PER_FILE):
        kind, key, mutated = _mutate(tensors, rng)
        if mutated.keys() == tensors.keys() and all(mutated[k] is tensors[k] for k in tensors):
            kind = "none (damage not applicable to the tensor drawn)"
        if case.path.is_dir():
            target = tmp_path / f"{case.name}-{n}"
            shutil.copytree(case.path, target)
            save_file(mutated, str(target / source.name))
        else:
            target = tmp_path / f"{case.name}-{n}.safetensors"
            save_file(mutated, str(target))
        yield kind, f"{kind} {key}", target, set(mutated) - set(tensors)
    if case.path.is_dir():
        config = json.loads((case.path / "adapter_config.json").read_text(encoding="utf-8"))
        for n, (field, value) in enumerate(CONFIG_DAMAGE):
            target = tmp_path / f"{case.name}-config-{n}"
            shutil.copytree(case.path, target)
            (target / "adapter_config.json").write_text(json.dumps({**config, field: value}), encoding="utf-8")
            yield "config", f"config {field}={value!r}", target, set()


def test_mutants_only_raise_adapter_error(lyco_cases, peft_cases, tmp_path):
    """Every mutant is refused with AdapterError or patches cleanly (finite, every added tensor read or listed);
    the table of outcomes per kind of damage goes to test-artifacts/fuzz.md."""
    table: dict[str, dict[str, int]] = {}
    slowest, escaped = 0.0, []
    for index, case in enumerate(_seeds(lyco_cases, peft_cases)):
        rng = random.Random(1000 + index)
        tensors = load_file(str(_tensor_file(case)))
        for kind, what, target, added in _mutants(case, tensors, rng, tmp_path):
            started = time.perf_counter()
            outcome = _outcome(target, case, kind, added)
            elapsed = time.perf_counter() - started
            slowest = max(slowest, elapsed)
            assert elapsed < SECONDS_PER_MUTANT, f"{case.name} ({what}) took {elapsed:.1f} s"
            column = outcome if outcome in ("clean", "AdapterError") else "other"
            table.setdefault(kind, {"clean": 0, "AdapterError": 0, "other": 0})[column] += 1
            if column == "other":
                escaped.append(f"{case.name} ({what}): {outcome}")
    total = {c: sum(row[c] for row in table.values()) for c in ("clean", "AdapterError", "other")}
    lines = [
        "# Mutation fuzz (tests/core/test_fuzz.py)",
        "",
        f"{sum(total.values())} mutants of {len(_seeds(lyco_cases, peft_cases))} reference-library files; "
        f"slowest {slowest:.2f} s.",
        "",
        "| damage | clean | AdapterError | other |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {kind} | {row['clean']} | {row['AdapterError']} | {row['other']} |" for kind, row in sorted(table.items())
    ]
    lines.append(f"| **all** | {total['clean']} | {total['AdapterError']} | {total['other']} |")
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("[fuzz] " + ", ".join(f"{c} {n}" for c, n in total.items()) + f"; slowest {slowest:.2f} s")
    assert not escaped, "\n".join(escaped)


@pytest.mark.parametrize("encoding", ["metadata added", "keys reordered", "config reformatted"])
def test_harmless_reencodings_patch_bit_identically(lyco_cases, peft_cases, tmp_path, encoding):
    for case in _seeds(lyco_cases, peft_cases):
        source = _tensor_file(case)
        expected, _ = _exercise(case.path, case)
        target = tmp_path / case.name
        if case.path.is_dir():
            shutil.copytree(case.path, target)
            file = target / source.name
        else:
            file = target.with_suffix(".safetensors")
        tensors, metadata = load_file(str(source)), dict(lyco_core.load_adapter(case.path).metadata)
        if encoding == "metadata added":
            save_file(tensors, str(file), metadata={**metadata, "note": "re-saved"})
        elif encoding == "keys reordered":
            save_file(dict(reversed(list(tensors.items()))), str(file), metadata=metadata or None)
        elif case.path.is_dir():
            config = json.loads((case.path / "adapter_config.json").read_text(encoding="utf-8"))
            (target / "adapter_config.json").write_text(json.dumps(config, indent=4, sort_keys=True), "utf-8")
        else:
            shutil.copyfile(source, file)
        got, _ = _exercise(target if case.path.is_dir() else file, case)
        assert got.keys() == expected.keys(), case.name
        assert all(torch.equal(got[k], expected[k]) for k in got), f"{case.name}: {encoding} changed the weights"
