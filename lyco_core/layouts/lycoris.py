"""LyCORIS / kohya layout: ``<prefix>_<module path with '.' written as '_'>.<param>``; alpha is a tensor.

Prefixes: ``lora_unet_`` (UNet/DiT), ``lora_te_``/``lora_te1_``/``lora_te2_``/``lora_te3_`` (text encoders),
``lycoris_`` (generic wrapper, SimpleTuner), ``lora_transformer_`` (OneTrainer), ``oft_unet_`` (kohya OFT),
``lora_prior_unet_``. LyCORIS 2.x may end a name with ``_``. The mangling is not invertible, so names are matched
forward from the model's paths (keymap.py), never split on ``_``.
"""

from __future__ import annotations

import torch

from .base import Layout, ModulePath, Written, refuse

PREFIX_HINTS = {
    "lora_unet_": ("diffusion_model", "unet"),
    "lora_prior_unet_": ("prior", "diffusion_model"),
    "lora_te1_": ("te1", "clip_l", "text_encoder."),
    "lora_te2_": ("te2", "clip_g", "text_encoder_2"),
    "lora_te3_": ("te3", "t5", "text_encoder_3"),
    "lora_te_": ("te", "clip", "text_encoder", "cond_stage"),
    "lora_transformer_": ("diffusion_model", "transformer"),
    "lycoris_": (),
    "oft_unet_": ("diffusion_model", "unet"),
}


class LycorisLayout(Layout):
    name = "lycoris"

    @staticmethod
    def owns(module_names, config, metadata):
        return True  # the fallback: undotted module names

    def module_path(self, module_name):
        for prefix, hints in PREFIX_HINTS.items():
            if module_name.startswith(prefix):
                return ModulePath(module_name[len(prefix) :].rstrip("_"), True, hints)
        return ModulePath(module_name.rstrip("_"), True)


# --- writing ---------------------------------------------------------------------------------------------------
_SCALED = ("lora", "loha", "lokr", "glora")
_NOT_HERE = {
    "oft_R.weight": "PEFT OFT rotates input columns (its own Cayley form); LyCORIS OFT rotates output rows",
    "oft_r": "PEFT OFT rotates input columns (its own Cayley form); LyCORIS OFT rotates output rows",
    "boft_R": "PEFT BOFT rotates input columns; LyCORIS BOFT rotates output rows",
    "lora_up.bias": "PEFT lora_B.bias changes the layer bias, which a LyCORIS LoRA cannot",
}


def alpha_tensor(value: float) -> torch.Tensor:
    """A 0-dim float32 alpha (kept float32 in fp16/bf16 files, so ``alpha/r`` survives the cast)."""
    return torch.tensor(float(value), dtype=torch.float32)


def _ia3_from_peft(module, has_bias: bool | None) -> dict[str, torch.Tensor]:
    """PEFT ``W ⊙ l`` as LyCORIS ``W ⊙ (1 + w)``: ``w = l − 1`` (the strength laws coincide); refused where PEFT
    would also scale a bias (or may: unknown without the model)."""
    gain = module.params["ia3_l"]
    on_input = module.on_input()
    if not on_input and has_bias is not False:
        raise ValueError(
            "PEFT (IA)³ also scales this layer's bias, which LyCORIS IA3 does not"
            + (" (the model, --base, would tell whether the layer has one)" if has_bias is None else "")
        )
    weight = gain - 1 if gain.ndim == 4 else (gain - 1).reshape(-1)
    return {"weight": weight, "on_input": torch.tensor(int(on_input), dtype=torch.int64)}


def lycoris_params(module, has_bias: bool | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(canonical parameters in LyCORIS form, note); raises ValueError with the reason when not expressible.

    Scaled methods get ``alpha = scale·r`` (the layout's scale, e.g. a PEFT config's, kept exactly); LoKr with
    both halves full has LyCORIS scale 1, so another scale is folded into ``lokr_w1``; PEFT DoRA's
    ``magnitude`` becomes an on-output ``dora_scale``.
    """
    for key, why in _NOT_HERE.items():
        if key in module.params:
            raise ValueError(why)
    if module.algo == "saved":
        raise ValueError("a PEFT modules_to_save copy replaces the whole layer; LyCORIS stores differences only")
    if "ia3_l" in module.params:
        return _ia3_from_peft(module, has_bias), ""
    params = {k: v for k, v in module.params.items() if k not in ("alpha", "magnitude")}
    note = ""
    if "magnitude" in module.params:
        up = module.params["lora_up.weight"]
        params["dora_scale"] = module.params["magnitude"].reshape(-1, *[1] * (up.ndim - 1))
        note = "PEFT DoRA as LyCORIS DoRA: equal at strength 1, LyCORIS interpolates the rescale at other strengths"
    if module.algo == "lokr" and module.full_matrix:
        scale = module.scale_value()
        if scale != 1.0:
            params["lokr_w1"] = module.params["lokr_w1"] * scale
            note = f"scale {scale:g} folded into lokr_w1 (LyCORIS full/full LoKr has scale 1)"
        params["alpha"] = module.params.get("alpha", alpha_tensor(1.0))
    elif module.algo in _SCALED:
        params["alpha"] = alpha_tensor(module.scale_value() * module.rank())
    elif "alpha" in module.params:
        params["alpha"] = module.params["alpha"]
    return params, note


def write(adapter, targets: dict[str, tuple[str, str]], has_bias: dict[str, bool] | None = None) -> Written:
    """The adapter in LyCORIS/kohya form under ``prefix + path`` names (see ``lycoris_params``)."""
    written, problems = Written({}), {}
    for name, module in adapter.modules.items():
        try:
            params, note = lycoris_params(module, None if has_bias is None else has_bias.get(name))
        except ValueError as exc:
            problems[name] = str(exc)
            continue
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in params.items()})
        if note and note not in written.notes:
            written.notes.append(note)
    if problems:
        raise refuse("LyCORIS", problems, adapter.path)
    return written
