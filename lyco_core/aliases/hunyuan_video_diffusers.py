"""HunyuanVideo transformers as ComfyUI stores them, under the diffusers names (``HunyuanVideoTransformer3DModel``)
that diffusers' LoRA scripts, finetrainers and SimpleTuner files use, where Flux's aliases (flux.py, given to every
transformer with double/single blocks) do not already name them. ComfyUI has no diffusers table for HunyuanVideo
(``comfy.utils``, ``comfy.lora``).

Already named by flux.py (HunyuanVideo's blocks and embedders are Flux's): ``double_blocks.N.`` ↔
``transformer_blocks.N.`` (``img_attn.qkv``/``txt_attn.qkv`` thirds ↔ ``attn.to_q/to_k/to_v``/``attn.add_q_proj/
add_k_proj/add_v_proj``, ``img_attn.proj`` ↔ ``attn.to_out.0``, ``txt_attn.proj`` ↔ ``attn.to_add_out``, the MLPs
and modulations), ``single_blocks.N.`` ↔ ``single_transformer_blocks.N.`` (``linear1``'s q/k/v/MLP rows,
``linear2`` ↔ ``proj_out``, ``modulation.lin`` ↔ ``norm.linear``), ``time_in``/``vector_in``/``guidance_in`` ↔
``time_text_embed.timestep_embedder``/``text_embedder``/``guidance_embedder``, ``final_layer.linear`` ↔ ``proj_out``.

Named here:
* the token refiner, ``txt_in.`` ↔ ``context_embedder.``: ``input_embedder`` ↔ ``proj_in``, ``t_embedder.in_layer``/
  ``out_layer`` ↔ ``time_text_embed.timestep_embedder.linear_1``/``linear_2``, ``c_embedder.in_layer``/``out_layer``
  ↔ ``time_text_embed.text_embedder.linear_1``/``linear_2``; in its blocks (``individual_token_refiner.blocks.N.`` ↔
  ``token_refiner.refiner_blocks.N.``) ``self_attn.qkv`` holds ``attn.to_q/to_k/to_v`` (parts 0, 1, 2 of 3 of its
  rows: ComfyUI reshapes it to (3, heads, head_dim)), ``self_attn.proj`` ↔ ``attn.to_out.0``, ``mlp.0``/``mlp.2`` ↔
  ``ff.net.0.proj``/``ff.net.2``, ``adaLN_modulation.1`` ↔ ``norm_out.linear`` (both split it into the attention's
  and the MLP's gate, in that order: the same rows), ``norm1``/``norm2`` keep their names;
* the patch embedding ``img_in.proj`` ↔ ``x_embedder.proj`` (a Conv3d);
* the q/k RMS norms, where the host stores them as ``.weight`` (newer ComfyUI; older ones keep ``.scale``, which no
  alias can name): ``double_blocks.N.img_attn.norm.query_norm``/``key_norm`` ↔ ``transformer_blocks.N.attn.norm_q``/
  ``norm_k``, ``txt_attn.norm.query_norm``/``key_norm`` ↔ ``attn.norm_added_q``/``norm_added_k``,
  ``single_blocks.N.norm.query_norm``/``key_norm`` ↔ ``single_transformer_blocks.N.attn.norm_q``/``norm_k``.

Not aliased: ``final_layer.adaLN_modulation.1`` (diffusers' top-level ``norm_out.linear``): diffusers puts its two
halves in the other order (scale, shift against ComfyUI's shift, scale), and an adapter's change to a row-permuted
weight is no one row block of it. A bare ``norm_out.linear`` therefore fits only the refiner blocks' aliases (one
per block: reported ambiguous, never placed there). The alias root is ``transformer.`` (the diffusers component), as
in flux.py.
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

REFINER = "txt_in.individual_token_refiner.blocks."
REFINER_BLOCK = {
    "self_attn.proj": "attn.to_out.0",
    "mlp.0": "ff.net.0.proj",
    "mlp.2": "ff.net.2",
    "adaLN_modulation.1": "norm_out.linear",
    "norm1": "norm1",
    "norm2": "norm2",
}
REFINER_FUSED = {"self_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v")}
DOUBLE = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
SINGLE = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}
TOP = {
    "img_in.proj": "x_embedder.proj",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.in_layer": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.out_layer": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.in_layer": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.out_layer": "context_embedder.time_text_embed.text_embedder.linear_2",
}
BLOCKS = {
    REFINER: ("context_embedder.token_refiner.refiner_blocks.", REFINER_BLOCK),
    "double_blocks.": ("transformer_blocks.", DOUBLE),
    "single_blocks.": ("single_transformer_blocks.", SINGLE),
}
COMPONENT = "transformer."


def _aliases(path: str, key: str) -> list[Alias]:
    """The diffusers aliases of one ComfyUI HunyuanVideo weight (none where flux.py names it or it is not aliased)."""
    if path in TOP:
        return [Alias(COMPONENT + TOP[path], key)]
    for blocks, (renamed, table) in BLOCKS.items():
        index, _, rest = path.removeprefix(blocks).partition(".")
        if not path.startswith(blocks) or not index.isdigit():
            continue
        prefix = f"{COMPONENT}{renamed}{index}."
        if rest in table:
            return [Alias(prefix + table[rest], key)]
        if blocks == REFINER and rest in REFINER_FUSED:
            return [Alias(prefix + name, key, (part, 3)) for part, name in enumerate(REFINER_FUSED[rest])]
    return []


def hunyuan_video_diffusers_aliases(keys: Collection[str]) -> list[Alias]:
    """diffusers names of the token refiner, patch embedding and q/k norms of every HunyuanVideo among ``keys``."""
    aliases = []
    for root in roots(keys, REFINER + "0.self_attn.qkv.weight", "double_blocks.0.img_attn.qkv.weight"):
        for path, key in weights_under(keys, root).items():
            aliases += _aliases(path, key)
    return aliases
