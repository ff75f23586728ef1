"""SD3/SD3.5 MMDiT transformers as Stability/ComfyUI checkpoints store them (``joint_blocks.N.``), under the diffusers
names (``transformer_blocks.N.``) that diffusers, ai-toolkit and SimpleTuner files use.

In a block: ``x_block.attn.qkv`` holds ``attn.to_q/to_k/to_v`` (parts 0, 1, 2 of 3 of its rows),
``context_block.attn.qkv`` holds ``attn.add_q_proj/add_k_proj/add_v_proj``, SD3.5's ``x_block.attn2.qkv`` holds
``attn2.to_q/to_k/to_v``; ``x_block.attn.proj`` ↔ ``attn.to_out.0``, ``x_block.attn2.proj`` ↔ ``attn2.to_out.0``,
``context_block.attn.proj`` ↔ ``attn.to_add_out``, ``x_block.mlp.fc1/fc2`` ↔ ``ff.net.0.proj``/``ff.net.2``,
``context_block.mlp.fc1/fc2`` ↔ ``ff_context.net.0.proj``/``ff_context.net.2``, ``x_block.adaLN_modulation.1`` ↔
``norm1.linear``, ``context_block.adaLN_modulation.1`` ↔ ``norm1_context.linear`` — except in the last block, where
diffusers swaps its shift and scale halves (not aliased, like ``final_layer.adaLN_modulation.1``).
Outside the blocks: ``x_embedder.proj`` ↔ ``pos_embed.proj``, ``t_embedder.mlp.0/2`` ↔
``time_text_embed.timestep_embedder.linear_1/2``, ``y_embedder.mlp.0/2`` ↔ ``time_text_embed.text_embedder.linear_1/2``,
``final_layer.linear`` ↔ ``proj_out`` (``context_embedder`` has one name). The alias root is ``transformer.``.
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

BLOCK = {
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.attn2.proj": "attn2.to_out.0",
    "context_block.attn.proj": "attn.to_add_out",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
    "x_block.adaLN_modulation.1": "norm1.linear",
}
CONTEXT_MODULATION = ("context_block.adaLN_modulation.1", "norm1_context.linear")  # swapped in the last block
FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
COMPONENT = "transformer."
_BLOCKS = "joint_blocks."


def mmdit_aliases(keys: Collection[str]) -> list[Alias]:
    """diffusers names of every MMDiT's weights among ``keys``."""
    aliases = []
    for root in roots(keys, _BLOCKS + "0.x_block.attn.qkv.weight", _BLOCKS + "0.context_block.attn.qkv.weight"):
        weights = weights_under(keys, root)
        indices = [p[len(_BLOCKS) :].partition(".")[0] for p in weights if p.startswith(_BLOCKS)]
        last = max((int(i) for i in indices if i.isdigit()), default=0)
        for path, key in weights.items():
            if path in TOP:
                aliases.append(Alias(COMPONENT + TOP[path], key))
                continue
            index, _, rest = path[len(_BLOCKS) :].partition(".") if path.startswith(_BLOCKS) else ("", "", "")
            if not index.isdigit():
                continue
            prefix = f"{COMPONENT}transformer_blocks.{index}."
            if rest in BLOCK:
                aliases.append(Alias(prefix + BLOCK[rest], key))
            elif rest == CONTEXT_MODULATION[0] and int(index) != last:
                aliases.append(Alias(prefix + CONTEXT_MODULATION[1], key))
            elif rest in FUSED:
                aliases += [Alias(prefix + name, key, (part, 3)) for part, name in enumerate(FUSED[rest])]
    return aliases
