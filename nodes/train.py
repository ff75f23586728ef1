"""Train LyCORIS Adapter: any lyco_core.train config on MODEL (and, with CLIP and captions, the text encoder) from
ComfyUI's training data (LATENT + CONDITIONING lists, as the dataset nodes make them).

Checkpoints (LyCORIS layout with ``ss_*`` metadata, and the optimizer/scheduler/RNG state beside each as
``.train-state.pt``) go to ``output/lyco_train/<name>/<name>_<step>.safetensors`` every ``checkpoint_every`` steps
and at the end; that folder is listed among ComfyUI's ``loras``. ``steps`` are run on top of a resumed adapter's
steps; its loss curve continues. Outputs: MODEL/CLIP with the trained adapter applied (as our loader applies the
file), the ADAPTER (lyco_core Adapter of the final file), and the loss history (``LOSS_MAP``).
"""

from __future__ import annotations

import os
import time

import torch

import comfy.model_management
import folder_paths
from comfy_api.latest import io, ui

from ..lyco_core import load_adapter
from ..lyco_core.train import (
    SCHEDULERS,
    AttachedAdapter,
    TrainingRecord,
    TrainSettings,
    load_weights,
    optimizer_names,
    resume_state,
    save_state,
    save_trained,
    state_path,
    train,
)
from .host import apply_adapter, log
from .train_configs import CONFIG_TYPE
from .train_host import (
    DenoiseLoss,
    Progress,
    build_on,
    checkpoint_units,
    file_names,
    install,
    text_encoder,
    training_clone,
)

ADAPTER_TYPE = io.Custom("LYCO_ADAPTER")
LOSS_TYPE = io.Custom("LOSS_MAP")
CHECKPOINT_DIR = "lyco_train"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def checkpoint_root() -> str:
    return os.path.join(folder_paths.get_output_directory(), CHECKPOINT_DIR)


folder_paths.add_model_folder_path("loras", checkpoint_root())


def _samples(latents: list[dict]) -> list[torch.Tensor]:
    """Every latent of every LATENT in the list, as ``(1, C, H, W)`` tensors."""
    return [sample[None] for latent in latents for sample in latent["samples"]]


def _conditionings(positive: list, count: int) -> list:
    """One conditioning per sample: a single one is repeated; otherwise the counts must agree."""
    if len(positive) == 1:
        return positive * count
    if len(positive) != count:
        raise ValueError(f"{len(positive)} conditionings for {count} latents; give one, or one per latent")
    return positive


def _combined(unet: AttachedAdapter, te: AttachedAdapter | None) -> AttachedAdapter:
    if te is None:
        return unet
    return AttachedAdapter(
        "default", unet.config, {**unet.modules, **te.modules}, {**unet.layers, **te.layers}, attached=False
    )


def _trend(losses: list[float]) -> str:
    """The report's mean loss of the run's first and last quarter: each step's loss depends on the noise level drawn
    for it (single steps jump by 10× either way), the means show where training went (empty for under 8 steps)."""
    if len(losses) < 8:
        return ""
    q = len(losses) // 4
    first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
    return f" (mean of the first/last {q} steps: {first:.5f} → {last:.5f})"


def _skipped(steps: list[int], done: int) -> str:
    """The report's note on fp16 steps skipped for inf/NaN gradients in this run (empty when none)."""
    ours = [step for step in steps if step > done]
    if not ours:
        return ""
    shown = ", ".join(map(str, ours[:5])) + (", …" if len(ours) > 5 else "")
    return f"; {len(ours)} step(s) skipped on fp16 overflow ({shown})"


class TrainAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOTrain",
            display_name="Train LyCORIS Adapter",
            category="training/LyCORIS",
            description="Trains a LoRA/LoHa/LoKr/OFT/BOFT/GLoRA/(IA)³/DoRA adapter (from a config node) on LATENT + "
            "CONDITIONING data; optional text-encoder training from captions; checkpoints and resume.",
            is_input_list=True,
            not_idempotent=True,
            inputs=[
                io.Model.Input("model", tooltip="The model to train the adapter for."),
                CONFIG_TYPE.Input("config", tooltip="A LyCORIS config node: method, rank, targets, dropouts…"),
                io.Latent.Input("latents", tooltip="Training latents (a batch, or a list from the dataset nodes)."),
                io.Conditioning.Input("positive", tooltip="Conditioning: one for all latents, or one per latent."),
                io.Int.Input(
                    "steps",
                    default=100,
                    min=1,
                    max=1_000_000,
                    tooltip="Optimizer steps to run (on top of the steps of an adapter resumed from).",
                ),
                io.Int.Input("batch_size", default=1, min=1, max=1024, tooltip="Latents per micro-batch."),
                io.Int.Input(
                    "grad_accumulation", default=1, min=1, max=1024, tooltip="Micro-batches per optimizer step."
                ),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-8,
                    max=1.0,
                    step=1e-6,
                    tooltip="Learning rate of the diffusion-model adapter.",
                ),
                io.Float.Input(
                    "text_encoder_lr",
                    default=5e-5,
                    min=0.0,
                    max=1.0,
                    step=1e-6,
                    tooltip="Learning rate of the text-encoder adapter (with CLIP and captions).",
                ),
                io.Combo.Input(
                    "optimizer",
                    options=optimizer_names(),
                    default="AdamW",
                    tooltip="AdamW8bit is offered when bitsandbytes is installed.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(SCHEDULERS),
                    default="constant",
                    tooltip="Learning-rate schedule after the warmup.",
                ),
                io.Int.Input("warmup_steps", default=0, min=0, max=100_000, tooltip="Linear warmup steps."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFF,
                    control_after_generate=True,  # the frontend adds this widget after any "seed"; say so
                    tooltip="Initialisation, batches, noise.",
                ),
                io.Combo.Input(
                    "training_dtype",
                    options=list(DTYPES),
                    default="bf16",
                    tooltip="Compute dtype of the forward pass (the adapter itself stays fp32). fp16 is "
                    "for GPUs without bf16: the loss is scaled against underflow, and a step "
                    "whose gradients overflow is skipped (counted in the report). On CPU fp16 "
                    "is very slow (convolution backward); use bf16 or fp32 there.",
                ),
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=True,
                    tooltip="Recompute activations in the backward pass: less memory, more time.",
                ),
                io.Int.Input(
                    "checkpoint_every",
                    default=0,
                    min=0,
                    max=1_000_000,
                    tooltip="Write a checkpoint every N steps (0 = only at the end).",
                ),
                io.String.Input("name", default="lyco_train", tooltip="Name of the run: output/lyco_train/<name>/."),
                io.Clip.Input("clip", optional=True, tooltip="Also train the text encoder (needs captions)."),
                io.String.Input(
                    "captions",
                    optional=True,
                    force_input=True,
                    tooltip="Captions (one, or one per latent) encoded through the trained CLIP.",
                ),
                ADAPTER_TYPE.Input(
                    "resume_from",
                    optional=True,
                    tooltip="An adapter trained with the same config "
                    "(e.g. a checkpoint): its weights, steps, loss curve and optimizer state.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                io.Clip.Output(display_name="clip"),
                ADAPTER_TYPE.Output(display_name="adapter"),
                LOSS_TYPE.Output(display_name="loss"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, config, latents, positive, captions=None, **options):
        o = {k: v[0] if isinstance(v, list) else v for k, v in options.items()}
        model, config = model[0], config[0]
        samples = _samples(latents)
        conds = _conditionings(positive, len(samples))
        clip = o.get("clip")
        if clip is not None and not captions:
            raise ValueError("text-encoder training needs captions (one, or one per latent); or leave clip unset")
        captions = (captions * len(samples) if len(captions or []) == 1 else captions) if clip is not None else None
        if captions is not None and len(captions) != len(samples):
            raise ValueError(f"{len(captions)} captions for {len(samples)} latents")
        with torch.inference_mode(False), torch.enable_grad():
            return cls._run(model, clip, config, samples, conds, captions, o)

    @classmethod
    def _run(cls, model, clip, config, samples, conds, captions, o):
        started = time.time()
        unet_patcher = training_clone(model)
        if o["training_dtype"] == "fp16" and unet_patcher.load_device.type == "cpu":
            log.warning(
                "[LyCO train] fp16 on CPU works but is slow: torch's float16 convolution backward has no "
                "fast CPU kernel (about 30× slower steps than fp32 on an SD1.5 UNet); bf16 or fp32 are the "
                "CPU choices"
            )
        unet_patcher.set_model_compute_dtype(DTYPES[o["training_dtype"]])
        unet_patcher.model.requires_grad_(False)
        te, te_clip, encode = None, None, None
        with torch.random.fork_rng(devices=[]):  # the adapters' initialisation, seeded, ComfyUI's RNG untouched
            torch.manual_seed(o["seed"])
            unet = build_on(unet_patcher, config, torch.float32, unet_only=True)
            if captions is not None:
                te_clip = training_clone(clip)
                te_clip.patcher.model.requires_grad_(False)
                te = build_on(te_clip.patcher, config, torch.float32, unet_only=False)
        install(unet_patcher, unet)
        if te is not None:
            install(te_clip.patcher, te)
            encode = text_encoder(te_clip, captions)
        adapter = _combined(unet, te)
        name_of = file_names(model, te_clip)

        source = o.get("resume_from")
        state = None
        if source is not None:
            load_weights(adapter, source, name_of)
            state = resume_state(source)
        done = state.step if state is not None else 0
        settings = TrainSettings(
            steps=done + o["steps"],
            learning_rate=o["learning_rate"],
            optimizer=o["optimizer"],
            scheduler=o["scheduler"],
            warmup_steps=o["warmup_steps"],
            batch_size=o["batch_size"],
            grad_accumulation=o["grad_accumulation"],
            seed=o["seed"],
            checkpoint_every=o["checkpoint_every"],
            dtype=o["training_dtype"],
        )
        groups = [{"params": unet.parameters(), "lr": o["learning_rate"]}]
        if te is not None:
            groups.append({"params": te.parameters(), "lr": o["text_encoder_lr"]})
        for group in groups:
            for parameter in group["params"]:
                parameter.requires_grad_(True)

        patchers = [unet_patcher] + ([te_clip.patcher] if te_clip is not None else [])
        comfy.model_management.load_models_gpu(patchers, force_full_load=True)
        record = TrainingRecord.of(
            settings,
            text_encoder_lr=o["text_encoder_lr"] if te is not None else None,
            dataset_size=len(samples),
            base_model=type(model.model.model_config).__name__,
            started_at=started,
            gradient_checkpointing=o["gradient_checkpointing"],
        )
        folder = os.path.join(checkpoint_root(), o["name"])
        written = []

        def checkpoint(snapshot):
            record.steps, record.loss_history = snapshot.step, snapshot.loss_history
            path = save_trained(
                adapter,
                os.path.join(folder, f"{o['name']}_{snapshot.step:06d}.safetensors"),
                record=record,
                name_of=name_of,
                overwrite=True,
            )
            save_state(snapshot, state_path(path))
            written.append(str(path))

        units = checkpoint_units(unet_patcher.model.diffusion_model) if o["gradient_checkpointing"] else []
        progress = Progress(settings.steps, cls.hidden.unique_id if cls.hidden is not None else None)
        progress.bar.update_absolute(done, settings.steps)
        loss = DenoiseLoss(unet_patcher, samples, conds, o["seed"], encode)
        for trainable in adapter.modules.values():
            trainable.train()
        final = train(
            groups,
            loss,
            len(samples),
            settings,
            progress=progress,
            on_checkpoint=checkpoint,
            state=state,
            checkpointed=units,
        )

        trained = load_adapter(written[-1])
        new_model, new_clip, coverage = apply_adapter(trained, model, clip if te is not None else None, 1.0, 1.0)
        report = (
            f"{config.method}: {len(adapter.modules)} modules ({len(unet.modules)} UNet"
            f"{f', {len(te.modules)} text encoder' if te is not None else ''}), steps {done + 1}–{final.step}, "
            f"loss {final.loss_history[done]:.5f} → {final.loss_history[-1]:.5f}{_trend(final.loss_history[done:])}"
            f"{_skipped(final.skipped_steps, done)}\nsaved {written[-1]}\n" + coverage.line()
        )
        return io.NodeOutput(
            new_model,
            new_clip if clip is not None else clip,
            trained,
            {"loss": list(final.loss_history)},
            ui=ui.PreviewText(report),
        )
