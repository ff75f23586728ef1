"""Target selection follows PEFT's documented rules exactly; rank/alpha patterns apply per module; dense deltas where
low-rank would not save values; configs keep PEFT's field names."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from lyco_core.train import (
    BOFTConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    OFTConfig,
    can_adapt,
    config_from_dict,
    select,
    wrap,
)
from lyco_core.train.methods import DenseTrainable

from .train_fixtures import one_thread  # noqa: F401  (autouse fixture)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"to_q": nn.Linear(16, 16), "to_k": nn.Linear(16, 16), "to_out": nn.Linear(16, 16)})
        self.conv = nn.Conv2d(16, 16, 3)
        self.norm = nn.LayerNorm(16)


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block() for _ in range(3)])
        self.extra = nn.ModuleList([nn.ModuleDict({"to_q": nn.Linear(16, 16)})])


class Stack(nn.Module):
    """embed, body.layers.{0,1,2}.{attn.to_q,to_k,to_out, conv, norm}, body.extra.0.to_q, head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.body = Body()
        self.head = nn.Linear(16, 10)


def names(config) -> set[str]:
    return set(select(Stack(), config))


def layer_names(index: int, *leaves: str) -> set[str]:
    return {f"body.layers.{index}.{leaf}" for leaf in leaves}


def peft_names(config) -> set[str]:
    """What PEFT's own matcher selects among the layers LoRA can adapt."""
    from peft import LoraConfig as PeftLora
    from peft.tuners.tuners_utils import check_target_module_exists

    theirs = PeftLora(
        target_modules=config.target_modules,
        exclude_modules=config.exclude_modules,
        layers_to_transform=config.layers_to_transform,
        layers_pattern=config.layers_pattern,
    )
    found = set()
    for name, module in Stack().named_modules():
        result = check_target_module_exists(theirs, name) if name and can_adapt(module, "lora") else None
        if result and type(result).__name__ != "_ExcludedModule":
            found.add(name)
    return found


RULES = {
    "regex": LoraConfig(target_modules=r".*\.to_[qk]"),
    "list": LoraConfig(target_modules=["to_q", "head", "embed"]),
    "layers": LoraConfig(target_modules=["to_q", "conv"], layers_to_transform=[0, 2]),
    "layers-pattern": LoraConfig(target_modules=["to_q"], layers_to_transform=0, layers_pattern="layers"),
    "exclude-list": LoraConfig(target_modules=["to_q", "to_k"], exclude_modules=["to_k", "extra.0.to_q"]),
    "exclude-regex": LoraConfig(target_modules=["to_q"], exclude_modules=r".*layers\.1\..*"),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_selection_equals_peft_own_matcher(rule):
    assert names(RULES[rule]) == peft_names(RULES[rule]) != set()


def test_regex_is_a_full_match():
    assert names(LoraConfig(target_modules=r".*\.to_[qk]")) == (
        layer_names(0, "attn.to_q", "attn.to_k")
        | layer_names(1, "attn.to_q", "attn.to_k")
        | layer_names(2, "attn.to_q", "attn.to_k")
        | {"body.extra.0.to_q"}
    )
    assert names(LoraConfig(target_modules=r"to_q")) == set()  # not a search: the whole name must match


def test_list_matches_exact_names_and_dotted_suffixes():
    assert names(LoraConfig(target_modules=["to_q", "head"])) == (
        {"head", "body.extra.0.to_q"} | {f"body.layers.{i}.attn.to_q" for i in range(3)}
    )
    assert names(LoraConfig(target_modules=["o_q"])) == set()  # a suffix must start at a dot
    assert names(LoraConfig(target_modules=["embed"])) == {"embed"}  # embeddings only when named
    assert names(LoHaConfig(target_modules=["embed"])) == set()  # and only for LoRA


def test_all_linear_leaves_out_the_output_layer():
    linear = {f"body.layers.{i}.attn.{p}" for i in range(3) for p in ("to_q", "to_k", "to_out")}
    linear.add("body.extra.0.to_q")
    assert names(LoraConfig(target_modules="all-linear")) == linear
    assert names(LoraConfig(target_modules="ALL-LINEAR")) == linear


def test_none_means_every_linear_and_conv():
    leaves = ("attn.to_q", "attn.to_k", "attn.to_out", "conv")
    expected = {f"body.layers.{i}.{p}" for i in range(3) for p in leaves} | {"body.extra.0.to_q", "head"}
    assert names(LoraConfig()) == expected


def test_layers_to_transform_and_pattern():
    assert names(LoraConfig(target_modules=["to_q"], layers_to_transform=[0, 2])) == (
        {"body.layers.0.attn.to_q", "body.layers.2.attn.to_q", "body.extra.0.to_q"}
    )  # first ".<name>.<n>."
    assert names(LoraConfig(target_modules=["to_q"], layers_to_transform=0, layers_pattern="layers")) == (
        {"body.layers.0.attn.to_q"}
    )
    assert names(LoraConfig(target_modules=["to_q"], layers_to_transform=[0], layers_pattern=["extra"])) == (
        {"body.extra.0.to_q"}
    )
    # a regex target ignores layers_to_transform, as in PEFT
    assert "body.layers.1.attn.to_q" in names(LoraConfig(target_modules=r".*to_q", layers_to_transform=[0]))
    with pytest.raises(ValueError, match="layers_pattern"):
        LoraConfig(target_modules=["to_q"], layers_pattern="layers")


def test_exclude_always_wins():
    assert names(LoraConfig(target_modules="all-linear", exclude_modules=["to_q", "to_k"])) == (
        {f"body.layers.{i}.attn.to_out" for i in range(3)}
    )
    assert names(LoraConfig(target_modules=["to_q"], exclude_modules=r".*layers\.1\..*")) == (
        {"body.layers.0.attn.to_q", "body.layers.2.attn.to_q", "body.extra.0.to_q"}
    )


def test_modules_to_save_train_whole_and_are_never_adapted():
    model = Stack()
    tuner = wrap(model, LoraConfig(target_modules=["to_q", "norm"], modules_to_save=["norm"]))
    modules = tuner.adapter().modules
    saved = {n for n, t in modules.items() if isinstance(t, DenseTrainable) and t.saved}
    assert saved == {f"body.layers.{i}.norm" for i in range(3)}
    assert set(modules) - saved == {f"body.layers.{i}.attn.to_q" for i in range(3)} | {"body.extra.0.to_q"}
    assert all(set(modules[n].canonical) == {"w_norm", "b_norm"} for n in saved)


def test_rank_and_alpha_patterns_apply():
    tuner = wrap(
        Stack(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["to_q", "to_k"],
            rank_pattern={r"layers\.1\.attn\.to_q": 2, "to_k": 1},
            alpha_pattern={r"layers\.\d\.attn\.to_k": 3},
        ),
    )
    modules = tuner.adapter().modules
    assert modules["body.layers.1.attn.to_q"].rank == 2 and modules["body.layers.1.attn.to_q"].scaling == 4.0
    assert modules["body.layers.0.attn.to_q"].rank == 4 and modules["body.layers.0.attn.to_q"].scaling == 2.0
    assert all(modules[f"body.layers.{i}.attn.to_k"].rank == 1 for i in range(3))
    assert all(modules[f"body.layers.{i}.attn.to_k"].scaling == 3.0 for i in range(3))
    assert modules["body.layers.0.attn.to_q"].lora_down_weight.shape == (4, 16)
    assert modules["body.layers.1.attn.to_q"].lora_down_weight.shape == (2, 16)


def test_dense_delta_where_low_rank_saves_nothing():
    # 16×16 Linear: r·(16+16) ≥ 256 from r = 8; LoHa's two pairs from r = 4; LoKr never goes dense.
    kinds = [
        {type(t).__name__ for t in wrap(Stack(), cfg).adapter().modules.values()}
        for cfg in (
            LoraConfig(r=7, target_modules=["to_q"]),
            LoraConfig(r=8, target_modules=["to_q"]),
            LoHaConfig(r=4, target_modules=["to_q"]),
            LoKrConfig(r=64, target_modules=["to_q"]),
        )
    ]
    assert kinds == [{"LoRATrainable"}, {"DenseTrainable"}, {"DenseTrainable"}, {"LoKrTrainable"}]


def test_configs_carry_peft_field_names():
    from peft import BOFTConfig as PeftBOFT, IA3Config as PeftIA3, LoHaConfig as PeftLoHa
    from peft import LoKrConfig as PeftLoKr, LoraConfig as PeftLora, OFTConfig as PeftOFT

    pairs = [
        (LoKrConfig, PeftLoKr),
        (LoHaConfig, PeftLoHa),
        (OFTConfig, PeftOFT),
        (BOFTConfig, PeftBOFT),
        (IA3Config, PeftIA3),
        (LoraConfig, PeftLora),
    ]
    for ours, theirs in pairs:
        peft_fields = {f.name for f in dataclasses.fields(theirs)}
        ours_fields = {f.name for f in dataclasses.fields(ours)} - {
            "variant",
            "constraint",
            "rescaled",
            "conv_decomposition",
        }
        if ours is IA3Config:  # PEFT's IA3 has no layer selection; ours has the shared one
            ours_fields -= {"layers_to_transform", "layers_pattern"}
        assert ours_fields <= peft_fields, (ours.__name__, ours_fields - peft_fields)
        for field in dataclasses.fields(ours):
            if field.name in peft_fields and field.default is not dataclasses.MISSING:
                assert theirs.__dataclass_fields__[field.name].default == field.default, (ours.__name__, field.name)
    config = LoKrConfig(r=3, target_modules={"b", "a"}, rank_pattern={"a": 2})
    assert config_from_dict(config.to_dict()) == config and config.target_modules == ["a", "b"]
    with pytest.raises(ValueError, match="variant"):
        OFTConfig(oft_block_size=8, constraint=1e-3)  # a LyCORIS-only field in the PEFT variant
    with pytest.raises(ValueError, match="either r"):
        OFTConfig(r=4, oft_block_size=8)
