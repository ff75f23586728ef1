"""HunyuanVideo's original module names (Tencent's release; musubi-tuner and diffusion-pipe train on them) for the
weights of a HunyuanVideo transformer as ComfyUI stores them.

In ``double_blocks.N.``: ``img_mod.linear`` ↔ ``img_mod.lin``, ``img_attn_qkv`` ↔ ``img_attn.qkv``,
``img_attn_proj`` ↔ ``img_attn.proj``, ``img_mlp.fc1``/``fc2`` ↔ ``img_mlp.0``/``2``, and the same for ``txt_``;
in ``single_blocks.N.``: ``modulation.linear`` ↔ ``modulation.lin``. Flux keeps ComfyUI's names for the same layers,
so these aliases are given to any transformer with those blocks; no Flux file uses the original names.
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

DOUBLE = {
    "mod.lin": "mod.linear",
    "attn.qkv": "attn_qkv",
    "attn.proj": "attn_proj",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
SINGLE = {"modulation.lin": "modulation.linear"}


def _renamed(path: str) -> str | None:
    """The original name of a ComfyUI path inside the blocks, or None where both spell it alike."""
    blocks, _, rest = path.partition(".")
    index, _, layer = rest.partition(".")
    if not index.isdigit():
        return None
    if blocks == "double_blocks":
        stream, _, name = layer.partition("_")
        if stream in ("img", "txt") and name in DOUBLE:
            return f"{blocks}.{index}.{stream}_{DOUBLE[name]}"
    if blocks == "single_blocks" and layer in SINGLE:
        return f"{blocks}.{index}.{SINGLE[layer]}"
    return None


def hunyuan_video_aliases(keys: Collection[str]) -> list[Alias]:
    """Original HunyuanVideo names of the double/single-stream block weights among ``keys``."""
    aliases = []
    for root in roots(keys, "double_blocks.0.img_mod.lin.weight", "single_blocks.0.modulation.lin.weight"):
        for path, key in weights_under(keys, root).items():
            original = _renamed(path)
            if original is not None:
                aliases.append(Alias(original, key))
    return aliases
