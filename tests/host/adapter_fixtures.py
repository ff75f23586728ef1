"""Adapter files for real SD1.5 layers, made at test time by the real reference libraries, with their references.

Every fixture targets a handful of layers of the tiny SD1.5 checkpoint (``LAYERS``): each base weight is copied
into a standalone ``nn.Linear``/``nn.Conv2d``/norm layer inside a small container whose module paths are the
ComfyUI paths, so the names the libraries emit are the ones ComfyUI's key maps expect:

* LyCORIS (lycoris-lora 4.x): the container holds ``unet.<ldm path>`` and ``te.<CLIP path>``; wrapped with
  ``lycoris.create_lycoris`` under prefix ``lora`` and an explicit name list, the file's modules are
  ``lora_unet_input_blocks_1_1_…`` and ``lora_te_text_model_encoder_layers_0_…`` (kohya names). Every adapter
  tensor is set to seeded random values (the library's init gives a zero delta), the file is written by the
  network's own ``save_weights``, and the reference effective weight at each strength comes from the library's
  *training forward*: the weight (or weight delta) the forward hands to its functional op is recorded and then
  checked against the forward's output on a random input. ``get_diff_weight``/``merge_to`` are not used (they
  apply alpha/r twice for LoHa/LoKr).
* PEFT (peft 0.21.x): the container's module paths are the bare ComfyUI paths (``input_blocks.1.1.…``,
  ``text_model.encoder.…``), so ``save_pretrained`` writes ``base_model.model.<path>`` keys into a folder that
  ComfyUI lists as ``<folder>/adapter_model.safetensors``. Reference = PEFT's own merge (``merge_and_unload``):
  LoRA/DoRA/LoKr at strength m through PEFT's ``set_scale`` hook; IA3 with ``l → 1 + m(l − 1)`` written into the
  copy before merging; OFT (no strength in PEFT) as ``W + m·(W₁ − W)`` — exactly the rotation interpolated toward
  identity ``R_m = m·R + (1 − m)·I``, because the merged weight is linear in R.

No ComfyUI import here: the caller passes the base weights (fp32 copies of the model's tensors).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lycoris_random import randomise_lycoris
from tolerances import forward_agreement

STRENGTHS = (1.0, 0.6, -0.5)
UNET_PREFIX = "diffusion_model."
CLIP_PREFIX = "clip_l.transformer."


@dataclass(frozen=True)
class Layer:
    side: str  # "unet" | "clip"
    path: str  # module path inside the component (ldm UNet path / transformers CLIP path)
    kind: str  # "linear" | "conv" | "groupnorm" | "layernorm"
    label: str  # short name for reports

    @property
    def key(self) -> str:
        """ComfyUI state-dict key of the weight (UNet: BaseModel; CLIP: the cond_stage_model)."""
        return (UNET_PREFIX if self.side == "unet" else CLIP_PREFIX) + self.path + ".weight"

    @property
    def bias_key(self) -> str:
        return self.key[: -len("weight")] + "bias"

    @property
    def norm(self) -> bool:
        return self.kind in ("groupnorm", "layernorm")


_TB = "input_blocks.1.1.transformer_blocks.0."
_TE = "text_model.encoder.layers.0."
LAYERS: tuple[Layer, ...] = (
    Layer("unet", _TB + "attn1.to_q", "linear", "attn1.to_q"),  # 320x320, no bias
    Layer("unet", _TB + "attn2.to_k", "linear", "attn2.to_k"),  # 320x768 (cross-attention), no bias
    Layer("unet", _TB + "attn1.to_out.0", "linear", "attn1.to_out.0"),  # 320x320 + bias
    Layer("unet", _TB + "ff.net.0.proj", "linear", "ff.proj"),  # 2560x320 + bias (GEGLU proj)
    Layer("unet", "input_blocks.1.0.in_layers.2", "conv", "resnet conv3x3"),  # 320->320 3x3 + bias
    Layer("unet", "input_blocks.1.1.proj_in", "conv", "proj_in 1x1"),  # 320->320 1x1 + bias
    Layer("unet", "input_blocks.1.1.norm", "groupnorm", "GroupNorm"),  # GroupNorm(32, 320)
    Layer("unet", _TB + "norm1", "layernorm", "LayerNorm"),  # LayerNorm(320)
    Layer("clip", _TE + "self_attn.q_proj", "linear", "te q_proj"),  # 768x768 + bias
    Layer("clip", _TE + "self_attn.v_proj", "linear", "te v_proj"),
    Layer("clip", _TE + "self_attn.out_proj", "linear", "te out_proj"),
    Layer("clip", _TE + "mlp.fc1", "linear", "te fc1"),  # 3072x768 + bias
)
ADAPTER_LAYERS = tuple(layer for layer in LAYERS if not layer.norm)
NORM_LAYERS = tuple(layer for layer in LAYERS if layer.norm)
GROUPNORM_GROUPS = 32
FEEDFORWARD = (_TB + "ff.net.0.proj", _TE + "mlp.fc1")  # PEFT IA3 feed-forward modules (input-side gain)


@dataclass
class Fixture:
    name: str  # file stem / folder name
    family: str  # "lycoris" | "peft"
    method: str  # short description for the table
    lora_name: str = ""  # the name ComfyUI lists (set when copied into models/loras)
    path: Path | None = None
    layers: tuple[Layer, ...] = ()
    # reference[m][comfy key] = effective fp32 tensor for every weight/bias the adapter changes at strength m
    reference: dict[float, dict[str, torch.Tensor]] = field(default_factory=dict)
    note: str = ""


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------ containers
def make_layer(layer: Layer, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A standalone torch layer holding fp32 copies of one model layer's parameters."""
    w = weight.detach().to(torch.float32).clone()
    b = None if bias is None else bias.detach().to(torch.float32).clone()
    if layer.kind == "linear":  # skip_init: no random init of a tensor about to be overwritten
        mod = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=b is not None)
    elif layer.kind == "conv":
        k = w.shape[-1]
        mod = torch.nn.utils.skip_init(nn.Conv2d, w.shape[1], w.shape[0], k, padding=k // 2, bias=b is not None)
    elif layer.kind == "groupnorm":
        mod = nn.GroupNorm(GROUPNORM_GROUPS, w.shape[0])
    elif layer.kind == "layernorm":
        mod = nn.LayerNorm(w.shape[0])
    else:  # pragma: no cover
        raise ValueError(layer.kind)
    with torch.no_grad():
        mod.weight.copy_(w)
        if b is not None:
            mod.bias.copy_(b)
    return mod.eval()


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    parts = path.split(".")
    node = root
    for part in parts[:-1]:
        if part not in node._modules:
            node.add_module(part, nn.Module())
        node = node._modules[part]
    node.add_module(parts[-1], module)


def build_container(layers, base: dict[str, torch.Tensor], root_of) -> tuple[nn.Module, dict[str, Layer]]:
    """(container, {container path: Layer}); ``root_of(layer)`` gives the container path of a layer."""
    root = nn.Module()
    paths = {}
    for layer in layers:
        path = root_of(layer)
        _attach(root, path, make_layer(layer, base[layer.key], base.get(layer.bias_key)))
        paths[path] = layer
    return root.eval(), paths


# ------------------------------------------------------------------------------------------------ LyCORIS
_ALGO_STD = {
    "lora": 0.1,
    "loha": 0.25,
    "lokr": 0.2,
    "glora": 0.1,
    "diag-oft": 0.03,
    "boft": 0.03,
    "ia3": 0.2,
    "full": 0.02,
    "norm": 0.1,
}

# name -> (table label, create_lycoris kwargs); "layers" picks the target set, "save_dtype" the file dtype.
LYCORIS_SPECS: dict[str, tuple[str, dict]] = {
    "lyco_lora": (
        "LoRA / LoCon (linear, conv 3x3, 1x1)",
        dict(algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0),
    ),
    "lyco_locon_tucker": (
        "LoCon Tucker (lora_mid)",
        dict(algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=3.0, use_tucker=True),
    ),
    "lyco_loha": ("LoHa", dict(algo="loha", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0)),
    "lyco_loha_tucker": (
        "LoHa Tucker conv",
        dict(algo="loha", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=3.0, use_tucker=True),
    ),
    "lyco_lokr_factor4": (
        "LoKr factor 4",
        dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, factor=4),
    ),
    "lyco_lokr_decompose_both": (
        "LoKr decompose_both",
        dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=4.0, decompose_both=True),
    ),
    "lyco_lokr_tucker": (
        "LoKr Tucker conv (lokr_t2)",
        dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, use_tucker=True),
    ),
    "lyco_lokr_full_matrix": (
        "LoKr full_matrix (w1, w2 full)",
        dict(algo="lokr", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, full_matrix=True),
    ),
    "lyco_dora_out": (
        "DoRA (LoCon, wd_on_output=True)",
        dict(algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, dora_wd=True, wd_on_output=True),
    ),
    "lyco_dora_in": (
        "DoRA (LoCon, wd_on_output=False)",
        dict(algo="lora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=1.0, dora_wd=True, wd_on_output=False),
    ),
    "lyco_oft": ("diag-OFT", dict(algo="diag-oft", linear_dim=8, conv_dim=8)),
    "lyco_oft_constraint": (
        "diag-OFT constraint 1e-3",
        dict(algo="diag-oft", linear_dim=8, conv_dim=8, constraint=1e-3),
    ),
    "lyco_oft_rescaled": ("diag-OFT rescaled", dict(algo="diag-oft", linear_dim=8, conv_dim=8, rescaled=True)),
    "lyco_boft": ("BOFT", dict(algo="boft", linear_dim=16, conv_dim=16)),
    "lyco_glora": ("GLoRA", dict(algo="glora", linear_dim=4, linear_alpha=2.0, conv_dim=4, conv_alpha=2.0)),
    "lyco_ia3": ("IA3", dict(algo="ia3", linear_dim=4, save_dtype=None)),
    "lyco_full": ("full (diff, diff_b)", dict(algo="full", linear_dim=4)),
    "lyco_norm": ("norm (w_norm, b_norm)", dict(algo="lora", train_norm=True, layers="norm")),
}

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


@contextlib.contextmanager
def lycoris_preset(preset: dict):
    """LyCORIS' ``LycorisNetwork.apply_preset(preset)`` for the networks created inside; its class-level preset
    state (and its logger's level) restored afterwards."""
    from lycoris import LycorisNetwork
    from lycoris.logging import logger

    saved = {a: getattr(LycorisNetwork, a) for a in _NET_ATTRS}
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        LycorisNetwork.apply_preset(preset)
        yield
    finally:
        logger.setLevel(level)
        for a, v in saved.items():
            setattr(LycorisNetwork, a, v)


def _lycoris_preset(names: list[str]):
    """Target exactly ``names`` under prefix ``lora``."""
    return lycoris_preset(
        {
            "enable_conv": True,
            "target_module": [],
            "target_name": list(names),
            "module_algo_map": {},
            "name_algo_map": {},
            "lora_prefix": "lora",
            "use_fnmatch": False,
            "exclude_name": [],
        }
    )


def _lycoris_root(layer: Layer) -> str:
    return ("unet." if layer.side == "unet" else "te.") + layer.path


def _std_of(algo: str):
    """std of a module's random tensors: its algorithm's, or the norm one for norm layers any preset wraps."""
    return lambda lora: _ALGO_STD["norm" if type(lora).__name__ == "NormModule" else algo]


def _functional(layer: nn.Module, x, weight, bias):
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(
            x, weight, bias, stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
        )
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(x, layer.normalized_shape, weight, bias, layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(x, layer.num_groups, weight, bias, layer.eps)
    raise TypeError(type(layer).__name__)  # pragma: no cover


def _probe_input(layer: nn.Module, gen: torch.Generator) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return torch.randn(3, layer.in_features, generator=gen)
    if isinstance(layer, nn.Conv2d):
        return torch.randn(1, layer.in_channels, 5, 5, generator=gen)
    if isinstance(layer, nn.LayerNorm):
        return torch.randn(3, layer.normalized_shape[0], generator=gen)
    return torch.randn(1, layer.num_channels, 2, 2, generator=gen)


@torch.no_grad()
def effective_weight(
    lora, layer: nn.Module, w_base: torch.Tensor, b_base: torch.Tensor | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) the library's training forward effectively uses, at the network's current multiplier.

    The forward computes ``org(x) + op(x, ΔW, Δb)`` (or ``op(x, W', b')`` for ``full`` after ``apply_to``); the
    tensors handed to ``op`` are recorded, and the result is checked against the forward's own output.
    """
    calls = []
    real_op = lora.op

    def recorder(inp, *args, **kwargs):
        calls.append((args, kwargs))
        return real_op(inp, *args, **kwargs)

    lora.op = recorder
    try:
        x = _probe_input(layer, gen)
        y = layer(x)
    finally:
        lora.op = real_op
    assert len(calls) == 1, f"{lora.lora_name}: forward called its op {len(calls)} times"
    args, kwargs = calls[0]
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        w = kwargs.get("weight", args[0] if args else None)
        b = kwargs.get("bias", args[1] if len(args) > 1 else None)
    else:
        w, b = kwargs["weight"], kwargs.get("bias")
    w = w.detach().float()
    b = None if b is None else b.detach().float()

    as_delta = (w_base + w, b_base if b is None else (b if b_base is None else b_base + b))
    as_full = (w, b)
    scale = y.abs().max().item()
    errs = []
    for cand in (as_delta, as_full):
        y_c = _functional(layer, x, cand[0], cand[1])
        errs.append((y_c - y).abs().max().item() / scale)
    best = min(range(2), key=lambda i: errs[i])
    # two float32 forwards of the same weight (rounded once as W + ΔW, or LyCORIS' W·x plus its branch), each
    # reducing over n terms: the fan-in (Linear, Conv2d), a norm's group; the branch over n and a rank ≤ n
    if w_base.dim() > 1:
        n = w_base[0].numel()
    else:
        n = x[0].numel() // (layer.num_groups if isinstance(layer, nn.GroupNorm) else 1)
    assert errs[best] <= forward_agreement((n, n)), (
        f"{lora.lora_name}: recorded weight does not reproduce the forward ({errs})"
    )
    return (as_delta, as_full)[best]


def build_lycoris(out_dir: Path, name: str, base: dict[str, torch.Tensor]) -> Fixture:
    from lycoris import create_lycoris

    label, spec = LYCORIS_SPECS[name]
    spec = dict(spec)
    save_dtype = spec.pop("save_dtype", torch.float32)
    layers = NORM_LAYERS if spec.pop("layers", "adapter") == "norm" else ADAPTER_LAYERS
    container, paths = build_container(layers, base, _lycoris_root)
    with _lycoris_preset(list(paths)):
        network = create_lycoris(container, preset="full", warn_on_unmatched=False, **spec)
    network.eval()
    assert len(network.loras) == len(layers), f"{name}: wrapped {len(network.loras)} of {len(layers)} layers"
    randomise_lycoris(network, torch.Generator().manual_seed(seed_of(name)), _std_of(spec["algo"]), scalar=1.0)
    network.apply_to()
    path = out_dir / f"{name}.safetensors"
    network.save_weights(str(path), save_dtype, {"lyco_parity_fixture": name})

    by_id = {id(mod): p for p, mod in container.named_modules()}
    gen = torch.Generator().manual_seed(seed_of(name) + 1)
    reference: dict[float, dict[str, torch.Tensor]] = {}
    for m in STRENGTHS:
        network.set_multiplier(m)
        ref = {}
        for lora in network.loras:
            layer_mod = lora.org_module[0]
            layer = paths[by_id[id(layer_mod)]]
            w_base = base[layer.key].float()
            b_base = base[layer.bias_key].float() if layer.bias_key in base else None
            w, b = effective_weight(lora, layer_mod, w_base, b_base, gen)
            ref[layer.key] = w
            if b is not None and b_base is not None and not torch.equal(b, b_base):
                ref[layer.bias_key] = b
        reference[m] = ref
    network.set_multiplier(1.0)
    return Fixture(name=name, family="lycoris", method=label, path=path, layers=layers, reference=reference)


# ------------------------------------------------------------------------------------------------ PEFT
def _peft_root(layer: Layer) -> str:
    return layer.path


def _peft_config(name: str, targets: list[str]):
    from peft import IA3Config, LoKrConfig, LoraConfig, OFTConfig

    if name == "peft_lora":
        return "PEFT LoRA (lora_alpha 6, r 4)", LoraConfig(r=4, lora_alpha=6, target_modules=targets)
    if name == "peft_dora":
        return "PEFT DoRA (lora_alpha 8, r 4)", LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=targets)
    if name == "peft_lokr":
        return "PEFT LoKr (alpha 8, r 4)", LoKrConfig(r=4, alpha=8, target_modules=targets)
    if name == "peft_oft":
        return "PEFT OFT (block 16, Cayley-Neumann)", OFTConfig(r=0, oft_block_size=16, target_modules=targets)
    if name == "peft_ia3":
        ff = [t for t in targets if t in FEEDFORWARD]
        return "PEFT IA3", IA3Config(target_modules=targets, feedforward_modules=ff)
    raise KeyError(name)


PEFT_NAMES = ("peft_lora", "peft_dora", "peft_lokr", "peft_oft", "peft_ia3")


@torch.no_grad()
def _randomise_peft(model: nn.Module, gen: torch.Generator) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    for pname, p in model.named_parameters():
        if ".base_layer." in pname or "lora_magnitude_vector" in pname:
            continue
        if ".lora_A." in pname or ".lora_B." in pname or ".lokr_" in pname:
            p.copy_(normal(p.shape, 0.1))
        elif ".oft_R." in pname:
            p.copy_(normal(p.shape, 0.05))
        elif ".ia3_l." in pname:
            p.copy_(1.0 + 0.2 * (2.0 * torch.rand(p.shape, generator=gen) - 1.0))
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_magnitude_vector"):
            for mag in module.lora_magnitude_vector.values():
                weight = module.get_base_layer().weight
                row_norm = weight.reshape(weight.shape[0], -1).norm(dim=1)
                mag.weight.copy_((row_norm * (1.0 + normal(row_norm.shape, 0.1))).reshape(mag.weight.shape))


def _merged(peft_model: nn.Module, name: str, strength: float, paths: dict[str, Layer]) -> dict[str, torch.Tensor]:
    """PEFT's own merge of a copy (LoRA/DoRA/LoKr scaled by ``set_scale``; IA3 with l → 1 + m(l − 1))."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    work = copy.deepcopy(peft_model)
    if strength != 1.0:
        for module in work.modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            if name == "peft_ia3":
                for gain in module.ia3_l.values():
                    gain.data.copy_(1.0 + strength * (gain.data - 1.0))
            else:
                module.set_scale("default", strength)
    merged = work.merge_and_unload()
    out = {}
    for path, layer in paths.items():
        mod = merged.get_submodule(path)
        out[layer.key] = mod.weight.detach().float().clone()
        if mod.bias is not None:
            out[layer.bias_key] = mod.bias.detach().float().clone()
    return out


def build_peft(out_dir: Path, name: str, base: dict[str, torch.Tensor]) -> Fixture:
    from peft import get_peft_model

    layers = ADAPTER_LAYERS
    container, paths = build_container(layers, base, _peft_root)
    label, config = _peft_config(name, list(paths))
    folder = out_dir / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(container, config)
        _randomise_peft(peft_model, torch.Generator().manual_seed(seed_of(name)))
        peft_model.save_pretrained(str(folder))
        if name == "peft_oft":
            one = _merged(peft_model, name, 1.0, paths)
            merged = {m: {k: base[k].float() + m * (v - base[k].float()) for k, v in one.items()} for m in STRENGTHS}
        else:
            merged = {m: _merged(peft_model, name, m, paths) for m in STRENGTHS}
    reference = {m: {k: v for k, v in ref.items() if not torch.equal(v, base[k].float())} for m, ref in merged.items()}
    for m, ref in reference.items():
        assert all(layer.key in ref for layer in layers), f"{name}: PEFT merge left a layer unchanged at {m}"
    return Fixture(
        name=name,
        family="peft",
        method=label,
        path=folder / "adapter_model.safetensors",
        layers=layers,
        reference=reference,
    )


def build_all(out_dir: Path, base: dict[str, torch.Tensor]) -> list[Fixture]:
    out_dir.mkdir(parents=True, exist_ok=True)
    fixtures = [build_lycoris(out_dir, name, base) for name in LYCORIS_SPECS]
    fixtures += [build_peft(out_dir, name, base) for name in PEFT_NAMES]
    return fixtures
