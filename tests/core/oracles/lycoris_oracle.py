"""Reference cases from the real LyCORIS library (lycoris-lora 4.x).

Every case wraps a tiny model with ``lycoris.create_lycoris`` (or the kohya entry point
``lycoris.kohya.create_network``), sets every adapter tensor to seeded random values (the library's own init
makes the delta zero), saves the adapter with the library's ``save_weights`` and then records what the
library's *training forward* does to each adapted layer at several strengths: the wrapped layer is probed
with impulse inputs, which recovers its effective weight (and bias) exactly up to fp32 round-off.

The forward is used rather than ``merge_to``/``get_diff_weight`` because LyCORIS' merge helpers apply
alpha/rank twice for LoHa and LoKr (see ``loha_merge_vs_forward``). The default (rebuild) forward is used
throughout; there the bias of IA3/OFT/BOFT layers is left alone (checked while probing), unlike bypass mode.

Files saved in fp16/bf16 are loaded back into the network with the library's ``load_weights`` before
probing, so the reference is computed from the rounded tensors.

Only ``build_lycoris_cases`` and ``loha_merge_vs_forward`` are meant to be used from outside.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tests.host.lycoris_random import randomise_lycoris
from tests.host.tolerances import agreement

from .common import ParityCase

STRENGTHS = (1.0, 0.6, -0.5)

_ALGO_OF_CLASS = {
    "LoConModule": "lora",
    "LohaModule": "loha",
    "LokrModule": "lokr",
    "DiagOFTModule": "oft",
    "ButterflyOFTModule": "boft",
    "GLoRAModule": "glora",
    "IA3Module": "ia3",
    "FullModule": "full",
    "NormModule": "norm",
}

# std of the random adapter tensors per algorithm, chosen so that max|delta| is roughly 0.1x-2x max|W|.
_STD = {
    "lora": 0.1,
    "loha": 0.25,
    "lokr": 0.2,
    "glora": 0.1,
    "oft": 0.03,
    "boft": 0.03,
    "ia3": 0.2,
    "full": 0.02,
    "norm": 0.1,
}


# ------------------------------------------------------------------------------------------------ models
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 96, bias=True)
        self.fc2 = nn.Linear(96, 64, bias=False)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1, bias=True)
        self.conv1 = nn.Conv2d(48, 32, 1, bias=False)
        self.ln = nn.LayerNorm(64)
        self.gn = nn.GroupNorm(4, 48)


def tiny_model(seed: int = 1234) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        for norm in (model.ln, model.gn):
            norm.weight.copy_(1.0 + 0.2 * torch.randn_like(norm.weight))
            norm.bias.copy_(0.2 * torch.randn_like(norm.bias))
    return model.eval()


# Class names matter: the kohya preset targets modules by class name ("Transformer2DModel",
# "ResnetBlock2D") and by path ("conv_in", "time_embedding.linear_1"/"linear_2").
class _Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])


class _FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)])


class _BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _Attention(dim)
        self.ff = _FeedForward(dim)


class Transformer2DModel(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([_BasicTransformerBlock(dim)])
        self.proj_out = nn.Linear(dim, dim)


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(4, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1)


class _DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin, cout, temb)])
        self.attentions = nn.ModuleList([Transformer2DModel(cout)])


class _TimeEmbedding(nn.Module):  # deliberately not "TimestepEmbedding" (would be targeted twice)
    def __init__(self, cin: int, temb: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(cin, temb)
        self.linear_2 = nn.Linear(temb, temb)


class ToyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.time_embedding = _TimeEmbedding(8, 32)
        self.down_blocks = nn.ModuleList([_DownBlock(8, 16, 32)])
        self.conv_out = nn.Conv2d(16, 4, 3, padding=1)


def toy_unet(seed: int = 4321) -> ToyUNet:
    torch.manual_seed(seed)
    return ToyUNet().eval()


# ------------------------------------------------------------------------------------------------ probing
@torch.no_grad()
def probe_layer(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Effective (weight, bias) of a layer, read from its forward with impulse inputs (fp32)."""
    if isinstance(layer, nn.Linear):
        n = layer.in_features
        y0 = layer(torch.zeros(1, n))[0]
        y = layer(torch.eye(n))
        return (y - y0).T.contiguous(), y0.clone()
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        assert layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1
        assert layer.padding == (kh // 2, kw // 2) and kh % 2 == 1 and kw % 2 == 1
        cin = layer.in_channels
        x = torch.zeros(cin, cin, kh, kw)
        idx = torch.arange(cin)
        x[idx, idx, kh // 2, kw // 2] = 1.0
        y0 = layer(torch.zeros(1, cin, kh, kw))
        bias = y0[0, :, kh // 2, kw // 2].clone()
        assert torch.equal(y0, bias.view(1, -1, 1, 1).expand_as(y0))
        # y[i, o, py, px] = b[o] + W[o, i, kh-1-py, kw-1-px] for a one-hot input at the centre
        d = layer(x) - y0
        return d.permute(1, 0, 2, 3).flip(2, 3).contiguous(), bias
    if isinstance(layer, nn.LayerNorm):
        (c,) = layer.normalized_shape
        assert c % 2 == 0
        v = torch.ones(c)
        v[1::2] = -1.0
        x = torch.stack([v, -v])  # each row: mean 0, variance 1, and row 1 = -row 0
        xn = F.layer_norm(x, (c,), eps=layer.eps)
        y = layer(x)
        return (y[0] - y[1]) / (2 * xn[0]), (y[0] + y[1]) / 2
    if isinstance(layer, nn.GroupNorm):
        c = layer.num_channels
        x = torch.zeros(1, c, 1, 2)
        x[0, :, 0, 0] = 1.0
        x[0, :, 0, 1] = -1.0  # every group: mean 0, variance 1
        xn = F.group_norm(x, layer.num_groups, eps=layer.eps)
        y = layer(x)
        return (y[0, :, 0, 0] - y[0, :, 0, 1]) / (2 * xn[0, :, 0, 0]), (y[0, :, 0, 0] + y[0, :, 0, 1]) / 2
    raise TypeError(f"cannot probe {type(layer).__name__}")


def check_probe() -> float:
    """The probe must return an unwrapped layer's own parameters; returns the worst mismatch as a fraction of its
    rounding bound (≤ 1 passes): relative to max|W|, ``agreement(1, float32, ratio=1 + max|b|/max|W|, steps=3)``
    — the probe's affine output rounds W + b, then a difference and a division (or a half-sum) round again."""
    worst = 0.0
    model = tiny_model()
    for layer in (model.fc1, model.fc2, model.conv3, model.conv1, model.ln, model.gn):
        w, b = probe_layer(layer)
        scale = layer.weight.abs().max().item()
        err = (w - layer.weight).abs().max().item() / scale
        bias_ratio = 0.0
        if layer.bias is not None:
            err = max(err, (b - layer.bias).abs().max().item() / scale)
            bias_ratio = layer.bias.abs().max().item() / scale
        else:
            assert not b.abs().max().item()
        worst = max(worst, err / agreement(1, torch.float32, ratio=1 + bias_ratio, steps=3))
    assert worst <= 1, f"probe self-check failed: {worst} of the rounding bound"
    return worst


# ------------------------------------------------------------------------------------------------ building
_NET_ATTRS = (
    "ENABLE_CONV",
    "TARGET_REPLACE_MODULE",
    "TARGET_REPLACE_NAME",
    "LORA_PREFIX",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "USE_FNMATCH",
    "TARGET_EXCLUDE_NAME",
)
_KOHYA_ATTRS = (
    "ENABLE_CONV",
    "UNET_TARGET_REPLACE_MODULE",
    "UNET_TARGET_REPLACE_NAME",
    "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    "TEXT_ENCODER_TARGET_REPLACE_NAME",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "USE_FNMATCH",
    "TARGET_EXCLUDE_NAME",
)


@contextlib.contextmanager
def _quiet_lycoris():
    """Silence LyCORIS' logging and keep its class-level preset state from leaking out of a case."""
    from lycoris import LycorisNetwork
    from lycoris.kohya import LycorisNetworkKohya
    from lycoris.logging import logger

    saved = {a: getattr(LycorisNetwork, a) for a in _NET_ATTRS}
    saved_k = {a: getattr(LycorisNetworkKohya, a) for a in _KOHYA_ATTRS}
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        for a, v in saved.items():
            setattr(LycorisNetwork, a, v)
        for a, v in saved_k.items():
            setattr(LycorisNetworkKohya, a, v)


def _wrap(model: nn.Module, *, targets=("Linear", "Conv2d"), module_algo_map=None, name_algo_map=None, **kwargs):
    """create_lycoris with an explicit preset (applied through the library's own apply_preset)."""
    from lycoris import LycorisNetwork, create_lycoris

    LycorisNetwork.apply_preset(
        {
            "enable_conv": True,
            "target_module": list(targets),
            "target_name": [],
            "module_algo_map": dict(module_algo_map or {}),
            "name_algo_map": dict(name_algo_map or {}),
            "lora_prefix": "lycoris",
            "use_fnmatch": False,
            "exclude_name": [],
        }
    )
    # preset="full" only carries enable_conv/unet_*/text_encoder_* keys, which leave the preset above intact.
    return create_lycoris(model, preset="full", warn_on_unmatched=False, **kwargs)


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _randomise(network, gen: torch.Generator) -> None:
    randomise_lycoris(network, gen, lambda lora: _STD[_ALGO_OF_CLASS[type(lora).__name__]], scalar=0.8)


def _layer_names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _reference(network, model: nn.Module, base: dict[str, torch.Tensor]) -> dict[float, dict[str, torch.Tensor]]:
    names = _layer_names(model)
    out: dict[float, dict[str, torch.Tensor]] = {}
    for m in STRENGTHS:
        network.set_multiplier(m)
        ref: dict[str, torch.Tensor] = {}
        for lora in network.loras:
            layer = lora.org_module[0]
            path = names[id(layer)]
            w, b = probe_layer(layer)
            ref[f"{path}.weight"] = w
            bkey = f"{path}.bias"
            if bkey in base:
                if torch.equal(b, base[bkey]):
                    continue
                algo = _ALGO_OF_CLASS[type(lora).__name__]
                assert algo in ("full", "norm"), f"{lora.lora_name}: {algo} forward changed the bias"
                ref[bkey] = b
            else:
                assert not b.abs().max().item(), f"{lora.lora_name}: bias appeared"
        out[m] = ref
    network.set_multiplier(1.0)
    return out


def _case_from_network(
    name: str,
    path: Path,
    network,
    model: nn.Module,
    base: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = torch.float32,
    metadata: dict[str, str] | None = None,
    note: str = "",
) -> ParityCase:
    network.save_weights(str(path), dtype, dict(metadata or {"lyco_oracle_case": name}))
    if dtype in (torch.float16, torch.bfloat16):
        # reference from the rounded tensors: load the saved file back with the library's loader
        info = network.load_weights(str(path))
        assert not info.get("unexpected keys"), info
    algos = {lo.lora_name: _ALGO_OF_CLASS[type(lo).__name__] for lo in network.loras}
    dora = {lo.lora_name: bool(getattr(lo, "wd", False)) for lo in network.loras}
    return ParityCase(
        name=name,
        path=path,
        layout="lycoris",
        algos=algos,
        base=base,
        reference=_reference(network, model, base),
        dora=dora,
        note=note,
    )


def _base_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def _build_generic(out_dir: Path, name: str, spec: dict) -> ParityCase:
    spec = dict(spec)
    dtype = spec.pop("save_dtype", torch.float32)
    note = spec.pop("note", "")
    model = tiny_model()
    base = _base_of(model)
    network = _wrap(model, **spec)
    network.eval()
    assert network.loras, f"{name}: no module wrapped"
    _randomise(network, torch.Generator().manual_seed(_seed(name)))
    network.apply_to()
    return _case_from_network(name, out_dir / f"{name}.safetensors", network, model, base, dtype=dtype, note=note)


_ALL = ("Linear", "Conv2d")
_NORMS = ("LayerNorm", "GroupNorm")

# name -> create_lycoris arguments (plus targets / algo maps / save dtype)
GENERIC_CASES: dict[str, dict] = {
    # LoRA / LoCon
    "lycoris-locon": dict(algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0),
    "lycoris-locon-tucker": dict(
        algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=3.0, use_tucker=True
    ),
    "lycoris-locon-scalar": dict(
        algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, use_scalar=True, save_dtype=None
    ),
    "lycoris-locon-alpha0": dict(algo="lora", linear_dim=4, linear_alpha=0, conv_dim=8, conv_alpha=0),
    "lycoris-locon-rslora": dict(
        algo="lora",
        linear_dim=4,
        linear_alpha=2.0,
        conv_dim=4,
        conv_alpha=1.0,
        module_algo_map={"Linear": {"algo": "lora", "rs_lora": True}, "Conv2d": {"algo": "lora", "rs_lora": True}},
    ),
    # LoHa
    "lycoris-loha": dict(algo="loha", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0),
    "lycoris-loha-tucker": dict(
        algo="loha", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=3.0, use_tucker=True
    ),
    # LoKr (shapes: see the spec's factorization table; conv1 1x1 ends up full/full in the plain case)
    "lycoris-lokr": dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0),
    "lycoris-lokr-factor4": dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0, factor=4),
    # factor 8 gives the same shapes as the default (-1) for these dims; factor 16 gives different ones
    "lycoris-lokr-factor8": dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0, factor=8),
    "lycoris-lokr-factor16": dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0, factor=16),
    "lycoris-lokr-decompose-both": dict(
        algo="lokr", linear_dim=2, linear_alpha=1.0, conv_dim=2, conv_alpha=4.0, decompose_both=True
    ),
    "lycoris-lokr-tucker": dict(
        algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0, use_tucker=True
    ),
    "lycoris-lokr-full-matrix": dict(
        algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0, full_matrix=True
    ),
    "lycoris-lokr-unbalanced": dict(
        algo="lokr", linear_dim=2, linear_alpha=1.0, conv_dim=2, conv_alpha=1.0, unbalanced_factorization=True
    ),
    # DoRA on both axes
    "lycoris-locon-dora-out": dict(
        algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, dora_wd=True, wd_on_output=True
    ),
    "lycoris-locon-dora-in": dict(
        algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, dora_wd=True, wd_on_output=False
    ),
    "lycoris-loha-dora-out": dict(
        algo="loha", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, dora_wd=True, wd_on_output=True
    ),
    "lycoris-loha-dora-in": dict(
        algo="loha",
        linear_dim=4,
        linear_alpha=2.0,
        conv_dim=4,
        conv_alpha=1.0,
        use_tucker=True,
        dora_wd=True,
        wd_on_output=False,
    ),
    "lycoris-lokr-dora-out": dict(
        algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0, dora_wd=True, wd_on_output=True
    ),
    "lycoris-lokr-dora-in": dict(
        algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=2, conv_alpha=1.0, dora_wd=True, wd_on_output=False
    ),
    # diag-OFT (lora_dim 8 -> block size 8/8/6/4 for out 96/64/48/32); constraint 0.01 is active on every layer
    "lycoris-oft": dict(algo="diag-oft", linear_dim=8, conv_dim=8),
    "lycoris-oft-constraint": dict(algo="diag-oft", linear_dim=8, conv_dim=8, constraint=0.01),
    "lycoris-oft-rescaled": dict(algo="diag-oft", linear_dim=8, conv_dim=8, rescaled=True),
    "lycoris-oft-constraint-rescaled": dict(algo="diag-oft", linear_dim=8, conv_dim=8, constraint=0.01, rescaled=True),
    # BOFT (lora_dim 8 -> (bs, n) = (6,16)/(8,8)/(6,8)/(8,4), 5/4/4/3 stages)
    "lycoris-boft": dict(algo="boft", linear_dim=8, conv_dim=8),
    "lycoris-boft-constraint": dict(algo="boft", linear_dim=8, conv_dim=8, constraint=0.01),
    "lycoris-boft-rescaled": dict(algo="boft", linear_dim=8, conv_dim=8, rescaled=True),
    "lycoris-boft-constraint-rescaled": dict(algo="boft", linear_dim=8, conv_dim=8, constraint=0.01, rescaled=True),
    # GLoRA (saved without a dtype cast: the int linear alpha 1 stays an int64 scalar in the file)
    "lycoris-glora": dict(algo="glora", linear_dim=4, linear_alpha=1, conv_dim=4, conv_alpha=2.0, save_dtype=None),
    # IA3 (saved without a dtype cast: on_input stays int64)
    "lycoris-ia3": dict(algo="ia3", linear_dim=4, save_dtype=None),
    "lycoris-ia3-on-input": dict(
        algo="ia3",
        linear_dim=4,
        save_dtype=None,
        module_algo_map={
            "Linear": {"algo": "ia3", "train_on_input": True},
            "Conv2d": {"algo": "ia3", "train_on_input": True},
        },
    ),
    # full (diff + diff_b where the layer has a bias)
    "lycoris-full": dict(algo="full", linear_dim=4),
    # norm (w_norm / b_norm on LayerNorm and GroupNorm)
    "lycoris-norm": dict(algo="lora", targets=_NORMS, train_norm=True),
    # one file, several algorithms (class map + name map + train_norm)
    "lycoris-mixed": dict(
        algo="lora",
        linear_dim=4,
        linear_alpha=2.0,
        conv_dim=4,
        conv_alpha=1.0,
        train_norm=True,
        targets=_ALL + _NORMS,
        module_algo_map={"Linear": {"algo": "loha"}},
        name_algo_map={
            "fc2": {"algo": "ia3"},
            "conv3": {"algo": "lokr", "dim": 2, "use_tucker": True},
            "conv1": {"algo": "full"},
        },
    ),
    # reduced-precision files (reference from the rounded tensors; alphas are exact in the save dtype)
    "lycoris-mixed-bf16": dict(
        algo="lora",
        linear_dim=4,
        linear_alpha=2.0,
        conv_dim=4,
        conv_alpha=1.0,
        train_norm=True,
        targets=_ALL + _NORMS,
        dora_wd=True,
        save_dtype=torch.bfloat16,
        name_algo_map={
            "fc2": {"algo": "lokr"},
            "conv3": {"algo": "loha", "use_tucker": True},
            "conv1": {"algo": "glora"},
        },
    ),
    "lycoris-loha-fp16": dict(
        algo="loha", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, save_dtype=torch.float16
    ),
    "lycoris-oft-boft-fp16": dict(
        algo="diag-oft",
        linear_dim=8,
        conv_dim=8,
        rescaled=True,
        save_dtype=torch.float16,
        name_algo_map={"fc2": {"algo": "boft"}, "conv1": {"algo": "boft"}},
    ),
}


def _derive(case: ParityCase, out_dir: Path, name: str, transform, rename=None, note: str = "") -> ParityCase:
    """A variant of a case's file with the same math (keys renamed / alpha re-typed), same reference."""
    sd = load_file(str(case.path))
    new = transform(sd)
    path = out_dir / f"{name}.safetensors"
    save_file(new, str(path), {"lyco_oracle_case": name})
    rename = rename or (lambda n: n)
    return ParityCase(
        name=name,
        path=path,
        layout=case.layout,
        algos={rename(k): v for k, v in case.algos.items()},
        base=case.base,
        reference=case.reference,
        dora={rename(k): v for k, v in case.dora.items()},
        note=note,
    )


def _build_kohya(out_dir: Path, name: str, **kwargs) -> ParityCase:
    from lycoris.config import PRESET
    from lycoris.kohya import LycorisNetworkKohya, create_network

    LycorisNetworkKohya.apply_preset(PRESET["full"])  # create_network re-applies it; reset maps left by others
    LycorisNetworkKohya.MODULE_ALGO_MAP, LycorisNetworkKohya.NAME_ALGO_MAP = {}, {}
    LycorisNetworkKohya.TARGET_EXCLUDE_NAME, LycorisNetworkKohya.USE_FNMATCH = [], False
    unet = toy_unet()
    base = _base_of(unet)
    network = create_network(
        1.0, kwargs.pop("network_dim"), kwargs.pop("network_alpha"), None, None, unet, warn_on_unmatched=False, **kwargs
    )
    network.eval()
    _randomise(network, torch.Generator().manual_seed(_seed(name)))
    network.apply_to(None, unet, apply_text_encoder=False, apply_unet=True)
    metadata = {"ss_network_module": "lycoris.kohya", "ss_network_dim": "4", "ss_network_alpha": "2.0"}
    return _case_from_network(name, out_dir / f"{name}.safetensors", network, unet, base, metadata=metadata)


DERIVED_CASES = ("lycoris-locon-alpha-zero-stored", "lycoris-locon-alpha-missing", "lycoris-locon-legacy-2x-names")
KOHYA_CASES = ("kohya-unet-locon", "kohya-unet-lokr")
CASE_NAMES: tuple[str, ...] = (*GENERIC_CASES, *DERIVED_CASES, *KOHYA_CASES)


def build_lycoris_cases(out_dir: Path) -> list[ParityCase]:
    """Build every LyCORIS reference case under ``out_dir`` (fast: a few seconds on CPU)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_probe()
    cases: list[ParityCase] = []
    with _quiet_lycoris():
        for name, spec in GENERIC_CASES.items():
            cases.append(_build_generic(out_dir, name, spec))
        by_name = {c.name: c for c in cases}

        # alpha == 0 written to the file and alpha missing altogether both mean alpha := rank (scale 1)
        alpha0 = by_name["lycoris-locon-alpha0"]
        cases.append(
            _derive(
                alpha0,
                out_dir,
                "lycoris-locon-alpha-zero-stored",
                lambda sd: {k: (torch.zeros_like(v) if k.endswith(".alpha") else v) for k, v in sd.items()},
                note="derived from lycoris-locon-alpha0 (alpha == rank) by writing alpha = 0",
            )
        )
        cases.append(
            _derive(
                alpha0,
                out_dir,
                "lycoris-locon-alpha-missing",
                lambda sd: {k: v for k, v in sd.items() if not k.endswith(".alpha")},
                note="derived from lycoris-locon-alpha0 (alpha == rank) by dropping the alpha keys",
            )
        )

        # LyCORIS 2.x generic wrapper naming: trailing "_" after a leaf module target, int64 alpha
        def legacy(sd):
            out = {}
            for k, v in sd.items():
                mod, rest = k.split(".", 1)
                if rest == "alpha":
                    assert float(v) == int(float(v))
                    v = torch.tensor(int(float(v)), dtype=torch.int64)
                out[f"{mod}_.{rest}"] = v
            return out

        cases.append(
            _derive(
                by_name["lycoris-locon"],
                out_dir,
                "lycoris-locon-legacy-2x-names",
                legacy,
                rename=lambda n: n + "_",
                note="derived from lycoris-locon: LyCORIS 2.x names (lycoris_fc1_) and int64 alpha",
            )
        )

        # kohya entry point, diffusers-like nested names under lora_unet_
        cases.append(
            _build_kohya(
                out_dir, "kohya-unet-locon", network_dim=4, network_alpha=2.0, conv_dim=4, conv_alpha=1.0, algo="lora"
            )
        )
        cases.append(
            _build_kohya(
                out_dir,
                "kohya-unet-lokr",
                network_dim=4,
                network_alpha=2.0,
                conv_dim=2,
                conv_alpha=1.0,
                algo="lokr",
                use_tucker=True,
            )
        )
    assert tuple(c.name for c in cases) == CASE_NAMES
    return cases


# ------------------------------------------------------------------------------------------------ caveat pin
def loha_merge_vs_forward() -> tuple[torch.Tensor, torch.Tensor, float]:
    """(library merge delta, library forward delta, alpha/r) for one LoHa Linear with alpha != r.

    The spec (§3 ‡, §5.1) says ``get_diff_weight``/``merge_to`` apply alpha/r twice for LoHa; then
    merge delta == forward delta * alpha/r.
    """
    with _quiet_lycoris():
        model = tiny_model()
        base_w = model.fc1.weight.detach().clone()
        network = _wrap(model, targets=("Linear",), algo="loha", linear_dim=4, linear_alpha=2.0)
        network.eval()
        _randomise(network, torch.Generator().manual_seed(7))
        network.apply_to()
        lora = next(lo for lo in network.loras if lo.lora_name == "lycoris_fc1")
        with torch.no_grad():
            merge_delta = lora.get_diff_weight(1.0)[0].detach().clone()
            w, _ = probe_layer(model.fc1)
        return merge_delta, w - base_w, float(lora.scale)
