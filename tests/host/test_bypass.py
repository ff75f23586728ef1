"""Bypass mode inside a real ComfyUI: the loaders' ``bypass`` option runs adapters in the layers' forward passes.

On the tiny SD1.5 checkpoint loaded in float32, one UNet step (and a CLIP encode) with the adapter bypassed equals
(to float32 rounding) the same step with the adapter merged by ComfyUI's full load, for LoRA/LoCon (+Tucker), LoHa
and LoKr (+Tucker), in full and low-VRAM loads, chained, and through the loader node; weight-dependent methods are
refused.

Where the host has its own bypass (ComfyUI 0.33: ``comfy.weight_adapter.bypass``, the ``LoraLoaderBypass`` node):
our bypass loader and the host's, in either order on one model, give each layer the sum of both branches and the
step of both adapters merged; and the host's ``BypassInjectionManager`` runs our patches (``LycoPatch.h``) exactly
as merged, refusing weight-dependent methods. On a host without it (0.3.75) those tests skip and say so.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

from tolerances import agreement, forward_agreement

CPU = torch.device("cpu")
LINEAR = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
CONV = "input_blocks.1.0.in_layers.2"
POINTWISE = "input_blocks.1.1.proj_in"
CLIP_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
# fan-ins of the layers the adapters touch (tiny SD1.5): to_q 320, in_layers.2 320·3·3, proj_in 320, CLIP q_proj 768
FAN_IN = {LINEAR: 320, CONV: 320 * 9, POINTWISE: 320, CLIP_Q: 768}


def _name(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def _tensors(method: str, shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """LyCORIS-layout tensors of ``method`` for each (kohya name → weight shape)."""
    gen = torch.Generator().manual_seed(seed)

    def g(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    out = {}
    for name, shape in shapes.items():
        o, i, k = shape[0], shape[1], tuple(shape[2:])
        ones = (1,) * len(k)
        if method == "lora":
            p = {"lora_up.weight": g(o, 4, *ones), "lora_down.weight": g(4, i, *k), "alpha": torch.tensor(2.0)}
        elif method == "locon_tucker" and k and k[0] > 1:
            p = {"lora_up.weight": g(o, 4, *ones), "lora_down.weight": g(4, i, *ones), "lora_mid.weight": g(4, 4, *k)}
        elif method == "loha":
            p = {
                "hada_w1_a": g(o, 4),
                "hada_w1_b": g(4, i * (k[0] * k[1] if k else 1)),
                "hada_w2_a": g(o, 4),
                "hada_w2_b": g(4, i * (k[0] * k[1] if k else 1)),
                "alpha": torch.tensor(2.0),
            }
        elif method == "lokr" and k and k[0] > 1:
            p = {"lokr_w1": g(4, 4), "lokr_w2_a": g(2, o // 4), "lokr_w2_b": g(2, i // 4), "lokr_t2": g(2, 2, *k)}
        elif method == "lokr":
            p = {"lokr_w1": g(4, 4), "lokr_w2_a": g(o // 4, 2), "lokr_w2_b": g(2, i * (k[0] * k[1] if k else 1) // 4)}
        elif method == "full":
            p = {"diff": g(*shape)}
        elif method == "oft":
            p = {"oft_blocks": g(o // 32, 32, 32)}
        else:
            continue
        out.update({f"{name}.{key}": value for key, value in p.items()})
    return out


@pytest.fixture(scope="module")
def env(comfy, comfy_base):
    sd = importlib.import_module("comfy.sd")
    pack = comfy.pack_module_name
    model, clip, _ = sd.load_checkpoint_guess_config(
        str(comfy_base.path / "models" / "checkpoints" / comfy_base.ckpt_name),
        output_vae=False,
        model_options={"dtype": torch.float32},
        te_model_options={"dtype": torch.float32},
    )[:3]
    state = model.model_state_dict()
    shapes = {_name(p): tuple(state[f"diffusion_model.{p}.weight"].shape) for p in (LINEAR, CONV, POINTWISE)}
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500.0]), torch.randn(1, 77, 768, generator=gen))
    return {
        "model": model,
        "clip": clip,
        "shapes": shapes,
        "inputs": inputs,
        "core": importlib.import_module(f"{pack}.lyco_core"),
        "host": importlib.import_module(f"{pack}.nodes.host"),
        "bypass": importlib.import_module(f"{pack}.nodes.bypass"),
        "node": comfy.lyco_nodes["LyCOLoadAdapter"],
    }


def _step(patcher, inputs, lowvram: int = 0) -> torch.Tensor:
    patcher.patch_model(device_to=CPU, lowvram_model_memory=lowvram)
    try:
        with torch.no_grad():
            x, t, context = inputs
            return patcher.model.apply_model(x, t, c_crossattn=context).clone()
    finally:
        patcher.unpatch_model(device_to=CPU)


def _close(got, merged, base):
    """Equal up to float32 rounding carried through the network: bypass rounds the branch and the base output
    apart, merging rounds W + m·ΔW; only the adapted layers compute differently, each within 2ε·(1 + √n) of its
    output (tests/core/test_bypass.py), so the step is held to ``forward_agreement`` over their fan-ins,
    2ε·(1 + Σ√n) ≈ 2.8e-5, of the output and of the adapters' change (assuming the rest of the network passes a
    difference on without amplifying it)."""
    tolerance = forward_agreement(tuple(FAN_IN.values())) * (merged.abs().max() + (merged - base).abs().max())
    return (got - merged).abs().max().item() <= tolerance.item(), (got - merged).abs().max().item()


@pytest.mark.parametrize("method", ["lora", "locon_tucker", "loha", "lokr"])
def test_bypass_equals_merged_step(env, method):
    adapter = env["core"].adapter_from_tensors(_tensors(method, env["shapes"]), file=f"bypass-{method}")
    base = _step(env["model"], env["inputs"])
    merged_model, _, _ = env["host"].apply_adapter(adapter, env["model"], None, 0.8, 0.0)
    bypass_model, _, coverage = env["bypass"].apply_bypass(adapter, env["model"], None, 0.8, 0.0)
    assert len(coverage.unet) == len(adapter.modules)
    assert not bypass_model.patches and len(bypass_model.object_patches) == len(adapter.modules)
    merged = _step(merged_model, env["inputs"])
    assert (merged - base).abs().max() > 1e-3
    for lowvram in (0, 1):
        ok, error = _close(_step(bypass_model, env["inputs"], lowvram), merged, base)
        assert ok, f"{method} lowvram={lowvram}: max |bypass − merged| = {error}"
    assert torch.equal(_step(env["model"], env["inputs"]), base)  # unpatch restored the plain forward


def test_chained_bypass_loaders_add_up(env):
    first = env["core"].adapter_from_tensors(_tensors("lora", env["shapes"], seed=1), file="first")
    second = env["core"].adapter_from_tensors(_tensors("lokr", env["shapes"], seed=2), file="second")
    base = _step(env["model"], env["inputs"])
    merged_model = env["host"].apply_adapter(first, env["model"], None, 0.7, 0.0)[0]
    merged_model = env["host"].apply_adapter(second, merged_model, None, -0.4, 0.0)[0]
    bypass_model = env["bypass"].apply_bypass(first, env["model"], None, 0.7, 0.0)[0]
    bypass_model = env["bypass"].apply_bypass(second, bypass_model, None, -0.4, 0.0)[0]
    assert len(bypass_model.object_patches) == len(first.modules)  # one wrapper per layer, two branches each
    ok, error = _close(_step(bypass_model, env["inputs"]), _step(merged_model, env["inputs"]), base)
    assert ok, error


def test_clip_bypass_equals_merged(env):
    clip = env["clip"]
    gen = torch.Generator().manual_seed(4)
    tensors = {
        f"{CLIP_Q}.lora_up.weight": torch.randn(768, 4, generator=gen) * 0.05,
        f"{CLIP_Q}.lora_down.weight": torch.randn(4, 768, generator=gen) * 0.05,
    }
    adapter = env["core"].adapter_from_tensors(tensors, file="clip")
    tokens = clip.tokenize("a photo of a cat")
    base = clip.encode_from_tokens(tokens)
    merged = env["host"].apply_adapter(adapter, None, clip, 0.0, 1.0)[1].encode_from_tokens(tokens)
    bypassed = env["bypass"].apply_bypass(adapter, None, clip, 0.0, 1.0)[1].encode_from_tokens(tokens)
    ok, error = _close(bypassed, merged, base)
    assert ok, error
    assert torch.equal(clip.encode_from_tokens(tokens), base)


def test_weight_dependent_methods_are_refused(env):
    adapter = env["core"].adapter_from_tensors(
        _tensors("oft", {_name(LINEAR): env["shapes"][_name(LINEAR)]}), file="oft"
    )
    with pytest.raises(env["core"].AdapterError, match="oft cannot run in bypass mode"):
        env["bypass"].apply_bypass(adapter, env["model"], None, 1.0, 0.0)


def test_loader_node_bypass_option(env, comfy_base):
    folder_paths = importlib.import_module("folder_paths")
    save_file(_tensors("lora", env["shapes"]), str(comfy_base.path / "models" / "loras" / "bypass_lora.safetensors"))
    folder_paths.filename_list_cache.pop("loras", None)
    node = env["node"]
    assert "bypass" in node.INPUT_TYPES()["optional"]
    model, clip, text = node.execute(env["model"], env["clip"], "bypass_lora.safetensors", 1.0, 1.0, bypass=True).result
    assert not model.patches and len(model.object_patches) == 3 and "UNet 3" in text
    merged_model = node.execute(env["model"], env["clip"], "bypass_lora.safetensors", 1.0, 1.0).result[0]
    assert len(merged_model.patches) == 3 and not merged_model.object_patches


# --- the host's own bypass (ComfyUI 0.33+) ----------------------------------------------------------------------
@pytest.fixture
def native(comfy):
    """ComfyUI's bypass module; skips on a host without one, naming its version."""
    try:
        module = importlib.import_module("comfy.weight_adapter.bypass")
    except ImportError:
        module = None
    if module is None or "LoraLoaderBypass" not in comfy.nodes.NODE_CLASS_MAPPINGS:
        version = importlib.import_module("comfyui_version").__version__
        pytest.skip(
            f"ComfyUI {version} has no bypass of its own (comfy.weight_adapter.bypass, LoraLoaderBypass): "
            "nothing to coexist with; our bypass option is covered by the tests above"
        )
    return module


def _layer_out(patcher, path: str, x: torch.Tensor) -> torch.Tensor:
    """One layer's forward as the patched model runs it (object patches and injections in place)."""
    utils = importlib.import_module("comfy.utils")
    patcher.patch_model(device_to=CPU)
    try:
        with torch.no_grad():
            return utils.get_attr(patcher.model, path)(x).clone()
    finally:
        patcher.unpatch_model(device_to=CPU)


# one layer in float32: merged (W + m·ΔW)·x and bypassed W·x + m·ΔW·x round their n-term sums differently, as in
# tests/core/test_bypass.py: 2ε·(1 + 2√n) of max |y| (to_q, n = 320: 4.4e-6; measured ≤ 6.2e-7)
def layer_rtol(path: str) -> float:
    return forward_agreement((FAN_IN[path], FAN_IN[path]))


# the chain and the sum of its branches round only the adds: three rounded outputs summed, 2ε·(1 + 3) ≈ 9.5e-7
SUM_RTOL = agreement(1, steps=3)


def _relative(got, want) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def _layer_input(shape: tuple, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 7, shape[1], generator=gen) if len(shape) == 2 else torch.randn(1, shape[1], 8, 8, generator=gen)
    )


@pytest.mark.parametrize("order", ["native-then-lyco", "lyco-then-native"])
def test_chain_with_native_bypass_loader(env, comfy, comfy_base, native, order):
    """The host's bypass loader (an injection) and ours (object patches) on one model: its hook wraps our wrapper
    whichever loader came first, so each layer gets both branches, and the step equals both adapters merged."""
    folder_paths = importlib.import_module("folder_paths")
    clip_gen = torch.Generator().manual_seed(5)
    tensors = {
        **{k: v * 4 for k, v in _tensors("lokr", env["shapes"], seed=3).items()},
        f"{CLIP_Q}.lora_up.weight": torch.randn(768, 4, generator=clip_gen) * 0.05,
        f"{CLIP_Q}.lora_down.weight": torch.randn(4, 768, generator=clip_gen) * 0.05,
    }
    save_file(tensors, str(comfy_base.path / "models" / "loras" / "bypass_chain_lokr.safetensors"))
    folder_paths.filename_list_cache.pop("loras", None)
    classes = comfy.nodes.NODE_CLASS_MAPPINGS
    lyco, theirs = ("bypass_chain_lokr.safetensors", 0.8), (comfy_base.lora_name, 0.5)

    def ours(model, clip, bypass):
        return tuple(env["node"].execute(model, clip, lyco[0], lyco[1], lyco[1], bypass=bypass).result[:2])

    def native_loader(model, clip, bypass):
        node = classes["LoraLoaderBypass" if bypass else "LoraLoader"]()
        return node.load_lora(model, clip, theirs[0], theirs[1], theirs[1])

    steps = (native_loader, ours) if order == "native-then-lyco" else (ours, native_loader)
    model, clip = env["model"], env["clip"]
    chain, merged = (model, clip), (model, clip)
    for step in steps:
        chain, merged = step(*chain, bypass=True), step(*merged, bypass=False)
    assert chain[0].get_injections("bypass_lora") and len(chain[0].object_patches) == 3 and not chain[0].patches
    only_ours, only_native = ours(model, clip, True), native_loader(model, clip, True)

    # each layer: base + our branch + the host's branch (LINEAR is patched by both files)
    x = _layer_input(env["shapes"][_name(LINEAR)], 6)
    path = f"diffusion_model.{LINEAR}"
    base_y, chain_y = _layer_out(model, path, x), _layer_out(chain[0], path, x)
    ours_y, native_y = _layer_out(only_ours[0], path, x), _layer_out(only_native[0], path, x)
    assert min((ours_y - base_y).abs().max(), (native_y - base_y).abs().max()) > 1e-2
    layer_error = _relative(chain_y, ours_y + native_y - base_y)
    merged_layer_error = _relative(chain_y, _layer_out(merged[0], path, x))
    print(f"\n{order}: layer chain vs sum of branches {layer_error:.2e}, vs merged {merged_layer_error:.2e}")
    assert layer_error <= SUM_RTOL and merged_layer_error <= layer_rtol(LINEAR)

    base = _step(model, env["inputs"])
    merged_step = _step(merged[0], env["inputs"])
    for lowvram in (0, 1):
        ok, error = _close(_step(chain[0], env["inputs"], lowvram), merged_step, base)
        print(
            f"{order} lowvram={lowvram}: step max |chain − merged| {error:.2e} (|merged| ≤ "
            f"{merged_step.abs().max():.0f})"
        )
        assert ok, f"{order} lowvram={lowvram}: max |chain − merged| = {error}"
    tokens = clip.tokenize("a photo of a cat")
    base_c = clip.encode_from_tokens(tokens)
    ok, error = _close(chain[1].encode_from_tokens(tokens), merged[1].encode_from_tokens(tokens), base_c)
    assert ok, f"{order} CLIP: max |chain − merged| = {error}"
    assert torch.equal(_step(model, env["inputs"]), base)  # both unpatched: the plain forward is back


@pytest.mark.parametrize("method", ["lora", "locon_tucker", "loha", "lokr", "full"])
def test_host_bypass_manager_runs_our_patches(env, native, method):
    """Our patches handed to the host's ``BypassInjectionManager`` run ``LycoPatch.h``: the step equals merged."""
    tensors = {k: v * 3 for k, v in _tensors(method, env["shapes"], seed=7).items()}
    adapter = env["core"].adapter_from_tensors(tensors, file=f"host-{method}")
    unet_patches, _, _ = env["host"].build_patches(adapter, env["model"], None)
    manager = native.BypassInjectionManager()
    for key, patch in unet_patches.items():
        manager.add_adapter(key, patch, strength=-0.7)
    patcher = env["model"].clone()
    patcher.set_injections("lyco_test", manager.create_injections(patcher.model))
    assert manager.get_hook_count() == len(adapter.modules)
    merged_model = env["host"].apply_adapter(adapter, env["model"], None, -0.7, 0.0)[0]
    ours_model = env["bypass"].apply_bypass(adapter, env["model"], None, -0.7, 0.0)[0]
    errors, bounds = [], []
    for seed, path in enumerate(p for p in (LINEAR, CONV, POINTWISE) if _name(p) in adapter.modules):
        x = _layer_input(env["shapes"][_name(path)], seed)
        want = _layer_out(merged_model, f"diffusion_model.{path}", x)
        effect = (want - _layer_out(env["model"], f"diffusion_model.{path}", x)).abs().max() / want.abs().max()
        assert effect > 1e-4, f"{path}: the adapter barely changes this layer ({effect:.1e})"
        errors.append(_relative(_layer_out(patcher, f"diffusion_model.{path}", x), want))
        bounds.append(layer_rtol(path))
    print(f"\nhost manager {method}: layers max relative |bypass − merged| {max(errors):.2e}")
    assert all(e <= b for e, b in zip(errors, bounds)), (errors, bounds)
    base = _step(env["model"], env["inputs"])
    merged = _step(merged_model, env["inputs"])
    ours = _step(ours_model, env["inputs"])
    assert (merged - base).abs().max() > 1e-3
    for lowvram in (0, 1):
        got = _step(patcher, env["inputs"], lowvram)
        ok, error = _close(got, merged, base)
        print(
            f"host manager {method} lowvram={lowvram}: step max |bypass − merged| {error:.2e} "
            f"(|merged| ≤ {merged.abs().max():.0f}), |host hook − our bypass| {(got - ours).abs().max():.1e}"
        )
        assert ok, f"{method} lowvram={lowvram}: max |host bypass − merged| = {error}"
        # the same branch math: at most the order of one add per adapted layer differs, 2ε·(1 + 4) ≈ 1.2e-6
        same = agreement(1, steps=len(FAN_IN)) * ours.abs().max().item()
        assert torch.allclose(got, ours, rtol=0, atol=same)


def test_host_bypass_from_our_patcher_patches(env, native):
    """``create_bypass_injections_from_patches`` over a patcher our merging loader made: the same step."""
    adapter = env["core"].adapter_from_tensors(_tensors("lora", env["shapes"], seed=8), file="from-patches")
    merged_model = env["host"].apply_adapter(adapter, env["model"], None, 0.9, 0.0)[0]
    patcher = env["model"].clone()
    patcher.set_injections(
        "lyco_test", native.create_bypass_injections_from_patches(patcher.model, merged_model.patches)
    )
    base = _step(env["model"], env["inputs"])
    ok, error = _close(_step(patcher, env["inputs"]), _step(merged_model, env["inputs"]), base)
    assert ok, error


def test_host_bypass_refuses_weight_dependent_patches(env, native):
    adapter = env["core"].adapter_from_tensors(
        _tensors("oft", {_name(LINEAR): env["shapes"][_name(LINEAR)]}), file="oft"
    )
    unet_patches, _, _ = env["host"].build_patches(adapter, env["model"], None)
    manager = native.BypassInjectionManager()
    for key, patch in unet_patches.items():
        manager.add_adapter(key, patch)
    patcher = env["model"].clone()
    patcher.set_injections("lyco_test", manager.create_injections(patcher.model))
    base = _step(env["model"], env["inputs"])
    with pytest.raises(env["core"].AdapterError, match="oft cannot run in bypass mode"):
        _step(patcher, env["inputs"])  # not a silent zero branch (the host's default h)
    assert torch.equal(_step(env["model"], env["inputs"]), base)  # the failed step was unpatched
