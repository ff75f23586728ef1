"""Flux.1 transformers (and Chroma, which keeps Flux's block names) as BFL/ComfyUI checkpoints store them, under the
diffusers names (``transformer_blocks.N.attn.to_q``, …) that diffusers, ai-toolkit and SimpleTuner files use.

Double blocks (``double_blocks.N.`` ↔ ``transformer_blocks.N.``): ``img_attn.qkv`` holds ``attn.to_q/to_k/to_v``
(parts 0, 1, 2 of 3 of its rows), ``txt_attn.qkv`` holds ``attn.add_q_proj/add_k_proj/add_v_proj``;
``img_attn.proj`` ↔ ``attn.to_out.0``, ``txt_attn.proj`` ↔ ``attn.to_add_out``, ``img_mlp.0/2`` ↔
``ff.net.0.proj``/``ff.net.2``, ``txt_mlp.0/2`` ↔ ``ff_context.net.0.proj``/``ff_context.net.2``, ``img_mod.lin`` ↔
``norm1.linear``, ``txt_mod.lin`` ↔ ``norm1_context.linear``.
Single blocks (``single_blocks.N.`` ↔ ``single_transformer_blocks.N.``): ``linear1`` stacks q, k, v (h rows each)
and the MLP input (4h rows: Flux's MLP ratio), so ``attn.to_q/to_k/to_v`` are parts 0, 1, 2 of 7 and ``proj_mlp``
parts 4–7 of 7 (a weight whose rows do not split into 7 is refused, never guessed); ``linear2`` ↔ ``proj_out``,
``modulation.lin`` ↔ ``norm.linear``.
Outside the blocks: ``img_in`` ↔ ``x_embedder``, ``txt_in`` ↔ ``context_embedder``, ``time_in``/``vector_in``/
``guidance_in`` ``.in_layer``/``.out_layer`` ↔ ``time_text_embed.timestep_embedder``/``text_embedder``/
``guidance_embedder`` ``.linear_1``/``.linear_2``, ``final_layer.linear`` ↔ ``proj_out``. ``final_layer.
adaLN_modulation.1`` (``norm_out.linear``) is not aliased: diffusers swaps its shift and scale halves.
The alias root is ``transformer.`` (the diffusers component).
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

DOUBLE = {
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
}
DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}  # fmt: skip
SINGLE = {"linear2": "proj_out", "modulation.lin": "norm.linear"}
SINGLE_PARTS = (("attn.to_q", 0, 1), ("attn.to_k", 1, 1), ("attn.to_v", 2, 1), ("proj_mlp", 3, 4))  # of 7 blocks
TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
COMPONENT = "transformer."


def _block(path: str, blocks: str) -> tuple[str, str] | None:
    """(index, rest) of ``<blocks>.<index>.<rest>``, or None."""
    if not path.startswith(blocks + "."):
        return None
    index, _, rest = path[len(blocks) + 1 :].partition(".")
    return (index, rest) if index.isdigit() else None


def flux_aliases(keys: Collection[str]) -> list[Alias]:
    """diffusers names of every Flux-style transformer's weights among ``keys``."""
    aliases = []
    for root in roots(keys, "double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"):
        for path, key in weights_under(keys, root).items():
            if path in TOP:
                aliases.append(Alias(COMPONENT + TOP[path], key))
            elif (found := _block(path, "double_blocks")) is not None:
                index, rest = found
                prefix = f"{COMPONENT}transformer_blocks.{index}."
                if rest in DOUBLE:
                    aliases.append(Alias(prefix + DOUBLE[rest], key))
                elif rest in DOUBLE_FUSED:
                    aliases += [Alias(prefix + name, key, (part, 3)) for part, name in enumerate(DOUBLE_FUSED[rest])]
            elif (found := _block(path, "single_blocks")) is not None:
                index, rest = found
                prefix = f"{COMPONENT}single_transformer_blocks.{index}."
                if rest in SINGLE:
                    aliases.append(Alias(prefix + SINGLE[rest], key))
                elif rest == "linear1":
                    aliases += [Alias(prefix + name, key, (part, 7), blocks=n) for name, part, n in SINGLE_PARTS]
    return aliases
