"""Lumina2 and Z-Image transformers as ComfyUI stores them, under the diffusers names their LoRAs use, in every block
(``layers.N.``, ``noise_refiner.N.``, ``context_refiner.N.``):

* Z-Image (diffusers ZImageTransformer2DModel; ai-toolkit, musubi-tuner): ``attention.out`` ↔ ``attention.to_out.0``,
  the fused ``attention.qkv`` holds ``attention.to_q/to_k/to_v``; feed-forward and norm names agree.
* Lumina2 (diffusers Lumina2Transformer2DModel; its LoRA converter, loaders/lora_conversion_utils.py
  ``_convert_non_diffusers_lumina2_lora_to_diffusers``): ``attention.out`` ↔ ``attn.to_out.0``, ``attention.qkv``
  holds ``attn.to_q/to_k/to_v``, ``feed_forward.w1/w2/w3`` ↔ ``feed_forward.linear_1/2/3``, ``adaLN_modulation.1`` ↔
  ``norm1.linear``.

``attention.qkv`` stacks the rows of q (n_heads·head_dim), k and v (n_kv_heads·head_dim each). q projects dim→dim
(head_dim = dim / n_heads), so its rows are the first ``in_features`` (the weight's ``shape[1]``) and k and v split
the rows after them equally: ``WeightSlice(square_first=True)``, parts 0, 1, 2 of 3. That holds with grouped K/V heads
(Lumina2: 24 q, 8 kv heads, 2304 + 768 + 768 rows) as well as without (Z-Image: 30 and 30), and needs only the
weight's shape, never the head counts.
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

BLOCKS = ("layers", "noise_refiner", "context_refiner")
WHOLE = {
    "attention.out": ("attention.to_out.0", "attn.to_out.0"),
    "feed_forward.w1": ("feed_forward.linear_1",),
    "feed_forward.w2": ("feed_forward.linear_2",),
    "feed_forward.w3": ("feed_forward.linear_3",),
    "adaLN_modulation.1": ("norm1.linear",),
}
QKV = "attention.qkv"
SPLIT = ("attention.", "attn.")  # q, k, v under either spelling: parts 0, 1, 2 (q's square rows, then halves)


def _in_block(path: str) -> tuple[str, str] | None:
    """(``<block>.<index>.``, rest) of a path inside a transformer block, or None."""
    block, _, tail = path.partition(".")
    index, _, rest = tail.partition(".")
    return (f"{block}.{index}.", rest) if block in BLOCKS and index.isdigit() else None


def lumina_aliases(keys: Collection[str]) -> list[Alias]:
    """diffusers names of the block weights of every Lumina2/Z-Image transformer among ``keys``."""
    aliases = []
    for root in roots(keys, "layers.0.attention.qkv.weight", "cap_embedder.1.weight"):
        for path, key in weights_under(keys, root).items():
            if (found := _in_block(path)) is None:
                continue
            block, rest = found
            if rest == QKV:
                for spelling in SPLIT:
                    names = (f"{block}{spelling}to_{x}" for x in "qkv")
                    aliases += [Alias(name, key, (part, 3), square_first=True) for part, name in enumerate(names)]
            for name in WHOLE.get(rest, ()):
                aliases.append(Alias(block + name, key))
    return aliases
