"""Trained adapters in PEFT forms beyond plain factors — PEFT-style OFT/BOFT, ``modules_to_save``, LoRA on an
``nn.Embedding``, dense differences — save as PEFT folders that ``PeftModel.from_pretrained`` loads with our outputs
and merged weights, and that our own reader patches to the same weights; what PEFT cannot express is refused by name.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import lyco_core
from lyco_core import AdapterError
from lyco_core.convert import convert
from lyco_core.train import BOFTConfig, IA3Config, LoHaConfig, LoraConfig, OFTConfig, save_trained, wrap
from lyco_core.train.methods import DenseTrainable
from .convert_fixtures import relative
from tests.host.tolerances import delta_agreement, forward_agreement

from .train_fixtures import ALL, LINEAR, TINYNET_DEPTHS, inputs, one_thread, randomize, tiny_model  # noqa: F401  (autouse fixture)

# ‖ours − theirs‖ / ‖theirs‖ of two float32 computations (outputs of TinyNet / EmbeddingNet, or merged weights,
# whose OFT/BOFT/Cayley reductions are all shorter than TinyNet's path): 2ε·(1 + √288 + √768 + √48) ≈ 1.3e-5
TOL = forward_agreement(TINYNET_DEPTHS)


class EmbeddingNet(nn.Module):
    """emb 20×16 → fc 16→8 (bias)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 8)

    def forward(self, tokens):
        return (self.fc(self.emb(tokens)),)


def embedding_model(seed: int = 0) -> EmbeddingNet:
    torch.manual_seed(seed)
    return EmbeddingNet().eval()


def tokens():
    return (torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(1)),)


MODELS = {"tiny": (tiny_model, inputs), "embedding": (embedding_model, tokens)}
CASES = [
    ("oft-peft", "tiny", OFTConfig(oft_block_size=8, use_cayley_neumann=False, module_dropout=0.1, target_modules=ALL)),
    ("oft-peft-neumann-coft", "tiny", OFTConfig(r=4, oft_block_size=0, coft=True, eps=1e-2, target_modules=LINEAR)),
    ("oft-peft-shared", "tiny", OFTConfig(oft_block_size=16, block_share=True, target_modules=LINEAR)),
    (
        "boft-peft",
        "tiny",
        BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2, boft_dropout=0.1, target_modules=LINEAR),
    ),
    (
        "modules-to-save",
        "tiny",
        LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "conv3"], modules_to_save=["ln", "conv1", "gn"]),
    ),
    (
        "ia3-modules-to-save",
        "tiny",
        IA3Config(target_modules=LINEAR, feedforward_modules=["fc2"], modules_to_save=["gn", "conv1"]),
    ),
    ("embedding", "embedding", LoraConfig(r=4, lora_alpha=8, target_modules=["emb", "fc"])),
    ("dense-lora", "tiny", LoraConfig(r=40, lora_alpha=20, target_modules=ALL)),
    ("dense-loha", "tiny", LoHaConfig(r=20, alpha=10, use_effective_conv2d=True, target_modules=ALL)),
]


# PEFT's OFT forward on a k×k convolution rotates unfolded input patches and folds them back (overlaps add up), which
# is not its own merge; our math is the merge, so there only the merged model is compared.
FORWARD_IS_NOT_MERGE = {"oft-peft"}


CONFIGS = {name: config for name, _, config in CASES}


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).norm() / theirs.norm().clamp_min(1e-30))


def _trained(model_name, config):
    make, data = MODELS[model_name]
    tuner = wrap(make(), config)
    tuner.model.eval()  # no dropout of any kind in the outputs compared
    randomize(tuner.adapter())
    with torch.no_grad():
        return tuner, tuner(*data())


@pytest.mark.parametrize("name, model_name, config", CASES, ids=[c[0] for c in CASES])
def test_saves_as_peft_and_reads_back(name, model_name, config, tmp_path):
    """PEFT's model (unmerged where its forward is its merge, and merged) gives our outputs; its merged weights,
    ours and our reader's patch of the folder agree. Multi-factor BOFT needs PEFT's CUDA block-diagonal
    extension, here a pure-torch stand-in (without one PEFT silently builds a single factor)."""
    from peft import PeftModel

    from .oracles.peft_oracle import _boft_extension as boft_extension

    tuner, ours = _trained(model_name, config)
    if name.startswith("dense"):
        assert any(isinstance(t, DenseTrainable) for t in tuner.adapter().modules.values())
    folder = save_trained(tuner.adapter(), tmp_path / "peft", layout="peft")
    data = MODELS[model_name][1]()
    with boft_extension(stand_in=True), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(MODELS[model_name][0](), str(folder))
        if name not in FORWARD_IS_NOT_MERGE:
            assert max(_relative(a, b) for a, b in zip(ours, model(*data))) < TOL
        peft_merged = model.merge_and_unload()
        assert max(_relative(a, b) for a, b in zip(ours, peft_merged(*data))) < TOL
    peft_weights = peft_merged.state_dict()

    base = MODELS[model_name][0]().state_dict()
    tuner.merge()
    merged = {k: v.detach().clone() for k, v in tuner.model.state_dict().items() if k in base}
    tuner.unmerge()
    patched = {**base, **lyco_core.load_adapter(folder).patch(base)}
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed
    for key in changed:
        assert _relative(merged[key], peft_weights[key]) < TOL, key
        assert _relative(merged[key], patched[key]) < TOL, key


def test_written_config_and_keys(tmp_path):
    """PEFT's own spellings: modules_to_save as ``<path>.weight``/``.bias``, embedding factors transposed."""
    tuner, _ = _trained("tiny", CONFIGS["modules-to-save"])
    folder = save_trained(tuner.adapter(), tmp_path / "mts", layout="peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["conv1", "gn", "ln"]
    keys = set(lyco_core.io.load_tensors(folder / "adapter_model.safetensors")[0])
    assert {"base_model.model.ln.weight", "base_model.model.ln.bias", "base_model.model.conv1.weight"} <= keys

    tuner, _ = _trained("embedding", CONFIGS["embedding"])
    folder = save_trained(tuner.adapter(), tmp_path / "emb", layout="peft")
    tensors = lyco_core.io.load_tensors(folder / "adapter_model.safetensors")[0]
    assert tensors["base_model.model.emb.lora_embedding_A"].shape == (4, 20)
    assert tensors["base_model.model.emb.lora_embedding_B"].shape == (16, 4)


def test_peft_oft_converts_to_peft_unchanged(tmp_path):
    """A PEFT OFT folder written again as PEFT keeps its tensors and rotation options."""
    tuner, _ = _trained("tiny", CONFIGS["oft-peft-neumann-coft"])
    first = save_trained(tuner.adapter(), tmp_path / "a", layout="peft")
    second = lyco_core.save_adapter(lyco_core.load_adapter(first), tmp_path / "b", "peft")
    config = json.loads((second / "adapter_config.json").read_text())
    assert (config["coft"], config["eps"], config["r"], config["peft_version"]) == (True, 1e-2, 4, "0.18.0")
    before = lyco_core.io.load_tensors(first / "adapter_model.safetensors")[0]
    after = lyco_core.io.load_tensors(second / "adapter_model.safetensors")[0]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "config, names, why",
    [
        (
            OFTConfig(oft_block_size=8, variant="lycoris", constraint=1e-2, target_modules=LINEAR),
            "fc1",
            "save it in the lycoris layout, or convert it to LoRA",
        ),
        (BOFTConfig(boft_block_size=8, variant="lycoris", target_modules=LINEAR), "fc1", "lycoris layout"),
        (LoraConfig(r=40, use_dora=True, target_modules=ALL), "(all)", "DoRA is on some modules only"),
    ],
    ids=["oft-lycoris", "boft-lycoris", "dora-with-dense"],
)
def test_what_peft_cannot_express_is_refused(config, names, why, tmp_path):
    tuner, _ = _trained("tiny", config)
    with pytest.raises(AdapterError, match="cannot write") as error:
        save_trained(tuner.adapter(), tmp_path / "peft", layout="peft")
    assert names in str(error.value) and why in str(error.value)
    assert not (tmp_path / "peft").exists()


def test_norm_difference_without_base_is_refused(tmp_path):
    """A LyCORIS norm difference has no PEFT form without the base weights (a modules_to_save copy needs them)."""
    tuner, _ = _trained("tiny", CONFIGS["modules-to-save"])
    path = save_trained(tuner.adapter(), tmp_path / "lycoris.safetensors")
    with pytest.raises(AdapterError, match="norm-difference"):
        lyco_core.save_adapter(
            lyco_core.load_adapter(path), tmp_path / "peft", "peft", model_keys=tiny_model().state_dict().keys()
        )


def test_full_difference_converts_to_exact_lora(lyco_cases):
    """A LyCORIS full difference (``diff``, ``diff_b``) is a PEFT LoRA with an identity factor, scale 1 and the bias
    difference as ``lora_B.bias`` — exact; LyCORIS cannot take that bias back."""
    case = lyco_cases["lycoris-full"]
    adapter = lyco_core.load_adapter(case.path)
    there, report = convert(adapter, "peft", model_keys=case.base.keys())
    assert {m.algo for m in there.modules.values()} == {"lora"}
    assert report.total_error() == 0.0
    expected = adapter.patch(case.base)  # an identity factor: one rounded product per element
    assert relative(there.patch(case.base), expected, case.base) <= delta_agreement(expected, case.base, depth=1)
    with pytest.raises(AdapterError, match="lora_B.bias"):
        convert(there, "lycoris", model_keys=case.base.keys())


def test_peft_own_embedding_and_modules_to_save_folder_reads(tmp_path):
    """A folder PEFT itself saved (embedding LoRA, a modules_to_save layer) patches to PEFT's merged weights."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            embedding_model(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=["emb"], modules_to_save=["fc"])
        )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        model.save_pretrained(str(tmp_path / "peft"))
        expected = model.merge_and_unload().state_dict()
    adapter = lyco_core.load_adapter(tmp_path / "peft")
    assert sorted(m.algo for m in adapter.modules.values()) == ["lora", "saved"]
    base = embedding_model().state_dict()
    patched = {**base, **adapter.patch(base)}
    for key in base:
        assert _relative(patched[key], expected[key]) < TOL, key
    half = adapter.patch(base, 0.5)  # a saved copy at strength m: W + m·(S − W)
    assert _relative(half["fc.bias"], (base["fc.bias"] + expected["fc.bias"]) / 2) < TOL
