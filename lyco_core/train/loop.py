"""The host-agnostic training loop: the host supplies the data (as a loss function over sample indices), the
progress callback (which may raise to cancel) and where checkpoints go.

One optimizer step = ``grad_accumulation`` micro-batches; each micro-batch draws ``batch_size`` indices from a
permutation seeded by ``(seed, micro-batch number)``, so a resumed run sees exactly the batches the uninterrupted
run would have. Loss per step = mean over its micro-batches; gradients are ``∇(loss_k / grad_accumulation)``
summed. The global torch RNG (dropouts, noise the host draws from it) is seeded with ``seed`` at the start, saved in
every state and restored on resume, and given back to the caller unchanged afterwards (``fork_rng``).

``dtype``: the forward runs under ``torch.autocast`` in bfloat16 or float16 (the trained parameters stay float32).
float16 adds a gradient scaler (``torch.amp.GradScaler``): the loss is multiplied by a scale ``S`` before
``backward``, gradients are divided by ``S`` before clipping and the optimizer step; a step whose gradients hold an
inf/NaN is skipped (no parameter or optimizer-state change, ``S`` halved; ``S`` doubles after 2000 good steps),
recorded in ``TrainState.skipped_steps`` and still counted as a step (its loss stays in the history, the schedule
advances). The scaler's state is part of every saved state, so a resumed float16 run continues exactly.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .checkpointing import gradient_checkpointing
from .optim import make_optimizer, make_scheduler

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainSettings:
    steps: int
    learning_rate: float = 1e-4
    optimizer: str = "AdamW"
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 1
    grad_accumulation: int = 1
    seed: int = 0
    dtype: str = "fp32"  # autocast dtype of the forward: "fp32" (none), "bf16" or "fp16" (with a gradient scaler)
    max_grad_norm: float | None = None
    checkpoint_every: int = 0  # 0 = only when the run ends


@dataclass
class TrainState:
    """Everything a run needs to continue: optimizer steps done, the loss of each, optimizer/scheduler/RNG state,
    and for float16 the gradient scaler's state and the steps (1-based) it skipped on inf/NaN gradients."""

    step: int = 0
    loss_history: list[float] = field(default_factory=list)
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    skipped_steps: list[int] = field(default_factory=list)
    rng: torch.Tensor | None = None
    cuda_rng: list | None = None
    settings: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        return cls(**data)


def batch_indices(seed: int, micro_batch: int, dataset_size: int, batch_size: int) -> list[int]:
    """``batch_size`` indices from a permutation of the dataset seeded by ``(seed, micro_batch)`` (cycled when the
    batch is larger than the dataset)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + micro_batch)
    order = torch.randperm(dataset_size, generator=generator)
    return [int(order[i % dataset_size]) for i in range(batch_size)]


def _devices(groups: list[dict]) -> list[int]:
    return sorted({p.device.index or 0 for g in groups for p in g["params"] if p.device.type == "cuda"})


def train(
    groups: list[dict] | Iterable[nn.Parameter],
    loss_fn: Callable[[list[int], int], torch.Tensor],
    dataset_size: int,
    settings: TrainSettings,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    state: TrainState | None = None,
    checkpointed: list[nn.Module] = (),
) -> TrainState:
    """Run optimizer steps ``state.step … settings.steps − 1`` and return the final state.

    ``groups``: parameter groups (dicts with ``params`` and optional ``lr``) or parameters. ``loss_fn(indices,
    draw)`` returns the scalar loss of those samples; ``draw`` numbers the micro-batches of the whole run (the same
    on resume), for hosts that seed their own noise per micro-batch. ``progress(step, total, loss)`` runs after
    each optimizer step (raise from it to cancel: the exception propagates, the last checkpoint stays as
    written). ``on_checkpoint``
    gets the state every ``checkpoint_every`` steps and at the end. ``checkpointed`` modules run with gradient
    checkpointing during the run.
    """
    groups = [g if isinstance(g, dict) else {"params": [g]} for g in groups]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    if settings.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
    optimizer = make_optimizer(settings.optimizer, groups, settings.learning_rate, settings.weight_decay)
    scheduler = make_scheduler(settings.scheduler, optimizer, settings.steps, settings.warmup_steps)
    device_type = params[0].device.type
    scaler = torch.amp.GradScaler(device_type, enabled=settings.dtype == "fp16")  # disabled: every call a no-op
    state = state or TrainState()
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    if state.scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(state.scaler)
    autocast_dtype = DTYPES[settings.dtype]
    with torch.random.fork_rng(devices=_devices(groups)), gradient_checkpointing(list(checkpointed)):
        if state.rng is not None:
            torch.set_rng_state(state.rng)
            if state.cuda_rng is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state.cuda_rng)
        else:
            torch.manual_seed(settings.seed)
        while state.step < settings.steps:
            total = 0.0
            for micro in range(settings.grad_accumulation):
                draw = state.step * settings.grad_accumulation + micro
                indices = batch_indices(settings.seed, draw, dataset_size, settings.batch_size)
                context = (
                    torch.autocast(device_type, dtype=autocast_dtype)
                    if autocast_dtype is not None
                    else contextlib.nullcontext()
                )
                with context:
                    loss = loss_fn(indices, draw)
                if loss.requires_grad:  # False when module dropout skipped every adapter this time
                    scaler.scale(loss.float() / settings.grad_accumulation).backward()
                total += float(loss.detach())
            if _optimizer_step(optimizer, scaler, params, settings.max_grad_norm):
                state.skipped_steps.append(state.step + 1)
            with warnings.catch_warnings():  # torch's "scheduler before optimizer" warning, when step 1 was skipped
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.loss_history.append(total / settings.grad_accumulation)
            finished = state.step >= settings.steps
            if on_checkpoint is not None and (
                finished or (settings.checkpoint_every and state.step % settings.checkpoint_every == 0)
            ):
                on_checkpoint(_snapshot(state, optimizer, scheduler, scaler, settings))
            if progress is not None:
                progress(state.step, settings.steps, state.loss_history[-1])
    return _snapshot(state, optimizer, scheduler, scaler, settings)


def _optimizer_step(
    optimizer, scaler: torch.amp.GradScaler, params: list[nn.Parameter], max_grad_norm: float | None
) -> bool:
    """Clip (if asked) and step; with an enabled scaler the gradients are unscaled first and the step goes through
    it. True when the scaler skipped the step for inf/NaN gradients, which it signals by lowering its scale.
    Without any gradient (module dropout skipped every adapter) the plain step is the no-op it is in float32."""
    scaled = scaler.is_enabled() and any(p.grad is not None for p in params)
    if scaled:
        scaler.unscale_(optimizer)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not scaled:
        optimizer.step()
        return False
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before


def _snapshot(state: TrainState, optimizer, scheduler, scaler, settings: TrainSettings) -> TrainState:
    """A copy of the run's state (the optimizer's tensors cloned: training goes on updating them in place)."""
    return TrainState(
        step=state.step,
        loss_history=list(state.loss_history),
        optimizer=copy.deepcopy(optimizer.state_dict()),
        scheduler=scheduler.state_dict(),
        rng=torch.get_rng_state(),
        scaler=scaler.state_dict() if scaler.is_enabled() else None,
        skipped_steps=list(state.skipped_steps),
        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        settings=asdict(settings),
    )


def save_state(state: TrainState, path) -> None:
    """Write ``state`` atomically (``torch.save``; loads back with ``weights_only=True``)."""
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, lambda tmp: torch.save(state.to_dict(), tmp), overwrite=True)


def load_state(path) -> TrainState:
    return TrainState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
