"""Every class of bad input gets an AdapterError naming the file, module, key and what was expected."""

from __future__ import annotations

import json
import pickle
import time

import pytest
import torch
from safetensors.torch import save_file

import lyco_core
from lyco_core import AdapterError

MODULE = "lora_unet_fc1"


def lora_tensors(rank=4, out=8, inp=6):
    gen = torch.Generator().manual_seed(0)
    return {
        f"{MODULE}.lora_up.weight": torch.randn(out, rank, generator=gen),
        f"{MODULE}.lora_down.weight": torch.randn(rank, inp, generator=gen),
        f"{MODULE}.alpha": torch.tensor(2.0),
    }


def write(tmp_path, tensors, name="adapter.safetensors", metadata=None):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def expect_error(path, *fragments):
    with pytest.raises(AdapterError) as info:
        lyco_core.load_adapter(path)
    message = str(info.value)
    assert str(path) in message or path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_truncated_file(tmp_path):
    path = write(tmp_path, lora_tensors())
    path.write_bytes(path.read_bytes()[:-20])
    expect_error(path, "truncated")


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!rest")
    expect_error(path, "not valid JSON")


def test_too_short_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"abc")
    expect_error(path, "too short")


def test_header_size_lies(tmp_path):
    path = tmp_path / "lies.safetensors"
    header = json.dumps({"x.lora_up.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    expect_error(path, "x.lora_up.weight", "60 bytes", "expected 64 bytes")


def test_wrong_dtype(tmp_path):
    tensors = lora_tensors()
    tensors[f"{MODULE}.lora_down.weight"] = torch.ones(4, 6, dtype=torch.int32)
    expect_error(write(tmp_path, tensors), f"{MODULE}.lora_down.weight", "int32", "floating-point")


def test_missing_partner(tmp_path):
    tensors = {"lycoris_fc1.lokr_w1_a": torch.randn(2, 2), "lycoris_fc1.lokr_w2": torch.randn(4, 3)}
    error = expect_error(write(tmp_path, tensors), "module lycoris_fc1", "lokr_w1_b")
    assert error.module == "lycoris_fc1" and error.key == "lokr_w1_b"


def test_missing_lora_down(tmp_path):
    tensors = {f"{MODULE}.lora_up.weight": torch.randn(8, 4)}
    expect_error(write(tmp_path, tensors), MODULE, "lora_down.weight")


def test_contradicting_shapes(tmp_path):
    tensors = lora_tensors()
    tensors[f"{MODULE}.lora_up.weight"] = torch.randn(8, 3)
    expect_error(write(tmp_path, tensors), MODULE, "lora_up.weight", "rank")


def test_nan_and_inf(tmp_path):
    tensors = lora_tensors()
    tensors[f"{MODULE}.lora_up.weight"][0, 0] = float("nan")
    expect_error(write(tmp_path, tensors, "nan.safetensors"), "NaN", f"{MODULE}.lora_up.weight")
    tensors = lora_tensors()
    tensors[f"{MODULE}.lora_down.weight"][1, 1] = float("inf")
    expect_error(write(tmp_path, tensors, "inf.safetensors"), "Inf", f"{MODULE}.lora_down.weight")


def test_unknown_suffixes_are_reported_not_dropped(tmp_path):
    tensors = lora_tensors()
    tensors[f"{MODULE}.mystery_param"] = torch.randn(3)
    tensors["lora_unet_other.something.weight"] = torch.randn(3)
    adapter = lyco_core.load_adapter(write(tmp_path, tensors))
    assert list(adapter.modules) == [MODULE]
    assert f"{MODULE}.mystery_param" in adapter.unknown_keys
    assert "lora_unet_other.something.weight" in adapter.unknown_keys
    assert adapter.summary()["unknown_keys"] == adapter.unknown_keys


def test_not_an_adapter(tmp_path):
    path = write(tmp_path, {"some.thing.weight": torch.randn(4, 4), "other": torch.randn(4)})
    expect_error(path, "no adapter module recognised")


FOREIGN = {
    "checkpoint": ({"model.diffusion_model.conv.weight": (4, 4), "model.diffusion_model.conv.bias": (4,)},
                   "model checkpoint", "checkpoints"),
    "flux diffusion model": ({"double_blocks.0.img_attn.qkv.weight": (12, 4)}, "diffusion model", "extract"),
    "controlnet": ({"control_model.input_hint_block.0.weight": (4, 4)}, "ControlNet", "controlnet folder"),
    "vae": ({"first_stage_model.encoder.conv_in.weight": (4, 4)}, "VAE", "vae folder"),
    "embedding": ({"clip_l": (2, 8), "clip_g": (2, 16)}, "textual-inversion embedding", "embedding:<name>"),
    "cloneofsimo": ({"unet:0:up": (8, 2), "unet:0:down": (2, 8)}, "cloneofsimo", "numbered"),
    "mlx": ({"model.layers.0.self_attn.q_proj.lora_a": (8, 2), "model.layers.0.self_attn.q_proj.lora_b": (2, 8)},
            "MLX LoRA", "mlx_lm.fuse"),
}  # fmt: skip


@pytest.mark.parametrize("case", FOREIGN, ids=list(FOREIGN))
def test_other_kinds_of_file_are_named(tmp_path, case):
    shapes, what, where = FOREIGN[case]
    path = write(tmp_path, {key: torch.randn(*shape) for key, shape in shapes.items()})
    for header_only in (True, False):
        with pytest.raises(AdapterError) as info:
            lyco_core.load_adapter(path, header_only=header_only)
        assert what in str(info.value) and where in str(info.value) and "not an adapter" in str(info.value)


def test_unsafe_pickle_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"lora_unet_fc1.lora_up.weight": Payload()}, handle)
    expect_error(path, "refused pickle", "weights_only=True")


def test_tensor_only_pickle_loads(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(lora_tensors(), path)
    adapter = lyco_core.load_adapter(path)
    assert adapter.modules[MODULE].algo == "lora"


def test_unsupported_extension_and_missing_file(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    expect_error(other, "unsupported file type")
    expect_error(tmp_path / "absent.safetensors", "no such file")


def test_peft_folder_without_weights(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    expect_error(tmp_path, "adapter_model.safetensors")


def test_broken_adapter_config(tmp_path):
    save_file(
        {
            "base_model.model.fc1.lora_A.weight": torch.randn(2, 4),
            "base_model.model.fc1.lora_B.weight": torch.randn(3, 2),
        },
        str(tmp_path / "adapter_model.safetensors"),
    )
    (tmp_path / "adapter_config.json").write_text("{not json")
    expect_error(tmp_path, "adapter_config.json", "unreadable adapter config")


def test_patch_shape_mismatch_names_module(tmp_path):
    adapter = lyco_core.load_adapter(write(tmp_path, lora_tensors()))
    with pytest.raises(AdapterError) as info:
        adapter.patch({"fc1.weight": torch.randn(5, 6)})
    assert MODULE in str(info.value) and "output rows" in str(info.value)


def test_patch_matching_nothing_is_an_error(tmp_path):
    adapter = lyco_core.load_adapter(write(tmp_path, lora_tensors()))
    with pytest.raises(AdapterError) as info:
        adapter.patch({"other.weight": torch.randn(8, 6)})
    assert "no module matches" in str(info.value)


def test_partial_match_is_reported(tmp_path):
    tensors = lora_tensors()
    tensors.update({k.replace("fc1", "fc9"): v for k, v in lora_tensors().items()})
    adapter = lyco_core.load_adapter(write(tmp_path, tensors))
    report = adapter.match(["fc1.weight"])
    assert report.matched == {MODULE: "fc1.weight"}
    assert "lora_unet_fc9" in report.unmatched and "fc9" in report.unmatched["lora_unet_fc9"]
    assert report.line() == "1 modules matched, 1 unmatched"


# --- hostile headers: the header-only path (inspect, /lyco/info) refuses what a full load refuses -----------------
def raw_file(tmp_path, header, data: bytes = b"", name="hostile.safetensors", raw_header: bytes | None = None):
    """A safetensors file written byte by byte: 8-byte length, the JSON ``header`` (or ``raw_header``), ``data``."""
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


_GOOD = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
_DATA = bytes(16)
HOSTILE_HEADERS = {
    "metadata a list": ({"__metadata__": ["a"], f"{MODULE}.lora_up.weight": _GOOD}, _DATA, "__metadata__"),
    "metadata not strings": (
        {"__metadata__": {"ss_tag_frequency": {"a": 1}}, f"{MODULE}.lora_up.weight": _GOOD},
        _DATA,
        "__metadata__",
    ),
    "entry a list": ({f"{MODULE}.lora_up.weight": [1, 2]}, _DATA, "malformed header entry"),
    "dtype a list": ({f"{MODULE}.lora_up.weight": dict(_GOOD, dtype=["F32"])}, _DATA, "not a safetensors dtype"),
    "unknown dtype": ({f"{MODULE}.lora_up.weight": dict(_GOOD, dtype="F48")}, _DATA, "not a safetensors dtype"),
    "negative dim": ({f"{MODULE}.lora_up.weight": dict(_GOOD, shape=[-2, -2])}, _DATA, "non-negative integers"),
    "string dims": ({f"{MODULE}.lora_up.weight": dict(_GOOD, shape=["2", "2"])}, _DATA, "non-negative integers"),
    "65 dims": ({f"{MODULE}.lora_up.weight": dict(_GOOD, shape=[1] * 65, data_offsets=[0, 4])}, bytes(4), "at most 8"),
    "offsets strings": ({f"{MODULE}.lora_up.weight": dict(_GOOD, data_offsets=["0", "16"])}, _DATA, "data_offsets"),
    "offsets one number": ({f"{MODULE}.lora_up.weight": dict(_GOOD, data_offsets=[16])}, _DATA, "data_offsets"),
    "trailing bytes": ({f"{MODULE}.lora_up.weight": _GOOD}, _DATA + bytes(8), "bytes follow the last tensor"),
    "gap": ({f"{MODULE}.lora_up.weight": dict(_GOOD, data_offsets=[8, 24])}, bytes(24), "without gaps"),
    "overlap": ({f"{MODULE}.lora_up.weight": _GOOD, f"{MODULE}.lora_down.weight": _GOOD}, _DATA, "without gaps"),
}


@pytest.mark.parametrize("header_only", [True, False], ids=["header-only", "full"])
@pytest.mark.parametrize("case", HOSTILE_HEADERS, ids=list(HOSTILE_HEADERS))
def test_hostile_header_is_an_adapter_error(tmp_path, case, header_only):
    header, data, fragment = HOSTILE_HEADERS[case]
    path = raw_file(tmp_path, header, data)
    with pytest.raises(AdapterError) as info:
        lyco_core.load_adapter(path, header_only=header_only)
    assert fragment in str(info.value) and path.name in str(info.value), str(info.value)


@pytest.mark.parametrize("header_only", [True, False], ids=["header-only", "full"])
@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"9" * 5000 + b"}", b'{"a": NaN}x'],
    ids=["nested-100k", "5000-digit-int", "not-json"],
)
def test_unparseable_header_is_an_adapter_error(tmp_path, raw, header_only):
    path = raw_file(tmp_path, None, raw_header=raw)
    with pytest.raises(AdapterError, match="not valid JSON"):
        lyco_core.load_adapter(path, header_only=header_only)


def test_float8_factors_are_refused(tmp_path):
    tensors = {k: v.to(torch.float8_e4m3fn) if v.ndim else v for k, v in lora_tensors().items()}
    path = write(tmp_path, tensors)
    expect_error(path, "float8_e4m3fn", "fp16, bf16, fp32 or fp64")


# --- PEFT config values: checked by type and range once, when the layout reads them -------------------------------
def peft_folder(tmp_path, **config):
    folder = tmp_path / "peft_adapter"
    folder.mkdir()
    gen = torch.Generator().manual_seed(1)
    save_file(
        {
            "base_model.model.fc1.lora_A.weight": torch.randn(4, 6, generator=gen),
            "base_model.model.fc1.lora_B.weight": torch.randn(8, 4, generator=gen),
        },
        str(folder / "adapter_model.safetensors"),
    )
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["fc1"]}
    (folder / "adapter_config.json").write_text(json.dumps({**base, **config}), encoding="utf-8")
    return folder


BAD_CONFIGS = {
    "rank_pattern a string": ({"rank_pattern": "fc1"}, "rank_pattern"),
    "invalid regex key": ({"rank_pattern": {"fc1[": 2}}, "does not compile"),
    "backtracking regex": ({"rank_pattern": {"(a+)+$": 2}}, "repeats a group"),
    "back-reference": ({"alpha_pattern": {r"(fc)\1": 2}}, "refers back"),
    "r a word": ({"r": "four"}, "whole number"),
    "r NaN": ({"r": float("nan")}, "whole number"),
    "r negative": ({"r": -1}, "whole number"),
    "lora_alpha a list": ({"lora_alpha": [8]}, "finite number"),
    "lora_alpha huge": ({"lora_alpha": 1e308}, "magnitude"),
    "neumann terms 1e9": ({"peft_type": "OFT", "num_cayley_neumann_terms": 1e9}, "1…64"),
    "eps a word": ({"peft_type": "OFT", "eps": "small"}, "finite number"),
    "feedforward_modules a number": ({"peft_type": "IA3", "feedforward_modules": 5}, "module names"),
    "use_rslora a string": ({"use_rslora": "false"}, "true or false"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_peft_config_value_is_named(tmp_path, case):
    config, fragment = BAD_CONFIGS[case]
    folder = peft_folder(tmp_path, **config)
    started = time.perf_counter()
    for header_only in (True, False):
        with pytest.raises(AdapterError) as info:
            lyco_core.load_adapter(folder, header_only=header_only)
        message = str(info.value)
        assert fragment in message and "adapter_config.json" in message, message
    assert time.perf_counter() - started < 5


def test_plain_peft_patterns_still_apply(tmp_path):
    folder = peft_folder(tmp_path, rank_pattern={"fc.": 4}, alpha_pattern={r"f.*1": 16})
    module = lyco_core.load_adapter(folder).modules["base_model.model.fc1"]
    assert module.scale_value() == 4.0  # alpha_pattern 16 over rank 4


# --- nothing silent: unread tensors listed, contradictions and overflow refused ------------------------------------
UNREAD_BESIDE = {
    "LoHa factor beside LoRA": ({"hada_w1_a": (8, 2)}, "lora"),
    "LoKr factor beside LoRA": ({"lokr_w1": (2, 2)}, "lora"),
    "lokr_w1 factors beside a full lokr_w1": ({"lokr_w1_a": (2, 1), "lokr_w1_b": (1, 2)}, "lokr"),
    "dora_scale beside IA3": ({"dora_scale": (8, 1)}, "ia3"),
    "diff beside IA3": ({"diff": (8, 6)}, "ia3"),
}
_METHOD_TENSORS = {
    "lora": lambda gen: {"lora_up.weight": torch.randn(8, 4, generator=gen),
                         "lora_down.weight": torch.randn(4, 6, generator=gen)},
    "lokr": lambda gen: {"lokr_w1": torch.randn(2, 2, generator=gen), "lokr_w2": torch.randn(4, 3, generator=gen)},
    "ia3": lambda gen: {"weight": torch.randn(8, generator=gen), "on_input": torch.tensor(0)},
}  # fmt: skip


@pytest.mark.parametrize("case", UNREAD_BESIDE, ids=list(UNREAD_BESIDE))
def test_tensors_no_method_reads_are_listed(tmp_path, case):
    extra, method = UNREAD_BESIDE[case]
    gen = torch.Generator().manual_seed(2)
    tensors = {f"{MODULE}.{k}": v for k, v in _METHOD_TENSORS[method](gen).items()}
    tensors.update({f"{MODULE}.{k}": torch.randn(*shape, generator=gen) for k, shape in extra.items()})
    for header_only in (True, False):
        adapter = lyco_core.load_adapter(write(tmp_path, tensors), header_only=header_only)
        assert adapter.modules[MODULE].algo == method
        assert sorted(adapter.unknown_keys) == sorted(f"{MODULE}.{k}" for k in extra)
        assert not set(extra) & set(adapter.modules[MODULE].params)
    weights = {"diffusion_model.fc1.weight": torch.randn(8, 6, generator=gen)}
    alone = {k: v for k, v in tensors.items() if not any(k.endswith("." + e) for e in extra)}
    expected = lyco_core.adapter_from_tensors(alone).patch(weights)
    assert torch.equal(adapter.patch(weights)["diffusion_model.fc1.weight"], expected["diffusion_model.fc1.weight"])


def test_two_spellings_of_one_parameter(tmp_path):
    tensors = lora_tensors()
    tensors[f"{MODULE}.lora.up.weight"] = tensors[f"{MODULE}.lora_up.weight"] * 2
    expect_error(write(tmp_path, tensors), "two spellings", "lora_up.weight", f"{MODULE}.lora.up.weight")


@pytest.mark.parametrize("peft_type", ["IA3", "LOHA"])
def test_peft_type_contradicting_tensors(tmp_path, peft_type):
    folder = peft_folder(tmp_path, peft_type=peft_type)
    for header_only in (True, False):
        with pytest.raises(AdapterError) as info:
            lyco_core.load_adapter(folder, header_only=header_only)
        assert "tensors are lora" in str(info.value) and repr(peft_type) in str(info.value), str(info.value)
        assert info.value.module == "base_model.model.fc1"


@pytest.mark.parametrize("peft_type", ["ADALORA", "VERA"])
def test_peft_methods_we_do_not_apply_are_refused(tmp_path, peft_type):
    with pytest.raises(AdapterError) as info:
        lyco_core.load_adapter(peft_folder(tmp_path, peft_type=peft_type))
    assert f"peft_type '{peft_type}'" in str(info.value) and "does not apply" in str(info.value)


def test_overflowing_result_is_an_error(tmp_path):
    gen = torch.Generator().manual_seed(3)
    for dtype, value in ((torch.float16, 6e4), (torch.float32, 1e20)):  # products beyond the dtype's range
        tensors = {
            f"{MODULE}.lora_up.weight": torch.full((8, 4), value, dtype=dtype),
            f"{MODULE}.lora_down.weight": torch.full((4, 6), value, dtype=dtype),
        }
        adapter = lyco_core.load_adapter(write(tmp_path, tensors))
        weights = {"diffusion_model.fc1.weight": torch.randn(8, 6, generator=gen).to(dtype)}
        with pytest.raises(AdapterError) as info:
            adapter.patch(weights)
        assert "NaN or Inf" in str(info.value) and info.value.module == MODULE, str(info.value)
    # a model that already holds Inf is not the adapter's doing
    weights = {"diffusion_model.fc1.weight": torch.full((8, 6), float("inf"))}
    small = lyco_core.adapter_from_tensors(lora_tensors())
    assert torch.isinf(small.patch(weights)["diffusion_model.fc1.weight"]).all()
