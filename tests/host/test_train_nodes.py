"""Train LyCORIS Adapter inside a real ComfyUI 0.3.75 on the tiny SD1.5 checkpoint.

For LoRA, LoHa, LoKr and OFT: a short run on two tiny latents lowers the denoising loss — measured at fixed noise
and σ on the MODEL the node returns, i.e. with the saved file applied by our loader — and the file applies the same
way in ComfyUI's native LoraLoader (LoRA); resuming from the node's ADAPTER continues the step count, the loss curve
and the optimizer; cancelling mid-run (ComfyUI's interrupt flag) leaves the last checkpoint whole and loadable.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tolerances import agreement, eps

EVAL_DRAWS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny UNet runs several times faster on one thread than on an oversubscribed pool (busy CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd15(comfy):
    return comfy.nodes.CheckpointLoaderSimple().load_checkpoint(comfy.base.ckpt_name)


@pytest.fixture(scope="module")
def data(comfy, sd15):
    _, clip, _ = sd15
    generator = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(1, 4, 8, 8, generator=generator)} for _ in range(2)]
    encode = comfy.nodes.CLIPTextEncode().encode
    conds = [encode(clip, "a red square")[0], encode(clip, "a blue circle")[0]]
    return latents, conds


def _pack(comfy, name: str):
    return sys.modules[f"{comfy.pack_module_name}.{name}"]


def _config(comfy, node_id: str, **fields):
    node = comfy.lyco_nodes[node_id]
    schema = node.define_schema()
    values = {i.id: getattr(i, "default", None) for i in schema.inputs}
    values.update(fields)
    return node.execute(**values)[0]


def _train(comfy, sd15, data, config, **options):
    model, clip, _ = sd15
    latents, conds = data
    settings = dict(
        steps=12,
        batch_size=2,
        grad_accumulation=1,
        learning_rate=2e-3,
        text_encoder_lr=5e-5,
        optimizer="AdamW",
        scheduler="constant",
        warmup_steps=0,
        seed=0,
        training_dtype="fp32",
        gradient_checkpointing=False,
        checkpoint_every=0,
        name="t",
    )
    settings.update(options)
    lists = {k: [v] for k, v in settings.items()}
    return comfy.lyco_nodes["LyCOTrain"].execute(
        model=[model], config=[config], latents=latents, positive=conds, **lists
    )


def eval_loss(comfy, patcher, data) -> float:
    """Mean denoising loss of ``patcher`` (its patches applied) on the two latents at fixed noise and σ."""
    latents, conds = data
    host = _pack(comfy, "nodes.train_host")
    importlib.import_module("comfy.model_management").load_models_gpu([patcher], force_full_load=True)
    loss = host.DenoiseLoss(patcher, [latent["samples"] for latent in latents], conds, seed=123)
    with torch.no_grad():
        return sum(float(loss([0, 1], draw)) for draw in range(EVAL_DRAWS)) / EVAL_DRAWS


def loss_rtol(patcher) -> float:
    """Bound on the relative difference of ``eval_loss`` for two float32 computations of the same adapted weights
    (ours and ComfyUI's ``W + ΔW``): only the adapted layers compute differently, each within 2ε·(1 + √n) of its
    output for a fan-in n (tests/core/test_bypass.py); independent across layers they add in quadrature,
    2ε·√(Σ (1 + √n)²), and the squared-error loss doubles a relative output error (≈ 7e-5 for a LoRA on the
    default targets). The worst case, Σ instead of the quadrature sum, is √L times that for L adapted layers —
    several times the former fixed 1e-4."""
    state = patcher.model_state_dict()
    fan_ins = [state[k][0].numel() for k in patcher.patches if k.endswith(".weight") and state[k].dim() > 1]
    return 2 * 2 * eps() * math.sqrt(sum((1 + math.sqrt(n)) ** 2 for n in fan_ins))


METHODS = {  # node, config fields, learning rate
    "lora": ("LyCOLoRAConfig", dict(r=4, lora_alpha=4.0), 2e-3),
    "loha": ("LyCOLoHaConfig", dict(r=4, alpha=4.0), 2e-3),
    "lokr": ("LyCOLoKrConfig", dict(r=4, alpha=4.0, decompose_factor=8), 1e-2),
    "oft": ("LyCOOFTConfig", dict(variant="lycoris", oft_block_size=8), 1e-2),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_training_lowers_the_loss_and_the_file_applies(comfy, sd15, data, method, caplog):
    node_id, fields, lr = METHODS[method]
    config = _config(comfy, node_id, **fields)
    model, clip, _ = sd15
    out = _train(comfy, sd15, data, config, name=f"lower_{method}", learning_rate=lr)
    trained_model, trained_clip, adapter, loss_map = out.result
    assert len(loss_map["loss"]) == 12 and trained_clip is None
    assert adapter.metadata["ss_steps"] == "12" and adapter.method_counts() == {method: len(adapter.modules)}
    assert len(trained_model.patches) == len(adapter.modules) > 0

    base, after = eval_loss(comfy, model, data), eval_loss(comfy, trained_model, data)
    assert after < 0.9 * base, (base, after)

    if method == "lora":  # ComfyUI's own loader reads the same file to the same effect
        folders = importlib.import_module("folder_paths")
        listed = [n for n in folders.get_filename_list("loras") if n.endswith(Path(adapter.path).name)]
        assert listed, "the checkpoint folder is not among ComfyUI's loras"
        native, _ = comfy.nodes.LoraLoader().load_lora(model, clip, listed[0], 1.0, 1.0)
        assert "lora key not loaded" not in caplog.text
        assert set(native.patches) == set(trained_model.patches)
        native_loss = eval_loss(comfy, native, data)
        assert native_loss == pytest.approx(after, rel=loss_rtol(native))
        # the ADAPTER output feeds Save Adapter, which keeps the training metadata
        saved = (
            comfy.lyco_nodes["LyCOSaveAdapter"]
            .execute(adapter=adapter, name="trained/lora_t", layout="lycoris", dtype="fp32", overwrite=True)
            .result[0]
        )
        copy = _pack(comfy, "lyco_core").load_adapter(saved)
        assert copy.metadata["ss_steps"] == "12" and set(copy.modules) == set(adapter.modules)


def test_training_states_stay_out_of_the_adapter_lists(comfy, sd15, data):
    """The ``*.train-state.pt`` beside each checkpoint (in a loras folder) is offered by no loader and refused by
    name; the checkpoint itself is listed."""
    config = _config(comfy, "LyCOLoKrConfig", r=4, alpha=4.0, decompose_factor=8)
    _, _, adapter, _ = _train(comfy, sd15, data, config, steps=2, checkpoint_every=1, name="state_hidden").result
    train_mod, host = _pack(comfy, "lyco_core.train"), _pack(comfy, "nodes.host")
    assert train_mod.state_path(adapter.path).is_file()
    folders = importlib.import_module("folder_paths")
    states = [n for n in folders.get_filename_list("loras") if n.endswith(train_mod.resume.STATE_SUFFIX)]
    assert states, "ComfyUI no longer lists training states; this test has nothing to check"
    names = host.adapter_names()
    assert not [n for n in names if n.endswith(".train-state.pt")], names
    assert [n for n in names if n.endswith(Path(adapter.path).name)]
    for name in states:
        with pytest.raises(_pack(comfy, "lyco_core").AdapterError):
            host.adapter_path(name)
    info = comfy.lyco_nodes["LyCOLoadAdapter"].define_schema()
    offered = next(i for i in info.inputs if i.id == "adapter_name").options
    assert not [n for n in offered if n.endswith(".train-state.pt")], offered


def test_resume_continues_step_count_loss_curve_and_optimizer(comfy, sd15, data):
    config = _config(comfy, "LyCOLoKrConfig", r=4, alpha=4.0, decompose_factor=8)
    first = _train(comfy, sd15, data, config, steps=4, checkpoint_every=2, name="resume")
    _, _, adapter, loss_map = first.result
    train_mod = _pack(comfy, "lyco_core.train")
    assert train_mod.state_path(adapter.path).is_file()
    second = _train(comfy, sd15, data, config, steps=3, name="resume", resume_from=adapter)
    _, _, resumed, resumed_loss = second.result
    assert len(resumed_loss["loss"]) == 7 and resumed_loss["loss"][:4] == loss_map["loss"]
    assert resumed.metadata["ss_steps"] == "7" and Path(resumed.path).name == "resume_000007.safetensors"
    state = train_mod.load_state(train_mod.state_path(resumed.path))
    assert state.step == 7 and state.optimizer["state"]

    # the same 7 steps in one go give the same curve: resume reproduces the uninterrupted run
    straight = _train(comfy, sd15, data, config, steps=7, name="straight")
    # the same float32 operations in the same order on the restored bits (weights and optimizer state saved in fp32):
    # equal up to one rounding of each reported loss, 2ε·(1 + 1) ≈ 4.8e-7 (measured: equal)
    assert straight.result[3]["loss"] == pytest.approx(resumed_loss["loss"], rel=agreement(1))


def test_cancel_mid_run_keeps_the_last_checkpoint(comfy, sd15, data):
    management = importlib.import_module("comfy.model_management")
    config = _config(comfy, "LyCOLoRAConfig", r=4, lora_alpha=4.0)
    folder = Path(_pack(comfy, "nodes.train").checkpoint_root()) / "cancel"
    stop = threading.Event()

    def interrupt_after_first_checkpoint():
        while not stop.is_set():
            if list(folder.glob("cancel_*.safetensors")):
                management.interrupt_current_processing(True)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=interrupt_after_first_checkpoint)
    watcher.start()
    try:
        with pytest.raises(management.InterruptProcessingException):
            _train(comfy, sd15, data, config, steps=200, checkpoint_every=2, name="cancel")
    finally:
        stop.set()
        watcher.join()
        management.interrupt_current_processing(False)
    files = sorted(folder.glob("cancel_*.safetensors"))
    assert files and not list(folder.glob(".*.tmp")), list(folder.iterdir())
    last = files[-1]
    step = int(last.stem.split("_")[-1])
    assert step % 2 == 0 and step < 200
    core = _pack(comfy, "lyco_core")
    saved = core.load_adapter(last)
    assert saved.metadata["ss_steps"] == str(step) and saved.modules
    assert _pack(comfy, "lyco_core.train").load_state(str(last).replace(".safetensors", ".train-state.pt")).step == step


def test_text_encoder_trains_from_captions_and_loss_plot(comfy, sd15, data):
    config = _config(comfy, "LyCOLoRAConfig", r=2, lora_alpha=2.0, target_modules="to_q, q_proj")
    model, clip, _ = sd15
    latents, conds = data
    lists = {
        k: [v]
        for k, v in dict(
            steps=2,
            batch_size=2,
            grad_accumulation=1,
            learning_rate=1e-3,
            text_encoder_lr=1e-2,
            optimizer="AdamW",
            scheduler="linear",
            warmup_steps=1,
            seed=0,
            training_dtype="fp32",
            gradient_checkpointing=True,
            checkpoint_every=0,
            name="te",
            clip=clip,
        ).items()
    }
    out = comfy.lyco_nodes["LyCOTrain"].execute(
        model=[model],
        config=[config],
        latents=latents,
        positive=conds,
        captions=["a red square", "a blue circle"],
        **lists,
    )
    trained_model, trained_clip, adapter, loss_map = out.result
    te = {n: m for n, m in adapter.modules.items() if n.startswith("lora_te")}
    assert len(te) == 12 and len(adapter.modules) == len(te) + 8  # q_proj per CLIP layer; attn1/attn2 to_q × 4
    assert all(float(m.params["lora_up.weight"].abs().max()) > 0 for m in te.values())  # gradients reached CLIP
    assert len(trained_clip.patcher.patches) == 12 and len(trained_model.patches) == 8

    plot = comfy.lyco_nodes["LyCOLossPlot"].execute(loss={"loss": loss_map["loss"] + [0.5, 0.25]}, smoothing=0.5)
    image = plot.result[0]
    assert image.shape == (1, 400, 720, 3) and float(image.min()) < 0.5 < float(image.max())
    assert plot.ui.as_dict()["images"]
