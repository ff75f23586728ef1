"""The one naming table: the parts of a model that adapters target (components), and every way a file or a
checkpoint spells them (spellings). Layouts, the matcher (keymap.py), conversion (convert/names.py) and extraction
(convert/extract.py) read these tables and nothing else; a new trainer's prefix is one row here.

A **component** is a part of a pipeline: the denoiser (``unet``, ``transformer``, ``prior``), a text encoder
(``te`` — the only or first one, written ``lora_te_`` when alone —, ``te1``, ``te2``, ``te3``) or an unnamed model
(``model``: LyCORIS' generic ``lycoris_`` wrapper, a PEFT folder). It says what LyCORIS/kohya and diffusers write
for it, and its **family**, the kohya prefixes a host's key map may know it by.

A **spelling** is a prefix in one layout:

* ``lycoris``: ``<prefix><path with '.' written '_'>`` (kohya sd-scripts, LyCORIS, OneTrainer, SimpleTuner);
* ``diffusers``: ``<prefix><dotted path>`` (``save_lora_weights``: one prefix per pipeline component);
* ``comfy``: ComfyUI's own dotted paths (its trainer, hand-made files);
* ``peft``: ``base_model.model.<dotted path>`` (one model per folder);
* ``checkpoint``: the roots of a full model's weight keys (extraction names the kohya module of each weight).

Its **hints** are substrings of model weight keys that say which sub-model the spelling points into; the matcher
uses them only to choose between candidates a path alone leaves ambiguous (keymap.py, rule 4). They belong to the
spelling, not the component: diffusers' ``text_encoder.`` is always CLIP-L (hints ``te1``, ``clip_l``) although a
lone text encoder is written ``lora_te_``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """A model part: ``kohya`` prefix written for it, ``diffusers`` pipeline prefix (None where a pipeline has
    none), ``family`` (``"unet"`` for denoisers, the encoder's own name for text encoders, None for a generic
    model), ``same_as`` the component whose layers it shares (``te`` is ``te1``'s layers, ``transformer`` names the
    same denoiser as ``unet``), for grouping modules of one layer across layouts."""

    name: str
    kohya: str
    diffusers: str | None
    family: str | None
    same_as: str | None = None

    @property
    def text_encoder(self) -> bool:
        return self.family is not None and self.family != "unet"


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("unet", "lora_unet_", "unet.", "unet"),
        Component("transformer", "lora_transformer_", "transformer.", "unet", same_as="unet"),
        Component("prior", "lora_prior_unet_", None, "unet"),
        Component("te", "lora_te_", "text_encoder.", "te", same_as="te1"),
        Component("te1", "lora_te1_", "text_encoder.", "te1"),
        Component("te2", "lora_te2_", "text_encoder_2.", "te2"),
        Component("te3", "lora_te3_", "text_encoder_3.", "te3"),
        Component("model", "lycoris_", None, None),
    )
}

# Kohya prefixes a host's key map may use for a module of each family, most specific first (ComfyUI maps
# ``lora_te_`` and ``lora_te1_`` both to CLIP-L; ``lycoris_`` and ``lora_transformer_`` to the denoiser).
FAMILY_PREFIXES: dict[str, tuple[str, ...]] = {
    "unet": ("lora_unet_", "lycoris_", "lora_transformer_"),
    "te": ("lora_te_", "lora_te1_"),
    "te1": ("lora_te1_", "lora_te_"),
    "te2": ("lora_te2_",),
    "te3": ("lora_te3_",),
}
# Dotted roots a host's key map may use for a module of each kind (ComfyUI: ``diffusion_model.``/``transformer.``
# for the denoiser, ``text_encoders.`` for text encoders).
DENOISER_ROOTS = ("diffusion_model.", "transformer.")
TEXT_ENCODER_ROOT = "text_encoders."

_UNET = ("diffusion_model", "unet")


@dataclass(frozen=True)
class Spelling:
    """``prefix`` as ``layout`` writes ``component``; ``hints`` (see the module docstring)."""

    layout: str
    prefix: str
    component: str
    hints: tuple[str, ...] = ()


SPELLINGS: tuple[Spelling, ...] = (
    Spelling("lycoris", "lora_unet_", "unet", _UNET),
    Spelling("lycoris", "lora_prior_unet_", "prior", ("prior", "diffusion_model")),
    Spelling("lycoris", "lora_te1_", "te1", ("te1", "clip_l", "text_encoder.")),
    Spelling("lycoris", "lora_te2_", "te2", ("te2", "clip_g", "text_encoder_2")),
    Spelling("lycoris", "lora_te3_", "te3", ("te3", "t5", "text_encoder_3")),
    Spelling("lycoris", "lora_te_", "te", ("te", "clip", "text_encoder", "cond_stage")),
    Spelling("lycoris", "lora_transformer_", "transformer", ("diffusion_model", "transformer")),  # OneTrainer
    Spelling("lycoris", "lycoris_", "model"),  # LyCORIS' generic wrapper (SimpleTuner)
    Spelling("lycoris", "oft_unet_", "unet", _UNET),  # kohya's OFT
    Spelling("diffusers", "unet.", "unet", ("unet", "diffusion_model")),
    Spelling("diffusers", "transformer.", "transformer", ("transformer", "diffusion_model")),
    Spelling("diffusers", "text_encoder.", "te", ("text_encoder.", "te1", "clip_l")),
    Spelling("diffusers", "text_encoder_2.", "te2", ("text_encoder_2", "te2", "clip_g")),
    Spelling("diffusers", "text_encoder_3.", "te3", ("text_encoder_3", "t5")),
    Spelling("comfy", "diffusion_model.", "unet", ("diffusion_model",)),
    Spelling("comfy", "model.diffusion_model.", "unet", ("diffusion_model",)),
    Spelling("comfy", "text_encoders.", "te", ("text_encoders", "clip", "cond_stage")),
    Spelling("peft", "base_model.model.", "model"),
    # roots of full checkpoints (ComfyUI's, the original LDM/SGM ones, diffusers pipelines)
    Spelling("checkpoint", "model.diffusion_model.", "unet"),
    Spelling("checkpoint", "diffusion_model.", "unet"),
    Spelling("checkpoint", "cond_stage_model.transformer.", "te"),
    Spelling("checkpoint", "conditioner.embedders.0.transformer.", "te1"),
    Spelling("checkpoint", "conditioner.embedders.1.model.", "te2"),
    Spelling("checkpoint", "clip_l.transformer.", "te1"),
    Spelling("checkpoint", "clip_g.transformer.", "te2"),
    Spelling("checkpoint", "unet.", "unet"),
    Spelling("checkpoint", "text_encoder.", "te1"),
    Spelling("checkpoint", "text_encoder_2.", "te2"),
    Spelling("checkpoint", "transformer.", "transformer"),
)

PEFT_PREFIX = next(s.prefix for s in SPELLINGS if s.layout == "peft")


def spelled(layout: str, name: str) -> tuple[Spelling | None, str]:
    """(the spelling of ``layout`` that ``name`` starts with, the rest of ``name``); (None, name) if none does."""
    for spelling in SPELLINGS:
        if spelling.layout == layout and name.startswith(spelling.prefix):
            return spelling, name[len(spelling.prefix) :]
    return None, name


def prefixes(layout: str) -> tuple[str, ...]:
    """Every prefix ``layout`` spells a component with."""
    return tuple(s.prefix for s in SPELLINGS if s.layout == layout)


def kohya_prefix(component: str, te_split: bool = False) -> str:
    """The LyCORIS/kohya prefix written for ``component``; a lone text encoder is ``lora_te_``, one of two
    ``lora_te1_``."""
    return COMPONENTS["te1" if component == "te" and te_split else component].kohya
