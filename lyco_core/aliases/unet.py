"""SD-style UNet paths in both spellings (SD1.x, SD2, SDXL), with the structure read from the model's own keys.

The network: levels going down, each with R resnets, an attention after each resnet on some levels and a
downsampler on all but the last; a middle block (resnet, attention, resnet); levels going up (the deepest first)
with R+1 resnets, attentions as on the way down and an upsampler on all but the last.

* diffusers names blocks by level: ``down_blocks.i.resnets.j``, ``down_blocks.i.attentions.j``,
  ``down_blocks.i.downsamplers.0.conv``, ``mid_block.resnets.j``/``attentions.j``, ``up_blocks.i.…``,
  ``up_blocks.i.upsamplers.0.conv``.
* LDM numbers them in forward order: ``input_blocks.0.0`` is conv_in; then per level ``input_blocks.n.0`` a resnet
  with its attention at ``input_blocks.n.1``, and the downsampler alone as ``input_blocks.n.0.op``;
  ``middle_block.k`` resnet/attention/resnet; ``output_blocks.n.0`` a resnet, ``.1`` its attention, and after a
  level's last resnet the upsampler (``.1.conv``, or ``.2.conv`` behind an attention).

Inside a resnet: norm1 ↔ in_layers.0, conv1 ↔ in_layers.2, time_emb_proj ↔ emb_layers.1, norm2 ↔ out_layers.0,
conv2 ↔ out_layers.3, conv_shortcut ↔ skip_connection. Inside an attention the names agree (norm, proj_in,
transformer_blocks.k.attn1.to_q, ff.net.0.proj, …, proj_out). Top level: conv_in ↔ input_blocks.0.0,
time_embedding.linear_1/2 ↔ time_embed.0/2, add_embedding.linear_1/2 ↔ label_emb.0.0/0.2 (SDXL),
conv_norm_out ↔ out.0, conv_out ↔ out.2.

Aliases carry the other spelling's root (``unet.`` for an LDM model's weights, ``model.diffusion_model.`` for a
diffusers model's), so kohya ``lora_unet_…``, diffusers ``unet.…`` and ComfyUI ``diffusion_model.…`` names all
fit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass

from .base import Alias, roots, weights_under

RESNET_LAYERS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
TOP_LAYERS = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_LDM_KINDS = {
    **dict.fromkeys(("in_layers", "out_layers", "emb_layers", "skip_connection"), "resnet"),
    **dict.fromkeys(("norm", "proj_in", "proj_out", "transformer_blocks"), "attention"),
    "op": "downsampler",
    "conv": "upsampler",
}
_DIFFUSERS_ROOT, _LDM_ROOT = "unet.", "model.diffusion_model."


@dataclass
class UNetStructure:
    """``down[i][j]``: whether resnet j of level i has an attention; ``down_sampled[i]``: whether level i ends in a
    downsampler; ``mid``: the middle block's parts in order; ``up``/``up_sampled`` likewise (level 0 deepest)."""

    down: list[list[bool]]
    down_sampled: list[bool]
    mid: list[str]
    up: list[list[bool]]
    up_sampled: list[bool]


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _parts(path: str, levelled: tuple[str, str], middle: str) -> list[str] | None:
    """``path`` split at dots, with ``0`` inserted after ``middle`` (which has no level number) so every block reads
    ``group.level.…``; None for paths outside these groups."""
    parts = path.split(".")
    if parts[0] == middle:
        return [middle, "0", *parts[1:]]
    return parts if parts[0] in levelled else None


def _levels(blocks: list[tuple[bool | None, bool]]) -> tuple[list[list[bool]], list[bool]]:
    """(levels, sampled) from blocks in order, each (attention flag of its resnet or None for a lone sampler,
    whether a sampler ends the level there); a last level without a sampler ends the list."""
    levels, sampled, level = [], [], []
    for attention, ends in blocks:
        if attention is not None:
            level.append(attention)
        if ends:
            levels.append(level)
            sampled.append(True)
            level = []
    if level:
        levels.append(level)
        sampled.append(False)
    return levels, sampled


def _ldm_parts(paths) -> dict[str, dict[int, dict[int, str]]]:
    """{group: {n: {k: kind}}} for LDM ``input_blocks.n.k.<name>``, ``middle_block.k.<name>``, …"""
    groups: dict[str, dict[int, dict[int, str]]] = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        parts = _parts(path, ("input_blocks", "output_blocks"), "middle_block")
        if parts is None or len(parts) < 4:
            continue
        n, k, kind = _number(parts[1]), _number(parts[2]), _LDM_KINDS.get(parts[3])
        if n is not None and k is not None and kind is not None:
            groups[parts[0]][n][k] = kind
    return groups


def structure_from_ldm(paths) -> UNetStructure | None:
    """The structure LDM paths (below the UNet's root) describe; None when they are not an SD-style UNet."""
    groups = _ldm_parts(paths)
    inputs = [groups["input_blocks"][n] for n in sorted(groups["input_blocks"]) if n > 0]
    outputs = [groups["output_blocks"][n] for n in sorted(groups["output_blocks"])]
    if any(kinds.get(0) not in ("resnet", "downsampler") for kinds in inputs) or any(
        kinds.get(0) != "resnet" for kinds in outputs
    ):
        return None
    down = _levels(
        [(None, True) if kinds[0] == "downsampler" else (kinds.get(1) == "attention", False) for kinds in inputs]
    )
    up = _levels([(kinds.get(1) == "attention", "upsampler" in kinds.values()) for kinds in outputs])
    middle = groups["middle_block"][0]
    return UNetStructure(*down, [middle[k] for k in sorted(middle)], *up)


def structure_from_diffusers(paths) -> UNetStructure:
    """The structure diffusers paths (below the UNet's root) describe."""
    resnets: dict[tuple[str, int], int] = defaultdict(int)
    attentions: dict[tuple[str, int], set[int]] = defaultdict(set)
    sampled: set[tuple[str, int]] = set()
    for path in paths:
        parts = _parts(path, ("down_blocks", "up_blocks"), "mid_block")
        if parts is None or len(parts) < 5 or _number(parts[1]) is None or _number(parts[3]) is None:
            continue
        block, j = (parts[0], int(parts[1])), int(parts[3])
        if parts[2] == "resnets":
            resnets[block] = max(resnets[block], j + 1)
        elif parts[2] == "attentions":
            attentions[block].add(j)
        elif parts[2] in ("downsamplers", "upsamplers"):
            sampled.add(block)

    def levels(group: str) -> tuple[list[list[bool]], list[bool]]:
        count = 1 + max((i for g, i in resnets if g == group), default=-1)
        return (
            [[j in attentions[(group, i)] for j in range(resnets[(group, i)])] for i in range(count)],
            [(group, i) in sampled for i in range(count)],
        )

    mid_attentions = attentions[("mid_block", 0)]
    mid = []
    for j in range(resnets[("mid_block", 0)]):
        mid += ["resnet"] + (["attention"] if j in mid_attentions else [])
    return UNetStructure(*levels("down_blocks"), mid, *levels("up_blocks"))


def _resnet_pairs(group: str, i: int, j: int, ldm_block: str, attention: bool) -> list[tuple[str, str, str]]:
    """Resnet j of level i at ``ldm_block.0`` and, if it has one, its attention at ``ldm_block.1``."""
    pairs = [(f"{group}.{i}.resnets.{j}", f"{ldm_block}.0", "resnet")]
    if attention:
        pairs.append((f"{group}.{i}.attentions.{j}", f"{ldm_block}.1", "attention"))
    return pairs


def block_pairs(structure: UNetStructure) -> list[tuple[str, str, str]]:
    """(diffusers prefix, LDM prefix, kind) for every block and top-level layer; kind is ``resnet``,
    ``attention`` or ``layer`` (a single weight)."""
    pairs = [(d, ldm, "layer") for d, ldm in TOP_LAYERS.items()]
    n = 1
    for i, level in enumerate(structure.down):
        for j, attention in enumerate(level):
            pairs += _resnet_pairs("down_blocks", i, j, f"input_blocks.{n}", attention)
            n += 1
        if structure.down_sampled[i]:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{n}.0.op", "layer"))
            n += 1
    counts = {"resnet": 0, "attention": 0}
    for k, kind in enumerate(structure.mid):
        pairs.append((f"mid_block.{kind}s.{counts[kind]}", f"middle_block.{k}", kind))
        counts[kind] += 1
    n = 0
    for i, level in enumerate(structure.up):
        for j, attention in enumerate(level):
            pairs += _resnet_pairs("up_blocks", i, j, f"output_blocks.{n}", attention)
            if j == len(level) - 1 and structure.up_sampled[i]:
                upsampler = f"output_blocks.{n}.{2 if attention else 1}.conv"
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv", upsampler, "layer"))
            n += 1
    return pairs


def _translate(path: str, blocks: dict[str, tuple[str, str]], resnet_layers: dict[str, str]) -> str | None:
    """``path`` in the other spelling: its longest block prefix swapped, the rest kept (renamed inside a resnet)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        found = blocks.get(".".join(parts[:cut]))
        if found is None:
            continue
        partner, kind = found
        rest = ".".join(parts[cut:])
        if kind == "layer":
            return partner if not rest else None
        rest = resnet_layers.get(rest) if kind == "resnet" else rest
        return f"{partner}.{rest}" if rest else None
    return None


def diffusers_to_ldm(paths) -> dict[str, str]:
    """{diffusers path: LDM path} for the given diffusers paths (below the UNet's root) that name UNet layers."""
    paths = list(paths)
    blocks = {d: (ldm, kind) for d, ldm, kind in block_pairs(structure_from_diffusers(paths))}
    mapped = {path: _translate(path, blocks, RESNET_LAYERS) for path in paths}
    return {path: ldm for path, ldm in mapped.items() if ldm is not None}


def ldm_to_diffusers(paths) -> dict[str, str]:
    """{LDM path: diffusers path} for the given LDM paths (below the UNet's root); empty when they are not an
    SD-style UNet."""
    paths = list(paths)
    structure = structure_from_ldm(paths)
    if structure is None:
        return {}
    blocks = {ldm: (d, kind) for d, ldm, kind in block_pairs(structure)}
    layers = {ldm: d for d, ldm in RESNET_LAYERS.items()}
    mapped = {path: _translate(path, blocks, layers) for path in paths}
    return {path: d for path, d in mapped.items() if d is not None}


def unet_aliases(keys: Collection[str]) -> list[Alias]:
    """Diffusers names of an LDM-keyed UNet's weights and LDM names of a diffusers-keyed one."""
    aliases = []
    for root in roots(keys, "time_embed.0.weight", "input_blocks.0.0.weight"):
        weights = weights_under(keys, root)
        aliases += [Alias(_DIFFUSERS_ROOT + d, weights[p]) for p, d in ldm_to_diffusers(weights).items()]
    for root in roots(keys, "time_embedding.linear_1.weight", "conv_in.weight"):
        weights = weights_under(keys, root)
        aliases += [Alias(_LDM_ROOT + ldm, weights[p]) for p, ldm in diffusers_to_ldm(weights).items()]
    return aliases
