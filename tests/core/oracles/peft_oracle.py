"""Reference oracle for PEFT-layout and diffusers-in-PEFT adapters, built with the real ``peft`` library.

Every case wraps a tiny seeded model with a real PEFT tuner, replaces the (zero-delta) default initialisation by
seeded random adapter values, saves the adapter the way PEFT / diffusers do, and records what PEFT's own merge
(``merge_and_unload`` or layer ``merge()``) makes of the base weights:

* LoRA / LoHa / LoKr (DoRA included): strengths 1.0, 0.6 and -0.5 through PEFT's own scale hook (``set_scale``
  multiplies the layer ``scaling``), then merge.
* OFT / BOFT / IA3: PEFT has no strength, so the reference exists at 1.0 only.

Old PEFT OFT formats (``oft_r`` with/without ``oft_s``, PEFT <= 0.15) cannot be produced by the installed PEFT and are
not built here.

BOFT note: PEFT tries to compile a CUDA extension when a BOFT layer is created and silently falls back to one
butterfly factor when that fails. To keep the oracle fast and the same on every machine, the extension slot is
filled for the duration of the build: with ``False`` (the CPU fallback, N = 1) or with a pure-torch block-diagonal
stand-in (so ``boft_n_butterfly_factor = 2`` really gives two factors). The file's ``boft_R.shape[0]`` is the truth.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .common import ParityCase

SCALED_STRENGTHS = (1.0, 0.6, -0.5)
UNIT_STRENGTH = (1.0,)
TARGETS = ["fc1", "fc2", "conv3", "conv1"]
BASE_SEED = 1234

# Names of the cases build_peft_cases() returns, in order (static, so tests can parametrise without building).
CASE_NAMES = (
    "peft-lora",
    "peft-lora-rslora",
    "peft-lora-patterns",
    "peft-lora-bias",
    "peft-dora",
    "peft-dora-rslora-file-path",
    "peft-lora-bare-file",
    "peft-loha",
    "peft-loha-tucker",
    "peft-lokr",
    "peft-lokr-decompose-both",
    "peft-lokr-tucker",
    "peft-lokr-full-full",
    "peft-oft-exact",
    "peft-oft-neumann",
    "peft-oft-neumann-t3",
    "peft-oft-neumann-t8",
    "peft-oft-coft",
    "peft-oft-coft-neumann",
    "peft-oft-block-share",
    "peft-oft-r",
    "peft-boft-cpu-fallback",
    "peft-boft-butterfly2",
    "peft-boft-block-num",
    "peft-ia3",
    "diffusers-lora",
    "diffusers-dora",
    "diffusers-lora-converted",
)

# Parameter names PEFT writes after the module path (adapter name already removed).
_PARAM_SUFFIXES = {
    "lora_A.weight": "lora",
    "lora_B.weight": "lora",
    "lora_B.bias": "lora",
    "lora_magnitude_vector": "lora",
    "lora.down.weight": "lora",
    "lora.up.weight": "lora",
    "lora_linear_layer.down.weight": "lora",
    "lora_linear_layer.up.weight": "lora",
    "hada_w1_a": "loha",
    "hada_w1_b": "loha",
    "hada_w2_a": "loha",
    "hada_w2_b": "loha",
    "hada_t1": "loha",
    "hada_t2": "loha",
    "lokr_w1": "lokr",
    "lokr_w1_a": "lokr",
    "lokr_w1_b": "lokr",
    "lokr_w2": "lokr",
    "lokr_w2_a": "lokr",
    "lokr_w2_b": "lokr",
    "lokr_t2": "lokr",
    "oft_R.weight": "oft",
    "boft_R": "boft",
    "boft_s": "boft",
    "ia3_l": "ia3",
}


class TinyNet(nn.Module):
    """The spec's reference model: two Linear and two Conv2d layers, all with a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 64)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.conv1 = nn.Conv2d(48, 32, 1)

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc2(self.fc1(x)), self.conv1(self.conv3(img))


def _tiny_model() -> TinyNet:
    torch.manual_seed(BASE_SEED)
    return TinyNet().float()


def _fp32_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to(torch.float32).clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------------
# randomisation of the adapter parameters (PEFT's default init gives a zero delta)


def _randomise(model: nn.Module, seed: int, *, factor_std: float = 0.1) -> None:
    """Give every adapter parameter of ``model`` a seeded non-trivial value (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    magnitudes = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".base_layer." in name:
                continue
            if "lora_magnitude_vector" in name:
                magnitudes.append(name)
            elif ".lora_A." in name or ".lora_B." in name:
                param.copy_(normal(param.shape, factor_std))
            elif ".hada_" in name or ".lokr_" in name:
                param.copy_(normal(param.shape, factor_std))
            elif ".oft_R." in name or ".boft_R." in name:
                param.copy_(normal(param.shape, 0.05))
            elif ".boft_s." in name:
                param.copy_(1.0 + normal(param.shape, 0.1))
            elif ".ia3_l." in name:
                uniform = torch.rand(param.shape, generator=gen, dtype=torch.float32)
                param.copy_(1.0 + 0.2 * (2.0 * uniform - 1.0))
        if magnitudes:
            # magnitude = ||W||_row * (1 + noise): DoRA then rescales every row of W + dW to a known norm.
            for _, module in model.named_modules():
                if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_magnitude_vector"):
                    for mag_layer in module.lora_magnitude_vector.values():
                        weight = module.get_base_layer().weight
                        row_norm = weight.reshape(weight.shape[0], -1).norm(dim=1)
                        noise = 1.0 + normal(row_norm.shape, 0.1)
                        mag_layer.weight.copy_((row_norm * noise).reshape(mag_layer.weight.shape))


# --------------------------------------------------------------------------------------------------------------
# PEFT's own merge, optionally scaled through PEFT's strength hook


def _apply_scale(model: nn.Module, strength: float) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    if strength == 1.0:
        return
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            # LoRA: scaling = m * alpha / r (or / sqrt(r) with rslora); LoHa/LoKr: scaling = m * alpha / r.
            module.set_scale("default", strength)


def _merged_peft_model(peft_model: nn.Module, strength: float) -> dict[str, torch.Tensor]:
    work = copy.deepcopy(peft_model)
    _apply_scale(work, strength)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = work.merge_and_unload()
    return _fp32_state(merged)


def _merged_layers(model: nn.Module, strength: float, prefix: str = "") -> dict[str, torch.Tensor]:
    """Layer-wise ``merge()`` for models adapted in place (``inject_adapter_in_model`` / ``add_adapter``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    work = copy.deepcopy(model)
    _apply_scale(work, strength)
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, module in work.named_modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
                base = module.get_base_layer()
                out[f"{prefix}{name}.weight"] = base.weight.detach().to(torch.float32).clone()
                if getattr(base, "bias", None) is not None:
                    out[f"{prefix}{name}.bias"] = base.bias.detach().to(torch.float32).clone()
    return out


def _changed(merged: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in merged.items():
        if key not in base:
            raise KeyError(f"merged key {key!r} is not in the base state dict")
        if value.shape != base[key].shape:
            raise ValueError(f"merged {key!r} has shape {tuple(value.shape)}, base {tuple(base[key].shape)}")
        if not torch.equal(value, base[key]):
            out[key] = value
    if not out:
        raise RuntimeError("the PEFT merge changed nothing: the adapter was not randomised")
    return out


# --------------------------------------------------------------------------------------------------------------
# what the saved file holds


def _file_modules(file: Path) -> dict[str, str]:
    """{module name as written in the file: algo} from the tensor names of a saved adapter."""
    from safetensors import safe_open

    modules: dict[str, str] = {}
    with safe_open(str(file), "pt") as handle:
        keys = list(handle.keys())
    for key in keys:
        for suffix, algo in _PARAM_SUFFIXES.items():
            if key.endswith("." + suffix):
                name = key[: -len(suffix) - 1]
                if modules.setdefault(name, algo) != algo:
                    raise ValueError(f"{name!r} holds tensors of two methods")
                break
        else:
            raise ValueError(f"unexpected tensor {key!r} in {file}")
    return modules


def _dora_flags(file: Path, modules: dict[str, str]) -> dict[str, bool]:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as handle:
        keys = set(handle.keys())
    return {name: f"{name}.lora_magnitude_vector" in keys for name, algo in modules.items() if algo == "lora"}


# --------------------------------------------------------------------------------------------------------------
# BOFT's CUDA-extension slot


class _BlockDiagStandIn:
    """Pure-torch stand-in for PEFT's ``fbd_cuda`` extension: (N, D, H, H) -> [(N, D*H, D*H)]."""

    @staticmethod
    def forward(blocks: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([torch.block_diag(*factor.unbind(0)) for factor in blocks.unbind(0)])]

    @staticmethod
    def backward(grad_output: torch.Tensor, blocks: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        n, d, h, _ = blocks.shape
        grads = torch.stack(
            [
                torch.stack([g[i * h : (i + 1) * h, i * h : (i + 1) * h] for i in range(d)])
                for g in grad_output.unbind(0)
            ]
        )
        return [grads.reshape(n, d, h, h)]


@contextlib.contextmanager
def _boft_extension(stand_in: bool):
    import peft.tuners.boft.layer as boft_layer

    saved = boft_layer._FBD_CUDA
    boft_layer._FBD_CUDA = _BlockDiagStandIn() if stand_in else False
    try:
        yield
    finally:
        boft_layer._FBD_CUDA = saved


# --------------------------------------------------------------------------------------------------------------
# case builders


def _peft_case(
    out_dir: Path,
    name: str,
    config,
    seed: int,
    strengths: tuple[float, ...],
    *,
    factor_std: float = 0.1,
    depth: int = 8,
    steps: int = 2,
    note: str = "",
    path_is_file: bool = False,
    boft_stand_in: bool | None = None,
) -> ParityCase:
    from peft import get_peft_model

    folder = out_dir / name
    ctx = _boft_extension(boft_stand_in) if boft_stand_in is not None else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _tiny_model()
        base = _fp32_state(model)
        peft_model = get_peft_model(model, config)
        _randomise(peft_model, seed, factor_std=factor_std)
        peft_model.save_pretrained(str(folder))
        reference = {m: _changed(_merged_peft_model(peft_model, m), base) for m in strengths}
    file = folder / "adapter_model.safetensors"
    modules = _file_modules(file)
    return ParityCase(
        name=name,
        path=file if path_is_file else folder,
        layout="peft",
        algos=modules,
        base=base,
        reference=reference,
        dora=_dora_flags(file, modules),
        key_map=None,
        depth=depth,
        steps=steps,
        note=note,
    )


def _bare_peft_case(out_dir: Path) -> ParityCase:
    """``inject_adapter_in_model`` + ``get_peft_model_state_dict``: no ``base_model.model.`` prefix."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    name = "peft-lora-bare-file"
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS, lora_bias=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _tiny_model()
        base = _fp32_state(model)
        model = inject_adapter_in_model(config, model)
        _randomise(model, 1111)
        state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        file = folder / "adapter_model.safetensors"
        save_file(state, str(file), metadata={"format": "pt"})
        config.save_pretrained(str(folder))
        reference = {m: _changed(_merged_layers(model, m), base) for m in SCALED_STRENGTHS}
    modules = _file_modules(file)
    if any(n.startswith("base_model.") for n in modules):
        raise AssertionError("bare state dict unexpectedly prefixed")
    return ParityCase(
        name=name,
        path=file,
        layout="peft",
        algos=modules,
        base=base,
        reference=reference,
        dora=_dora_flags(file, modules),
        key_map=None,
        depth=4,  # rank 4, B·A
        steps=1,
    )


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(BASE_SEED + 1)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).float()


def _tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(BASE_SEED + 2)
    config = CLIPTextConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=1000,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config).float()


def _diffusers_case(out_dir: Path, name: str, seed: int, *, dora: bool, converted: bool = False) -> ParityCase:
    """UNet + CLIP text encoder adapted with ``add_adapter`` and saved by ``save_lora_weights``.

    ``converted`` additionally passes the state dicts through diffusers' ``convert_state_dict_to_diffusers`` the
    way several diffusers training scripts do (``lora.down``/``lora.up`` and ``lora_linear_layer.down``/``up``).
    """
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = out_dir / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = _tiny_unet()
        text_encoder = _tiny_text_encoder()
        base = {**_fp32_state(unet, "unet."), **_fp32_state(text_encoder, "text_encoder.")}
        unet.add_adapter(
            LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], use_dora=dora)
        )
        text_encoder.add_adapter(
            LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], use_dora=dora)
        )
        _randomise(unet, seed)
        _randomise(text_encoder, seed + 1)
        unet_layers = get_peft_model_state_dict(unet)
        te_layers = get_peft_model_state_dict(text_encoder)
        if converted:
            from diffusers.utils import convert_state_dict_to_diffusers

            unet_layers = convert_state_dict_to_diffusers(unet_layers)
            te_layers = convert_state_dict_to_diffusers(te_layers)
        StableDiffusionPipeline.save_lora_weights(
            str(folder),
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=te_layers,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict(),
        )
        reference = {}
        for m in SCALED_STRENGTHS:
            merged = {**_merged_layers(unet, m, "unet."), **_merged_layers(text_encoder, m, "text_encoder.")}
            reference[m] = _changed(merged, base)
    file = folder / "pytorch_lora_weights.safetensors"
    modules = _file_modules(file)
    return ParityCase(
        name=name,
        path=file,
        layout="diffusers",
        algos=modules,
        base=base,
        reference=reference,
        dora=_dora_flags(file, modules),
        key_map=None,
        depth=64,  # rank 4; DoRA's norm reduces over a fan-in ≤ 64 (block_out_channels, CLIP hidden 32)
        steps=2,
    )


def build_peft_cases(out_dir: Path) -> list[ParityCase]:
    """Build every PEFT / diffusers-in-PEFT parity case under ``out_dir`` (one folder per case)."""
    from peft import BOFTConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    S, U = SCALED_STRENGTHS, UNIT_STRENGTH
    # Rounding bound per case: delta_agreement = 2ε·(max|W'|/max|ΔW| + steps·depth) (ParityCase.tol). depth: the
    # rank (LoRA, LoHa, LoKr), the OFT/BOFT block size (oft-r and boft-block-num: conv3's 32·3·3 / 4 = 72), a DoRA
    # norm's fan-in (conv3: 32·3·3 = 288); steps: B·A (1); LoHa's two products multiplied (2), with Tucker cores
    # (4); LoKr's w2 = a·b and the Kronecker product (2, 3 with decompose_both, 4 with Tucker); OFT's Cayley
    # solve or its t Neumann terms, then R·W (2, or t + 1); BOFT's butterfly stages between them (3 or 4).
    coft_note = (
        "coft projects every block's Q onto a ball of radius eps: one more step (a norm over the block, a rescale), "
        "so steps = Cayley (1, or t Neumann terms) + projection (1) + R·W (1). Its delta is then tiny against W "
        "(max|W'|/max|ΔW| ≈ 16 for eps 0.1, ≈ 340 for eps 5e-3), and rounding W' = W + ΔW alone costs "
        "2ε·max|W'|/max|ΔW| of the delta: 2ε·(340 + 7·16) ≈ 1.1e-4 for coft-neumann, where 1e-4 would not hold"
    )
    cases = [
        # ---- LoRA
        _peft_case(out_dir, "peft-lora", LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), 1, S, depth=4, steps=1),
        _peft_case(
            out_dir,
            "peft-lora-rslora",
            LoraConfig(r=8, lora_alpha=4, use_rslora=True, target_modules=TARGETS),
            2,
            S,
            depth=8,
            steps=1,
        ),
        _peft_case(
            out_dir,
            "peft-lora-patterns",
            LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules=TARGETS,
                rank_pattern={"fc1": 8, "conv3": 2},
                alpha_pattern={"fc2": 3, r"conv\d": 5},
            ),
            3,
            S,
            depth=8,
            steps=1,
        ),
        _peft_case(
            out_dir,
            "peft-lora-bias",
            LoraConfig(r=4, lora_alpha=4, lora_bias=True, target_modules=TARGETS),
            4,
            S,
            depth=4,
            steps=1,
        ),
        _peft_case(
            out_dir,
            "peft-dora",
            LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=TARGETS),
            5,
            S,
            depth=288,
            steps=2,
        ),
        _peft_case(
            out_dir,
            "peft-dora-rslora-file-path",
            LoraConfig(r=8, lora_alpha=16, use_dora=True, use_rslora=True, target_modules=["fc1", "conv3"]),
            6,
            S,
            path_is_file=True,
            depth=288,
            steps=2,
        ),
        _bare_peft_case(out_dir),
        # ---- LoHa
        _peft_case(
            out_dir,
            "peft-loha",
            LoHaConfig(r=4, alpha=8, target_modules=TARGETS),
            11,
            S,
            factor_std=0.3,
            depth=4,
            steps=2,
        ),
        _peft_case(
            out_dir,
            "peft-loha-tucker",
            LoHaConfig(
                r=4,
                alpha=2,
                use_effective_conv2d=True,
                target_modules=TARGETS,
                rank_pattern={"conv3": 3},
                alpha_pattern={"fc1": 5},
            ),
            12,
            S,
            factor_std=0.3,
            depth=4,
            steps=4,
        ),
        # ---- LoKr
        _peft_case(
            out_dir,
            "peft-lokr",
            LoKrConfig(r=2, alpha=3, target_modules=TARGETS),
            21,
            S,
            factor_std=0.2,
            depth=2,
            steps=2,
        ),
        _peft_case(
            out_dir,
            "peft-lokr-decompose-both",
            LoKrConfig(r=2, alpha=5, decompose_both=True, target_modules=TARGETS),
            22,
            S,
            factor_std=0.2,
            depth=2,
            steps=3,
        ),
        _peft_case(
            out_dir,
            "peft-lokr-tucker",
            LoKrConfig(r=2, alpha=1, decompose_both=True, use_effective_conv2d=True, target_modules=TARGETS),
            23,
            S,
            factor_std=0.3,
            depth=2,
            steps=4,
        ),
        # r=8 >= max(b, d)/2 everywhere and no decompose_both: both halves full; PEFT still scales by alpha/r.
        _peft_case(
            out_dir,
            "peft-lokr-full-full",
            LoKrConfig(r=8, alpha=4, target_modules=TARGETS),
            24,
            S,
            factor_std=0.2,
            depth=1,
            steps=1,
        ),
        # ---- OFT (>= 0.16 format: oft_R.weight)
        _peft_case(
            out_dir,
            "peft-oft-exact",
            OFTConfig(oft_block_size=8, use_cayley_neumann=False, target_modules=TARGETS),
            31,
            U,
            depth=8,
            steps=2,
        ),
        _peft_case(
            out_dir, "peft-oft-neumann", OFTConfig(oft_block_size=8, target_modules=TARGETS), 32, U, depth=8, steps=6
        ),
        _peft_case(
            out_dir,
            "peft-oft-neumann-t3",
            OFTConfig(oft_block_size=16, num_cayley_neumann_terms=3, target_modules=TARGETS),
            33,
            U,
            depth=16,
            steps=4,
        ),
        _peft_case(
            out_dir,
            "peft-oft-neumann-t8",
            OFTConfig(oft_block_size=8, num_cayley_neumann_terms=8, target_modules=TARGETS),
            34,
            U,
            depth=8,
            steps=9,
        ),
        _peft_case(
            out_dir,
            "peft-oft-coft",
            OFTConfig(oft_block_size=8, coft=True, eps=1e-1, use_cayley_neumann=False, target_modules=TARGETS),
            35,
            U,
            note=coft_note,
            depth=8,
            steps=3,
        ),
        _peft_case(
            out_dir,
            "peft-oft-coft-neumann",
            OFTConfig(oft_block_size=16, coft=True, eps=5e-3, target_modules=TARGETS),
            36,
            U,
            note=coft_note,
            depth=16,
            steps=7,
        ),
        _peft_case(
            out_dir,
            "peft-oft-block-share",
            OFTConfig(oft_block_size=8, block_share=True, use_cayley_neumann=False, target_modules=TARGETS),
            37,
            U,
            depth=8,
            steps=2,
        ),
        _peft_case(
            out_dir,
            "peft-oft-r",
            OFTConfig(r=4, oft_block_size=0, use_cayley_neumann=False, target_modules=TARGETS),
            38,
            U,
            depth=72,
            steps=2,
        ),
        # ---- BOFT
        _peft_case(
            out_dir,
            "peft-boft-cpu-fallback",
            BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2, target_modules=TARGETS),
            41,
            U,
            boft_stand_in=False,
            depth=8,
            steps=3,
        ),
        _peft_case(
            out_dir,
            "peft-boft-butterfly2",
            BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2, target_modules=TARGETS),
            42,
            U,
            boft_stand_in=True,
            depth=8,
            steps=4,
        ),
        _peft_case(
            out_dir,
            "peft-boft-block-num",
            BOFTConfig(boft_block_size=0, boft_block_num=4, target_modules=TARGETS),
            43,
            U,
            boft_stand_in=False,
            depth=72,
            steps=3,
        ),
        # ---- IA3
        _peft_case(
            out_dir,
            "peft-ia3",
            IA3Config(target_modules=TARGETS, feedforward_modules=["fc2", "conv1"]),
            51,
            U,
            depth=1,
            steps=1,
        ),
        # ---- diffusers-in-PEFT
        _diffusers_case(out_dir, "diffusers-lora", 61, dora=False),
        _diffusers_case(out_dir, "diffusers-dora", 62, dora=True),
        _diffusers_case(out_dir, "diffusers-lora-converted", 63, dora=False, converted=True),
    ]
    names = tuple(c.name for c in cases)
    if names != CASE_NAMES:
        raise AssertionError(f"CASE_NAMES is out of date: {names}")
    return cases
