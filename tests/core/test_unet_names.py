"""Diffusers-named adapters on LDM-keyed checkpoints and back (lyco_core/aliases): the table checked against
diffusers' own LDM converter on tiny SD1.x- and SDXL-shaped UNets, matching of every weight in both spellings, the
CLI (bake, to-lora --base, convert --base) on an LDM checkpoint against the same adapter on the diffusers-keyed
model, and the OpenCLIP text encoders of SDXL and SD2 (1:1 layers matched; q/k/v modules applied to their third of
the fused in_proj_weight/bias, checked against the same adapter baked on the HF-keyed encoder and re-fused)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import lyco_core
from lyco_core.aliases.unet import diffusers_to_ldm
from lyco_core.cli import main
from lyco_core.keymap import WeightIndex, WeightSlice, locate
from lyco_core.layouts.base import ModulePath
from lyco_core.naming import spelled

from tests.host.tolerances import delta_agreement

from .convert_fixtures import relative

LDM_ROOT = "model.diffusion_model."
SD1 = dict(
    block_out_channels=(16, 16, 32, 32),
    layers_per_block=2,
    cross_attention_dim=16,
    attention_head_dim=8,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SDXL = dict(
    block_out_channels=(16, 32, 32),
    layers_per_block=2,
    cross_attention_dim=16,
    attention_head_dim=8,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 2),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=8 * 6 + 16,
)
# modules of every kind (attention linears, 1x1 and 3x3 convs, shortcut, samplers, top-level layers)
MODULES = {
    "sd1": [
        "conv_in",
        "time_embedding.linear_1",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.1.proj_in",
        "down_blocks.1.resnets.0.conv1",
        "down_blocks.2.resnets.0.conv_shortcut",
        "down_blocks.2.downsamplers.0.conv",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.resnets.1.conv2",
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.1.resnets.2.time_emb_proj",
        "up_blocks.2.attentions.2.proj_out",
        "up_blocks.3.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "conv_out",
    ],
    "sdxl": [
        "conv_in",
        "add_embedding.linear_2",
        "down_blocks.0.resnets.1.conv2",
        "down_blocks.1.downsamplers.0.conv",
        "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_k",
        "down_blocks.1.resnets.0.conv_shortcut",
        "mid_block.attentions.0.transformer_blocks.1.ff.net.2",
        "up_blocks.0.attentions.2.proj_in",
        "up_blocks.1.upsamplers.0.conv",
        "up_blocks.2.resnets.0.norm1",
        "conv_norm_out",
    ],
}
# weights a full LDM checkpoint also holds that share names with the UNet's (VAE, text encoder)
OTHERS = {
    "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
    "first_stage_model.decoder.conv_out.weight": (3, 8, 3, 3),
    "first_stage_model.decoder.conv_norm_out.weight": (8,),
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
}


def _ldm_key(key: str, table: dict[str, str]) -> str:
    path, _, kind = key.rpartition(".")
    return f"{LDM_ROOT}{table[path]}.{kind}"


@dataclass
class TinyUNet:
    """A diffusers UNet's ``state`` (its own keys), the same tensors as a pipeline (``unet.`` keys) and as an LDM
    checkpoint (``ldm``, with a few VAE/text-encoder weights beside), our ``table`` {diffusers path: LDM path}."""

    name: str
    state: dict[str, torch.Tensor]
    ldm: dict[str, torch.Tensor]
    config: dict
    table: dict[str, str]

    @property
    def pipeline(self) -> dict[str, torch.Tensor]:
        return {"unet." + key: value for key, value in self.state.items()}

    def as_ldm(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``unet.``-keyed tensors under their LDM keys."""
        return {_ldm_key(key[len("unet.") :], self.table): value for key, value in tensors.items()}


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def unet(request) -> TinyUNet:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(7)
    model = UNet2DConditionModel(sample_size=8, **(SD1 if request.param == "sd1" else SDXL))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    table = diffusers_to_ldm({key.rpartition(".")[0] for key in state})
    ldm = {_ldm_key(key, table): tensor for key, tensor in state.items()}
    gen = torch.Generator().manual_seed(8)
    ldm.update({key: torch.randn(shape, generator=gen) for key, shape in OTHERS.items()})
    return TinyUNet(request.param, state, ldm, dict(model.config), table)


def _saved(tmp_path_factory, name: str, **states: dict[str, torch.Tensor]):
    """A new folder holding each state dict as ``<keyword>.safetensors``."""
    folder = tmp_path_factory.mktemp(name)
    for stem, state in states.items():
        save_file(state, str(folder / f"{stem}.safetensors"))
    return folder


@pytest.fixture(scope="module")
def files(unet, tmp_path_factory):
    return _saved(tmp_path_factory, f"unet_{unet.name}", diffusers=unet.pipeline, ldm=unet.ldm)


def test_table_agrees_with_diffusers_converter(unet):
    """diffusers' LDM → diffusers converter takes our LDM dict back to every diffusers key, tensor for tensor."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    back = convert_ldm_unet_checkpoint(unet.ldm, unet.config)
    assert set(back) == set(unet.state)
    assert all(back[key] is unet.state[key] for key in unet.state)


@pytest.mark.parametrize("mangled", [True, False])
@pytest.mark.parametrize("root", [LDM_ROOT, "diffusion_model.", ""])
def test_every_diffusers_weight_resolves_to_the_ldm_key_holding_it(unet, mangled, root):
    state = unet.state
    ldm = {root + key[len(LDM_ROOT) :] if key.startswith(LDM_ROOT) else key: value for key, value in unet.ldm.items()}
    holder = {id(tensor): key for key, tensor in ldm.items()}
    index = WeightIndex(ldm)
    hints = spelled("lycoris", "lora_unet_")[0].hints if mangled else ("unet", "diffusion_model")
    for key in (k for k in state if k.endswith(".weight")):
        path = key[: -len(".weight")]
        target = ModulePath(path.replace(".", "_") if mangled else path, mangled, hints)
        assert locate(target, index) == (WeightSlice(holder[id(state[key])]), ""), key


def test_reverse_ldm_names_resolve_on_a_diffusers_keyed_unet(unet):
    state, ldm = unet.state, unet.ldm
    holder = {id(tensor): key for key, tensor in state.items()}
    index = WeightIndex({"unet." + key for key in state})
    for key in (k for k in ldm if k.startswith(LDM_ROOT) and k.endswith(".weight")):
        path = key[len(LDM_ROOT) : -len(".weight")]
        for target in (
            ModulePath(path.replace(".", "_"), True, spelled("lycoris", "lora_unet_")[0].hints),
            ModulePath(path, False, ("diffusion_model",)),
        ):
            assert locate(target, index) == (WeightSlice("unet." + holder[id(ldm[key])]), ""), key


def _factors(method: str, shape: torch.Size, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random kohya tensors of ``method`` for a weight of ``shape`` (rank 2; LoKr factor 2 where it divides)."""
    out, inp, kernel = shape[0], shape[1] if len(shape) > 1 else 1, tuple(shape[2:])
    rank, flat = 2, (inp * math.prod(kernel))

    def randn(*size):
        return 0.1 * torch.randn(*size, generator=gen)

    if len(shape) == 1:
        return {"diff": randn(out)}
    if method == "full":
        return {"diff": randn(*shape), "diff_b": randn(out)}
    if method == "oft":  # blocks of 4 rows; a constraint (alpha·out) that binds, so the module's own out counts
        return {"oft_blocks": randn(out // 4, 4, 4), "alpha": torch.tensor(0.01)}
    if method in ("lora", "dora"):
        params = {"lora_down.weight": randn(rank, inp, *kernel), "lora_up.weight": randn(out, rank, *[1] * len(kernel))}
        if method == "dora":
            params["dora_scale"] = 1 + randn(out, *[1] * (len(shape) - 1))
    elif method == "loha":
        params = {
            "hada_w1_a": randn(out, rank),
            "hada_w1_b": randn(rank, flat),
            "hada_w2_a": randn(out, rank),
            "hada_w2_b": randn(rank, flat),
        }
    else:
        f_out, f_in = (2 if out % 2 == 0 else 1), (2 if inp % 2 == 0 else 1)
        params = {"lokr_w1": randn(f_out, f_in), "lokr_w2": randn(out // f_out, inp // f_in, *kernel)}
    return {**params, "alpha": torch.tensor(float(rank))}


def _kohya_file(path, state, module_paths, method, seed, prefix="lora_unet_"):
    """A kohya file of ``method`` over the diffusers ``module_paths`` (``<prefix><path with '_'>``)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in module_paths:
        for param, tensor in _factors(method, state[module + ".weight"].shape, gen).items():
            tensors[f"{prefix}{module.replace('.', '_')}.{param}"] = tensor
    save_file(tensors, str(path))
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _changed(before: dict, after: dict) -> dict[str, torch.Tensor]:
    return {key: value for key, value in after.items() if not torch.equal(value, before[key])}


@pytest.mark.parametrize("method", ["lora", "loha", "lokr"])
def test_bake_diffusers_named_adapter_into_ldm_checkpoint(unet, files, tmp_path, capsys, method):
    adapter = _kohya_file(tmp_path / f"{method}.safetensors", unet.state, MODULES[unet.name], method, seed=11)
    _run(capsys, "bake", files / "diffusers.safetensors", adapter, "-o", tmp_path / "d.safetensors")
    _run(capsys, "bake", files / "ldm.safetensors", f"{adapter}:0.7", "-o", tmp_path / "l07.safetensors")
    out = _run(capsys, "bake", files / "ldm.safetensors", adapter, "-o", tmp_path / "l.safetensors")
    assert "match no weight" not in out
    on_diffusers = _changed(unet.pipeline, load_file(str(tmp_path / "d.safetensors")))
    on_ldm = _changed(unet.ldm, load_file(str(tmp_path / "l.safetensors")))
    expected = unet.as_ldm(on_diffusers)
    assert len(on_diffusers) == len(MODULES[unet.name]) and set(on_ldm) == set(expected)
    assert all(torch.equal(on_ldm[key], expected[key]) for key in expected)
    assert set(_changed(unet.ldm, load_file(str(tmp_path / "l07.safetensors")))) == set(expected)


def test_to_lora_and_convert_with_an_ldm_base(unet, files, tmp_path, capsys):
    """DoRA (needs W) to LoRA against the LDM checkpoint; a kohya LoRA to PEFT keeps the diffusers module paths."""
    state = unet.state
    linear = [m for m in MODULES[unet.name] if state[m + ".weight"].ndim == 2]
    dora = _kohya_file(tmp_path / "dora.safetensors", state, linear, "dora", seed=12)
    _run(
        capsys,
        "to-lora",
        dora,
        "-o",
        tmp_path / "lora.safetensors",
        "--rank",
        "64",
        "--base",
        files / "ldm.safetensors",
    )
    _run(capsys, "bake", files / "diffusers.safetensors", dora, "-o", tmp_path / "ref.safetensors")
    _run(capsys, "bake", files / "ldm.safetensors", tmp_path / "lora.safetensors", "-o", tmp_path / "new.safetensors")
    ref = unet.as_ldm(_changed(unet.pipeline, load_file(str(tmp_path / "ref.safetensors"))))
    assert len(ref) == len(linear)
    # rank 64 keeps every linear layer whole (widths ≤ 64): only rounding, float32 SVD of an m×n delta (∝ max(m, n))
    svd_depth = max(max(t.shape) for t in ref.values())
    new = load_file(str(tmp_path / "new.safetensors"))
    assert relative(new, ref, unet.ldm) <= delta_agreement(ref, unet.ldm, depth=svd_depth)

    layers = [m for m in MODULES[unet.name] if state[m + ".weight"].ndim > 1]  # a norm's diff has no PEFT form
    lora = _kohya_file(tmp_path / "plain.safetensors", state, layers, "lora", seed=13)
    _run(capsys, "convert", lora, "--to", "peft", "-o", tmp_path / "peft", "--base", files / "ldm.safetensors")
    peft = lyco_core.load_adapter(tmp_path / "peft")
    assert set(peft.modules) == {"base_model.model." + m for m in layers}
    base = unet.pipeline
    expected = lyco_core.load_adapter(lora).patch(base)
    assert relative(peft.patch(base), expected, base) <= delta_agreement(expected, base, depth=2)  # rank-2 factors


@pytest.mark.parametrize("prefix", ["lora_unet_", "diffusion_model."])
def test_ldm_named_adapter_on_diffusers_keyed_unet(unet, prefix):
    """kohya (mangled) and ComfyUI (dotted) LDM names patch a diffusers-keyed UNet as they patch the LDM one."""
    gen = torch.Generator().manual_seed(14)
    tensors = {}
    for module in MODULES[unet.name]:
        ldm_path = unet.table[module]
        written = prefix + (ldm_path if "." in prefix else ldm_path.replace(".", "_"))
        shape = unet.state[module + ".weight"].shape
        tensors.update({f"{written}.{p}": t for p, t in _factors("lora", shape, gen).items()})
    adapter = lyco_core.adapter_from_tensors(tensors)
    base = unet.pipeline
    patched, reference = adapter.patch(base), adapter.patch(unet.ldm)
    assert adapter.match(base).unmatched == {} and len(patched) == len(reference) == len(MODULES[unet.name])
    assert all(torch.equal(value, reference[key]) for key, value in unet.as_ldm(patched).items())


def _openclip(prefix: str, width: int, layers: int, gen) -> dict[str, torch.Tensor]:
    """An OpenCLIP text transformer's weights as LDM checkpoints hold them."""
    shapes = {
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
        "mlp.c_fc.weight": (4 * width, width),
        "mlp.c_fc.bias": (4 * width,),
        "mlp.c_proj.weight": (width, 4 * width),
        "mlp.c_proj.bias": (width,),
    }
    state = {
        f"{prefix}transformer.resblocks.{i}.{k}": torch.randn(s, generator=gen)
        for i in range(layers)
        for k, s in shapes.items()
    }
    state.update(
        {
            f"{prefix}ln_final.weight": torch.randn(width, generator=gen),
            f"{prefix}ln_final.bias": torch.randn(width, generator=gen),
            f"{prefix}token_embedding.weight": torch.randn(50, width, generator=gen),
            f"{prefix}positional_embedding": torch.randn(7, width, generator=gen),
            f"{prefix}text_projection": torch.randn(width, width, generator=gen),
        }
    )
    return state


def _clip_l(prefix: str, width: int, gen) -> dict[str, torch.Tensor]:
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
    return {f"{prefix}text_model.encoder.layers.0.{n}.weight": torch.randn(width, width, generator=gen) for n in names}


def _to_hf(model: dict[str, torch.Tensor], root: str, width: int) -> dict[str, torch.Tensor]:
    """diffusers' OpenCLIP converter: the HF CLIP text encoder of the OpenCLIP weights under ``root``."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    return convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=width)), model, root)


def test_sdxl_openclip_text_encoder():
    """HF CLIP names (kohya lora_te2_) reach SDXL's OpenCLIP weights (checked against diffusers' OpenCLIP
    converter): whole weights 1:1, q/k/v as parts 1–3 of the fused in_proj_weight, text_projection transposed; te1
    and te2 modules of the same name never cross."""
    gen = torch.Generator().manual_seed(21)
    te2_root = "conditioner.embedders.1.model."
    model = {**_openclip(te2_root, 12, 2, gen), **_clip_l("conditioner.embedders.0.transformer.", 12, gen)}
    hf = _to_hf(model, te2_root, 12)
    holder = {id(tensor): key for key, tensor in model.items()}
    index = WeightIndex(model)
    fused = [k for k in hf if k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight"))]
    whole = [k for k in hf if k.endswith(".weight") and k not in fused and id(hf[k]) in holder]
    assert len(fused) == 6 and len(whole) == 2 * 5 + 3  # out_proj, fc1, fc2, 2 norms per layer; ln_final, embeddings
    for key in whole + fused:
        target = ModulePath(key[: -len(".weight")].replace(".", "_"), True, spelled("lycoris", "lora_te2_")[0].hints)
        found, reason = locate(target, index)
        if key in fused:
            layer, name = key.split(".")[3], key.split(".")[5]
            in_proj = f"{te2_root}transformer.resblocks.{layer}.attn.in_proj_weight"
            assert (found, reason) == (WeightSlice(in_proj, ("q_proj", "k_proj", "v_proj").index(name), 3), "")
            assert torch.equal(found.of(model[in_proj]), hf[key])
            assert torch.equal(found.of(model[found.bias_key]), hf[key.replace(".weight", ".bias")])
        else:
            assert (found, reason) == (WeightSlice(holder[id(hf[key])]), ""), key
    projection, _ = locate(ModulePath("text_projection", True, spelled("lycoris", "lora_te2_")[0].hints), index)
    assert projection == WeightSlice(te2_root + "text_projection", transposed=True)
    assert torch.equal(projection.of(model[projection.key]), hf["text_projection.weight"])

    tensors = {}
    for prefix, fc1 in (("lora_te1_", (12, 12)), ("lora_te2_", (48, 12))):
        for layer, shape in (("self_attn_q_proj", (12, 12)), ("self_attn_out_proj", (12, 12)), ("mlp_fc1", fc1)):
            tensors.update(
                {
                    f"{prefix}text_model_encoder_layers_0_{layer}.{p}": t
                    for p, t in _factors("lora", torch.Size(shape), gen).items()
                }
            )
    adapter = lyco_core.adapter_from_tensors(tensors)
    report = adapter.match(model)
    te1_layer = "conditioner.embedders.0.transformer.text_model.encoder.layers.0."
    assert report.matched == {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": te1_layer + "self_attn.q_proj.weight",
        "lora_te1_text_model_encoder_layers_0_self_attn_out_proj": te1_layer + "self_attn.out_proj.weight",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1": te1_layer + "mlp.fc1.weight",
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": te2_root
        + "transformer.resblocks.0.attn.in_proj_weight[part 1 of 3]",
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj": te2_root
        + "transformer.resblocks.0.attn.out_proj.weight",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1": te2_root + "transformer.resblocks.0.mlp.c_fc.weight",
    }
    assert report.unmatched == {}
    assert set(adapter.patch(model)) == {report.target(name).key for name in report.matched}


QKV = ("q_proj", "k_proj", "v_proj")


@dataclass
class OpenCLIPModel:
    """One OpenCLIP text encoder (width 12, 2 layers) as an LDM checkpoint holds it under ``root`` (SDXL's second
    beside a CLIP-L, or SD2's), and as the HF-keyed encoder diffusers' converter makes of it (``hf``)."""

    name: str
    root: str
    prefix: str
    ldm: dict[str, torch.Tensor]
    hf: dict[str, torch.Tensor]

    def modules(self, method: str) -> list[str]:
        """q, k, v of both layers, one whole weight beside them and the (transposed) text projection where the HF
        encoder has one (and the method changes no bias: it has none)."""
        qkv = [f"text_model.encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in QKV]
        projection = "text_projection.weight" in self.hf and method != "full"
        return qkv + ["text_model.encoder.layers.1.self_attn.out_proj"] + ["text_projection"] * projection

    def as_ldm(self, hf_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF-keyed attention weights and biases under the LDM keys (q, k, v stacked into in_proj_*, out_proj) and
        the text projection (transposed) when the HF encoder has one (SDXL's; SD2's CLIPTextModel has none)."""
        fused = {}
        for layer in range(2):
            for kind in ("weight", "bias"):
                parts = [hf_tensors[f"text_model.encoder.layers.{layer}.self_attn.{p}.{kind}"] for p in QKV]
                fused[f"{self.root}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts)
                out_proj = hf_tensors[f"text_model.encoder.layers.{layer}.self_attn.out_proj.{kind}"]
                fused[f"{self.root}transformer.resblocks.{layer}.attn.out_proj.{kind}"] = out_proj
        if "text_projection.weight" in hf_tensors:
            fused[self.root + "text_projection"] = hf_tensors["text_projection.weight"].T
        return fused


@pytest.fixture(scope="module", params=["sdxl", "sd2"])
def openclip(request) -> OpenCLIPModel:
    gen = torch.Generator().manual_seed(24)
    if request.param == "sdxl":
        root, prefix = "conditioner.embedders.1.model.", "lora_te2_"
        ldm = {**_openclip(root, 12, 2, gen), **_clip_l("conditioner.embedders.0.transformer.", 12, gen)}
    else:
        root, prefix = "cond_stage_model.model.", "lora_te_"
        ldm = _openclip(root, 12, 2, gen)
    hf = {key: value.clone() for key, value in _to_hf(ldm, root, 12).items()}
    return OpenCLIPModel(request.param, root, prefix, ldm, hf)


@pytest.fixture(scope="module")
def openclip_files(openclip, tmp_path_factory):
    return _saved(tmp_path_factory, f"openclip_{openclip.name}", ldm=openclip.ldm, hf=openclip.hf)


@pytest.mark.parametrize("method", ["lora", "loha", "dora", "oft", "full"])
def test_bake_qkv_modules_into_fused_in_proj(openclip, openclip_files, tmp_path, capsys, method):
    """kohya q/k/v modules baked into the LDM checkpoint give its in_proj_weight/bias the values of the same
    adapter baked into the HF-keyed encoder, re-fused; every module is reported matched; strengths 1 and 0.7."""
    modules = openclip.modules(method)
    adapter = _kohya_file(
        tmp_path / f"{method}.safetensors", openclip.hf, modules, method, seed=25, prefix=openclip.prefix
    )
    report = lyco_core.load_adapter(adapter).match(openclip.ldm)
    assert report.unmatched == {} and len(report.slices) == len(modules) - 1
    assert (
        report.matched[f"{openclip.prefix}text_model_encoder_layers_1_self_attn_v_proj"]
        == f"{openclip.root}transformer.resblocks.1.attn.in_proj_weight[part 3 of 3]"
    )
    for strength in (1.0, 0.7):
        on_ldm, on_hf = tmp_path / f"ldm_{strength}.safetensors", tmp_path / f"hf_{strength}.safetensors"
        out = _run(capsys, "bake", openclip_files / "ldm.safetensors", f"{adapter}:{strength}", "-o", on_ldm)
        assert "match no weight" not in out
        _run(capsys, "bake", openclip_files / "hf.safetensors", f"{adapter}:{strength}", "-o", on_hf)
        expected = _changed(openclip.ldm, openclip.as_ldm(load_file(str(on_hf))))
        # 2 in_proj_weight, out_proj, text_projection; full: the 3 biases too
        assert len(expected) == len(modules) - 4 + 3 * (method == "full")
        baked = load_file(str(on_ldm))
        assert set(_changed(openclip.ldm, baked)) == set(expected)
        # the two paths compute the same float32 values in other orders (fused q/k/v rows, width-12 products)
        assert relative(baked, expected, openclip.ldm) <= delta_agreement(expected, openclip.ldm, depth=12)


@pytest.mark.parametrize("method", ["dora", "oft"])
def test_to_lora_and_convert_with_fused_qkv_in_the_base(openclip, openclip_files, tmp_path, capsys, method):
    """A W-dependent adapter on q/k/v goes to LoRA against the LDM checkpoint (each module sees its third of
    in_proj_weight as W); that LoRA converted to PEFT against the same checkpoint keeps each module's HF name."""
    modules = openclip.modules(method)
    adapter = _kohya_file(
        tmp_path / f"{method}.safetensors", openclip.hf, modules, method, seed=26, prefix=openclip.prefix
    )
    base = openclip_files / "ldm.safetensors"
    _run(capsys, "to-lora", adapter, "-o", tmp_path / "lora.safetensors", "--rank", "12", "--base", base)
    _run(capsys, "bake", base, adapter, "-o", tmp_path / "ref.safetensors")
    _run(capsys, "bake", base, tmp_path / "lora.safetensors", "-o", tmp_path / "new.safetensors")
    reference = _changed(openclip.ldm, load_file(str(tmp_path / "ref.safetensors")))
    assert len(reference) == len(modules) - 4  # 2 in_proj_weight (q, k, v), out_proj, text_projection
    # rank 12 keeps every width-12 module whole: only rounding, float32 SVD of an m×n delta (∝ max(m, n))
    svd_depth = max(max(t.shape) for t in reference.values())
    new = load_file(str(tmp_path / "new.safetensors"))
    assert relative(new, reference, openclip.ldm) <= delta_agreement(reference, openclip.ldm, depth=svd_depth)

    lora = tmp_path / "lora.safetensors"
    _run(capsys, "convert", lora, "--to", "peft", "-o", tmp_path / "peft", "--base", base)
    peft = lyco_core.load_adapter(tmp_path / "peft")
    assert set(peft.modules) == {"base_model.model." + m for m in modules}
    expected = lyco_core.load_adapter(lora).patch(openclip.hf)
    assert relative(peft.patch(openclip.hf), expected, openclip.hf) <= delta_agreement(expected, openclip.hf, depth=12)


def test_sd1_text_encoder_keeps_matching_by_suffix():
    gen = torch.Generator().manual_seed(22)
    model = _clip_l("cond_stage_model.transformer.", 8, gen)
    tensors = {
        f"lora_te_text_model_encoder_layers_0_mlp_fc1.{p}": t
        for p, t in _factors("lora", torch.Size((8, 8)), gen).items()
    }
    assert lyco_core.adapter_from_tensors(tensors).match(model).matched == {
        "lora_te_text_model_encoder_layers_0_mlp_fc1": "cond_stage_model.transformer.text_model.encoder.layers.0."
        "mlp.fc1.weight"
    }


def test_index_of_a_full_sdxl_checkpoint_is_fast():
    """Every key of an SDXL-sized LDM checkpoint (UNet from diffusers' real SDXL config, both text encoders)."""
    from diffusers import UNet2DConditionModel

    config = dict(
        SDXL,
        block_out_channels=(320, 640, 1280),
        attention_head_dim=(5, 10, 20),
        norm_num_groups=32,
        cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10),
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    with torch.device("meta"):
        keys = list(UNet2DConditionModel(**config).state_dict())
    table = diffusers_to_ldm({key.rpartition(".")[0] for key in keys})
    gen = torch.Generator().manual_seed(23)
    model = [_ldm_key(key, table) for key in keys] + list(_openclip("conditioner.embedders.1.model.", 4, 32, gen))
    model += [
        key.replace("layers.0.", f"layers.{i}.")
        for i in range(12)
        for key in _clip_l("conditioner.embedders.0.transformer.", 4, gen)
    ]
    assert len(keys) == 1680
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        index = WeightIndex(model)
        timings.append(time.perf_counter() - start)
    assert len(index.aliases) == sum(key.endswith(".weight") for key in keys) + 32 * 8 + 4  # q, k, v apart
    assert min(timings) < 0.5, timings
