"""Lumina2 and Z-Image transformers as ComfyUI stores them, under the diffusers names their LoRAs use: in
``layers.N.``, ``noise_refiner.N.`` and ``context_refiner.N.``, ``attention.out`` ↔ ``attention.to_out.0`` (the
feed-forward and norm names agree). ``attention.qkv`` is not aliased to ``attention.to_q/to_k/to_v``: Lumina2 groups
its K/V heads (24 q, 8 kv), so which rows hold q depends on head counts that the keys do not state; such modules
stay unmatched (the nodes place them through ComfyUI's own key map, which knows the model's config).
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

BLOCKS = ("layers.", "noise_refiner.", "context_refiner.")
OUT = (".attention.out", ".attention.to_out.0")


def lumina_aliases(keys: Collection[str]) -> list[Alias]:
    """diffusers names of the attention output projections of every Lumina2/Z-Image transformer among ``keys``."""
    aliases = []
    for root in roots(keys, "layers.0.attention.qkv.weight", "cap_embedder.1.weight"):
        for path, key in weights_under(keys, root).items():
            if path.startswith(BLOCKS) and path.endswith(OUT[0]):
                aliases.append(Alias(path[: -len(OUT[0])] + OUT[1], key))
    return aliases
