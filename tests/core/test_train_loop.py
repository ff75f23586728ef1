"""The training loop: 300 steps fit a synthetic target for every method (loss falls ≥ 15×; in float16 autocast
with the gradient scaler too), resume reproduces the uninterrupted run exactly (float16: scaler state included),
an overflowing float16 step is skipped and recorded, schedules, checkpoints and cancellation, gradient
checkpointing, metadata and resuming from a saved file."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import lyco_core
from lyco_core.train import (
    BOFTConfig,
    GLoRAConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    OFTConfig,
    TrainingRecord,
    TrainSettings,
    load_state,
    load_weights,
    resume_state,
    save_state,
    save_trained,
    state_path,
    train,
    wrap,
)
from lyco_core.train.optim import lr_multiplier
from tests.host.tolerances import close, eps
from .train_fixtures import one_thread, randomize  # noqa: F401  (autouse fixture)

FIT_FACTOR = 15.0  # the loss must fall at least this much
TARGETS = ["0", "2"]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))


def dataset(n: int = 64):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(5))


def teacher_outputs(config, data):
    """The target: the same method with random weights, so the fit is reachable."""
    tuner = wrap(mlp(), config)
    randomize(tuner.adapter(), seed=11, std=0.4)
    with torch.no_grad():
        return tuner(data)


def mse_loss(model, data, target):
    return lambda indices, step: torch.nn.functional.mse_loss(model(data[indices]), target[indices])


FIT_CASES = [
    ("lora", LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS), 3e-2),
    ("dora", LoraConfig(r=2, lora_alpha=2, use_dora=True, target_modules=TARGETS), 3e-2),
    ("loha", LoHaConfig(r=2, alpha=2, target_modules=TARGETS), 3e-2),
    ("lokr", LoKrConfig(r=2, alpha=2, decompose_factor=4, target_modules=TARGETS), 1e-2),
    ("oft", OFTConfig(oft_block_size=8, use_cayley_neumann=False, target_modules=TARGETS), 1e-2),
    ("oft-lycoris", OFTConfig(oft_block_size=8, variant="lycoris", rescaled=True, target_modules=TARGETS), 1e-2),
    ("boft", BOFTConfig(boft_block_size=8, target_modules=TARGETS), 1e-2),
    ("glora", GLoRAConfig(r=2, alpha=2, target_modules=TARGETS), 3e-2),
    ("ia3", IA3Config(target_modules=TARGETS, feedforward_modules=["2"]), 1e-2),
]


def overflowing(loss_fn, draws):
    """``loss_fn`` whose loss is multiplied by 1e35 for the micro-batches ``draws``: finite in float32, but its
    gradients overflow once the float16 scaler multiplies it by 2¹⁶."""
    return lambda indices, draw: loss_fn(indices, draw) * (1e35 if draw in draws else 1.0)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("case", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_a_few_hundred_steps_fit_a_synthetic_target(case, dtype):
    _, config, lr = case
    data = dataset()
    target = teacher_outputs(config, data)
    tuner = wrap(mlp(), config)
    state = train(
        tuner.adapter().parameters(),
        mse_loss(tuner, data, target),
        len(data),
        TrainSettings(steps=300, learning_rate=lr, batch_size=16, seed=0, dtype=dtype),
    )
    first, last = state.loss_history[0], sum(state.loss_history[-10:]) / 10
    assert state.step == 300 and len(state.loss_history) == 300
    assert last * FIT_FACTOR < first, (first, last)
    assert state.skipped_steps == [] and (state.scaler is None) == (dtype == "fp32")


class Stop(Exception):
    pass


def _resumable_run(stop_at=None, resume=None, dtype="fp32"):
    """12 steps of LoHa with both dropouts and a cosine schedule; checkpoints (state + weights) every 6 steps; stops
    after ``stop_at`` steps, or continues from ``resume`` = (state, weights). In float16, steps 2 and 8 overflow."""
    data = dataset(8)
    target = teacher_outputs(LoHaConfig(r=2, target_modules=TARGETS), data)
    tuner = wrap(mlp(), LoHaConfig(r=2, rank_dropout=0.2, module_dropout=0.1, target_modules=TARGETS))
    modules = tuner.adapter().modules.values()
    settings = TrainSettings(
        steps=12,
        learning_rate=1e-2,
        scheduler="cosine",
        warmup_steps=3,
        batch_size=3,
        grad_accumulation=2,
        seed=4,
        checkpoint_every=6,
        dtype=dtype,
    )
    state = None
    if resume is not None:
        state, weights = resume
        for trainable, saved in zip(modules, weights):
            trainable.load_state_dict(saved)
    checkpoints = []

    def keep(snapshot):
        checkpoints.append((snapshot, [{k: v.clone() for k, v in t.state_dict().items()} for t in modules]))

    def progress(step, total, loss):
        if step == stop_at:
            raise Stop

    try:
        loss_fn = mse_loss(tuner, data, target)
        if dtype == "fp16":
            loss_fn = overflowing(loss_fn, {2, 15})  # micro-batch 2 is in step 2, micro-batch 15 in step 8
        result = train(
            tuner.adapter().parameters(),
            loss_fn,
            len(data),
            settings,
            state=state,
            on_checkpoint=keep,
            progress=progress,
        )
    except Stop:
        result = None
    return result, checkpoints


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_resume_continues_exactly(tmp_path, dtype):
    straight, _ = _resumable_run(dtype=dtype)
    _, checkpoints = _resumable_run(stop_at=8, dtype=dtype)  # cancelled after step 8: step 6 is the last checkpoint
    state, weights = checkpoints[-1]
    assert state.step == 6
    save_state(state, tmp_path / "state.pt")
    resumed, _ = _resumable_run(resume=(load_state(tmp_path / "state.pt"), weights), dtype=dtype)
    assert resumed.step == 12 and resumed.loss_history[:6] == state.loss_history
    assert resumed.loss_history == straight.loss_history
    assert resumed.scaler == straight.scaler and resumed.skipped_steps == straight.skipped_steps
    if dtype == "fp16":  # two halvings of the initial 2¹⁶, one before and one after the checkpoint
        assert straight.skipped_steps == [2, 8] and straight.scaler["scale"] == 2.0**14


def test_fp16_overflowing_step_is_skipped_and_recorded():
    data = dataset(8)
    config = LoraConfig(r=2, target_modules=TARGETS)
    tuner = wrap(mlp(), config)
    weights = []
    state = train(
        tuner.adapter().parameters(),
        overflowing(mse_loss(tuner, data, teacher_outputs(config, data)), {2}),
        len(data),
        TrainSettings(steps=5, learning_rate=1e-2, batch_size=4, dtype="fp16"),
        progress=lambda step, total, loss: weights.append(
            torch.cat([p.detach().flatten().clone() for p in tuner.adapter().parameters()])
        ),
    )
    assert state.skipped_steps == [3] and state.scaler["scale"] == 2.0**15 and len(state.loss_history) == 5
    assert torch.equal(weights[2], weights[1])  # step 3 left the weights as they were …
    assert not torch.equal(weights[3], weights[2]) and not torch.equal(weights[1], weights[0])
    assert state.optimizer["state"][0]["step"] == 4  # … and AdamW's state: four real optimizer steps
    assert math.isfinite(state.loss_history[2]) and state.loss_history[2] > 1e30


def test_schedules():
    assert [lr_multiplier("constant", s, 10, 2) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_multiplier("linear", 2, 10, 2) == 1.0 and lr_multiplier("linear", 6, 10, 2) == 0.5
    assert lr_multiplier("cosine", 2, 10, 2) == 1.0 and lr_multiplier("cosine", 6, 10, 2) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 10, 10, 2) == pytest.approx(0.0, abs=eps(torch.float64))  # ½(1 + cos π), float64
    with pytest.raises(ValueError, match="scheduler"):
        lr_multiplier("exponential", 3, 10, 0)


def test_checkpoints_and_cancel_keep_the_last_checkpoint():
    data = dataset(8)
    tuner = wrap(mlp(), LoraConfig(r=2, target_modules=TARGETS))
    saved, calls = [], []

    def progress(step, total, loss):
        calls.append(step)
        if step == 7:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        train(
            tuner.adapter().parameters(),
            mse_loss(tuner, data, data),
            len(data),
            TrainSettings(steps=20, checkpoint_every=3),
            progress=progress,
            on_checkpoint=saved.append,
        )
    assert calls == list(range(1, 8)) and [s.step for s in saved] == [3, 6]
    assert len(saved[-1].loss_history) == 6 and saved[-1].optimizer["state"]


def test_gradient_checkpointing_changes_nothing_but_memory():
    data = dataset(8)
    histories = []
    for checkpointed in (False, True):
        model = mlp()
        tuner = wrap(model, LoKrConfig(r=2, module_dropout=0.3, target_modules=TARGETS))
        train(
            tuner.adapter().parameters(),
            mse_loss(tuner, data, data * 0.5),
            len(data),
            TrainSettings(steps=5, learning_rate=1e-2, batch_size=4),
            checkpointed=[model[0], model[2]] if checkpointed else [],
        )
        assert "forward" not in model[0].__dict__ or model[0].forward.__name__ == "forward"
        histories.append(tuner.adapter().modules["0"].lokr_w1.detach().clone())
    assert torch.equal(histories[0], histories[1])


def test_bf16_autocast_trains():
    data = dataset(8)
    tuner = wrap(mlp(), LoraConfig(r=2, target_modules=TARGETS))
    state = train(
        tuner.adapter().parameters(),
        mse_loss(tuner, data, data),
        len(data),
        TrainSettings(steps=3, dtype="bf16", optimizer="SGD", learning_rate=1e-2),
    )
    assert all(math.isfinite(x) for x in state.loss_history)


def test_saved_metadata_and_resume_from_the_file(tmp_path):
    data = dataset(8)
    config = LoKrConfig(r=2, alpha=4, decompose_factor=4, target_modules=TARGETS)
    tuner = wrap(mlp(), config)
    settings = TrainSettings(steps=4, learning_rate=1e-2, seed=9)
    state = train(tuner.adapter().parameters(), mse_loss(tuner, data, data), len(data), settings)
    record = TrainingRecord.of(
        settings, steps=state.step, dataset_size=8, base_model="tiny-mlp", loss_history=state.loss_history
    )
    assert (record.learning_rate, record.optimizer, record.scheduler, record.seed) == (1e-2, "AdamW", "constant", 9)
    path = save_trained(tuner.adapter(), tmp_path / "lokr.safetensors", record=record)
    meta = lyco_core.load_adapter(path).metadata
    assert (meta["ss_steps"], meta["ss_learning_rate"], meta["ss_optimizer"], meta["ss_seed"]) == (
        "4",
        "0.01",
        "AdamW",
        "9",
    )
    assert meta["ss_num_train_images"] == "8" and meta["ss_sd_model_name"] == "tiny-mlp"
    assert json.loads(meta["ss_network_args"])["algo"] == "lokr" and meta["ss_network_dim"] == "2"
    # the metadata keeps 6 decimals (round(x, 6)): half a unit of the 6th decimal, the format's error, not rounding
    assert json.loads(meta["lyco_loss_history"]) == pytest.approx(state.loss_history, rel=0, abs=0.5e-6)

    source = lyco_core.load_adapter(path)
    resumed = resume_state(source)  # no sidecar: steps and loss curve from the metadata
    assert resumed.step == 4 and resumed.optimizer is None and len(resumed.loss_history) == 4
    save_state(state, state_path(path))
    assert resume_state(source).optimizer is not None

    fresh = wrap(mlp(), config)
    load_weights(fresh.adapter(), source)
    for name, trainable in fresh.adapter().modules.items():
        weight = fresh.adapter().layers[name].weight
        expected = tuner.adapter().modules[name](weight)  # the same factors: the same float32 result
        torch.testing.assert_close(trainable(weight), expected, **close(expected, depth=1))
    with pytest.raises(ValueError, match="cannot resume"):
        load_weights(wrap(mlp(), LoKrConfig(r=2, decompose_factor=8, target_modules=TARGETS)).adapter(), source)
