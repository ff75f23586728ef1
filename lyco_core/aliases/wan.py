"""Wan 2.x video transformers as the original release and ComfyUI store them (``blocks.N.self_attn.q``, …), under the
diffusers names (``WanTransformer3DModel``: ``blocks.N.attn1.to_q``) that diffusers' training scripts, finetrainers,
SimpleTuner and ai-toolkit files use. ComfyUI has no diffusers table for Wan (``comfy.utils``, ``comfy.lora``).

In a block (``blocks.N.``, and VACE's ``vace_blocks.N.``, which diffusers names alike): ``self_attn.q/k/v/o`` ↔
``attn1.to_q/to_k/to_v/to_out.0``, ``cross_attn.q/k/v/o`` ↔ ``attn2.to_q/to_k/to_v/to_out.0``, image-to-video's
``cross_attn.k_img/v_img`` ↔ ``attn2.add_k_proj/add_v_proj``, ``ffn.0``/``ffn.2`` ↔ ``ffn.net.0.proj``/``ffn.net.2``;
the norms with a weight: ``self_attn.norm_q/norm_k`` ↔ ``attn1.norm_q/norm_k``, ``cross_attn.norm_q/norm_k`` ↔
``attn2.norm_q/norm_k``, ``cross_attn.norm_k_img`` ↔ ``attn2.norm_added_k``, and the cross-attention norm ``norm3`` ↔
``norm2`` (diffusers swaps the two names; the other, ``norm2`` ↔ ``norm3``, has no weight on either side). VACE's
``before_proj`` ↔ ``proj_in``.
Outside the blocks: ``text_embedding.0/2`` ↔ ``condition_embedder.text_embedder.linear_1/2``, ``time_embedding.0/2`` ↔
``condition_embedder.time_embedder.linear_1/2``, ``time_projection.1`` ↔ ``condition_embedder.time_proj``,
``head.head`` ↔ ``proj_out``, image-to-video's ``img_emb.proj.0/1/3/4`` ↔ ``condition_embedder.image_embedder.norm1``/
``ff.net.0.proj``/``ff.net.2``/``norm2``; ``patch_embedding`` (and ``vace_patch_embedding``) keep their names.
Not aliased: the modulation parameters (``blocks.N.modulation``, ``head.modulation`` ↔ ``scale_shift_table``: no
``.weight``, no module an adapter targets), and VACE's ``after_proj`` (diffusers ``vace_blocks.N.proj_out``), whose
last level would make a bare ``proj_out`` (``head.head``) ambiguous on a VACE model.
Every alias is a whole weight: Wan fuses no projections.
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

BLOCKS = ("blocks", "vace_blocks")
BLOCK = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "norm3": "norm2",
    "before_proj": "proj_in",
}
TOP = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}


def _renamed(path: str) -> str | None:
    """The diffusers name of a ComfyUI Wan path, or None where both spell it alike (or it is not aliased)."""
    if path in TOP:
        return TOP[path]
    blocks, _, rest = path.partition(".")
    index, _, layer = rest.partition(".")
    if blocks in BLOCKS and index.isdigit() and layer in BLOCK:
        return f"{blocks}.{index}.{BLOCK[layer]}"
    return None


def wan_aliases(keys: Collection[str]) -> list[Alias]:
    """diffusers names of the weights of every Wan transformer among ``keys``."""
    aliases = []
    for root in roots(keys, "blocks.0.self_attn.q.weight", "time_projection.1.weight"):
        for path, key in weights_under(keys, root).items():
            name = _renamed(path)
            if name is not None:
                aliases.append(Alias(name, key))
    return aliases
