"""Load Adapter (block weights): per-block strength with each method's own law.

A block weight is just a per-module strength: a module in block b is patched at ``strength × w_b`` by the same
LycoPatch the plain loader uses, so additive methods scale their delta, OFT/BOFT interpolate the rotation toward
identity and DoRA follows its law — nothing here does math. Patches are grouped by effective strength and added
with one ``add_patches`` per distinct value (ComfyUI's ``strength_patch``); modules at weight 0 are not patched at
all, so their weights stay bit-identical.
"""

from __future__ import annotations

from collections import defaultdict

from comfy_api.latest import io, ui

from .block_weights import OTHER, PRESETS, BlockWeights, block_of, model_family, parse_block_weights
from .host import drop_refused, key_name, build_patches, load_cached, no_match_error
from .loaders import CATEGORY, adapter_input, strength_input


def _weighted_groups(patches: dict, strength: float, weights: BlockWeights, side: str) -> dict[float, dict]:
    """{effective strength: {key: patch}} without the keys whose effective strength is 0."""
    groups: dict[float, dict] = defaultdict(dict)
    for key, patch in patches.items():
        effective = strength * weights.weight(block_of(key_name(key), side))
        if effective != 0:
            groups[effective][key] = patch
    return groups


def _patch_side(target, patches: dict, strength: float, weights: BlockWeights, side: str, coverage):
    """A clone of ``target`` (ModelPatcher or CLIP) carrying the weighted patches, or ``target`` if none apply."""
    groups = _weighted_groups(patches, strength, weights, side)
    if target is None or not groups:
        return target
    clone = target.clone()
    accepted, offered = set(), {}
    for effective, group in groups.items():
        accepted.update(clone.add_patches(group, effective))
        offered.update(group)
    drop_refused(coverage, side, offered, accepted)
    return clone


NAMES_UP_TO = 4  # a block's module names are listed when it has this many or fewer (else its count alone)


def _report(coverage, weights: BlockWeights, family: str, strength_model: float, strength_clip: float) -> str:
    """Which modules got which weight: one line per block (weight, effective strength, module count; the names of a
    block with few modules: BASE alone has 72 on an SD1.5 text encoder, too many to read on one line)."""
    by_block: dict[str, list[str]] = defaultdict(list)
    for side, strength in (("unet", strength_model), ("clip", strength_clip)):
        for module, key in getattr(coverage, side).items():
            by_block[block_of(key, side)].append(module)
    lines = [
        coverage.details(),
        f"block weights: {weights.source} ({weights.block_set}, {family} presets) · "
        f"strength_model {strength_model:g} · strength_clip {strength_clip:g}",
    ]
    order = [
        "BASE",
        *sorted(
            (b for b in by_block if b not in ("BASE", OTHER)), key=lambda b: ({"IN": 0, "M0": 1, "OU": 2}[b[:2]], b)
        ),
        OTHER,
    ]
    for block in (b for b in order if b in by_block):
        factor = weights.weight(block)
        effective = factor * (strength_clip if block == "BASE" else strength_model)
        state = f"strength {effective:g}" if effective else "off (unpatched)"
        modules = by_block[block]
        names = f": {', '.join(sorted(modules))}" if len(modules) <= NAMES_UP_TO else ""
        lines.append(
            f"{block:<5} ×{factor:g} → {state}: {len(modules)} module{'s' if len(modules) != 1 else ''}{names}"
        )
    return "\n".join(lines)


def apply_block_weights(adapter, model, clip, strength_model: float, strength_clip: float, text: str):
    """(new model, new clip, report). Inputs are never mutated."""
    unet_patches, clip_patches, coverage = build_patches(adapter, model, clip)
    if not unet_patches and not clip_patches:
        raise no_match_error(adapter, coverage)
    family = model_family(model.model_state_dict().keys())
    weights = parse_block_weights(text, family)
    if unet_patches and all(block_of(key_name(k), "unet") == OTHER for k in unet_patches):
        raise ValueError(
            "block weights need an SD1.x/SD2/SDXL UNet (input_blocks / middle_block / output_blocks); "
            "this model has none of its patched layers in such blocks — use 'Load LyCORIS Adapter'"
        )
    new_model = _patch_side(model, unet_patches, strength_model, weights, "unet", coverage)
    new_clip = _patch_side(clip, clip_patches, strength_clip, weights, "clip", coverage)
    return new_model, new_clip, _report(coverage, weights, family, strength_model, strength_clip)


class LoadAdapterBlockWeight(io.ComfyNode):
    """The block-weight loader node; see the module docstring for the law."""

    @classmethod
    def define_schema(cls):
        presets = ", ".join(PRESETS["sd15"])
        return io.Schema(
            node_id="LyCOLoadAdapterBlockWeight",
            display_name="Load Adapter (block weights)",
            category=CATEGORY,
            description="Any LyCORIS-family adapter with a weight per UNet block (LBW order) and BASE for the text "
            "encoder; each module is applied at strength × its block weight with its method's own law "
            "(OFT/BOFT interpolate the rotation, never scale a delta).",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                adapter_input(),
                strength_input("strength_model", "Strength on the diffusion model, times each block's weight."),
                strength_input("strength_clip", "Strength on the text encoder, times BASE."),
                io.String.Input(
                    "block_weights",
                    default="ALL",
                    tooltip=f"A preset ({presets}) or comma-separated weights: SD1.x 17 or 26 "
                    "values, SDXL 12 or 20 (BASE first). Unnamed blocks get 0.",
                ),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.String.Output(display_name="summary")],
        )

    @classmethod
    def validate_inputs(cls, block_weights):
        """Early check of a typed value (None when linked from another node: checked when it runs)."""
        if block_weights is None:
            return True
        errors = []
        for family in PRESETS:
            try:
                parse_block_weights(block_weights, family)
                return True
            except ValueError as exc:
                errors.append(str(exc))
        return errors[0]

    @classmethod
    def execute(cls, model, clip, adapter_name, strength_model, strength_clip, block_weights):
        adapter = load_cached(adapter_name)
        new_model, new_clip, text = apply_block_weights(
            adapter, model, clip, strength_model, strength_clip, block_weights
        )
        return io.NodeOutput(new_model, new_clip, text, ui=ui.PreviewText(text))
