"""OpenCLIP text encoders inside LDM checkpoints (SD2's ``cond_stage_model.model.``, SDXL's second,
``conditioner.embedders.1.model.``) under the Hugging Face CLIP names kohya files use (``lora_te2_text_model_…``).

Per layer, ``transformer.resblocks.N.`` ↔ ``text_model.encoder.layers.N.``: ``attn.out_proj`` ↔
``self_attn.out_proj``, ``mlp.c_fc`` ↔ ``mlp.fc1``, ``mlp.c_proj`` ↔ ``mlp.fc2``, ``ln_1`` ↔ ``layer_norm1``,
``ln_2`` ↔ ``layer_norm2``. Outside the layers: ``ln_final`` ↔ ``text_model.final_layer_norm``,
``token_embedding`` ↔ ``text_model.embeddings.token_embedding``, ``positional_embedding`` (a bare parameter) ↔
``text_model.embeddings.position_embedding``; ``text_projection`` (a bare ``(width, proj)`` parameter used as
``x·P``) is the transpose of HF's Linear ``text_projection``.

``self_attn.q_proj/k_proj/v_proj`` are the first, second and third blocks of ``width`` rows of
``attn.in_proj_weight`` (q, k, v stacked; ``attn.in_proj_bias`` likewise): parts 0, 1, 2 of 3. The alias root is
the diffusers component (``text_encoder_2.`` in SDXL, else ``text_encoder.``), which is also what tells SDXL's two
encoders apart when matching.
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias, roots, weights_under

LAYERS = {
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
}
TOP_LAYERS = {"ln_final": "text_model.final_layer_norm", "token_embedding": "text_model.embeddings.token_embedding"}
POSITIONS = ("positional_embedding", "text_model.embeddings.position_embedding")
PROJECTION = "text_projection"
FUSED = "attn.in_proj_weight"
_BLOCKS = "transformer.resblocks."


def _component(root: str) -> str:
    return "text_encoder_2." if root.startswith("conditioner.") else "text_encoder."


def _fused_aliases(keys: Collection[str], root: str, component: str) -> list[Alias]:
    aliases = []
    for key in keys:
        if key.startswith(root + _BLOCKS) and key.endswith("." + FUSED):
            layer = key[len(root + _BLOCKS) : -len(FUSED) - 1]
            aliases += [
                Alias(f"{component}text_model.encoder.layers.{layer}.self_attn.{name}", key, (part, 3))
                for part, name in enumerate(("q_proj", "k_proj", "v_proj"))
            ]
    return aliases


def openclip_aliases(keys: Collection[str]) -> list[Alias]:
    """HF CLIP names of every OpenCLIP text encoder's weights among ``keys``."""
    aliases = []
    for root in roots(keys, _BLOCKS + "0." + FUSED, "ln_final.weight"):
        component = _component(root)
        for path, key in weights_under(keys, root).items():
            if path in TOP_LAYERS:
                aliases.append(Alias(component + TOP_LAYERS[path], key))
                continue
            layer, _, name = path[len(_BLOCKS) :].partition(".")
            if path.startswith(_BLOCKS) and layer.isdigit() and name in LAYERS:
                aliases.append(Alias(f"{component}text_model.encoder.layers.{layer}.{LAYERS[name]}", key))
        if root + POSITIONS[0] in keys:
            aliases.append(Alias(component + POSITIONS[1], root + POSITIONS[0]))
        if root + PROJECTION in keys:
            aliases.append(Alias(component + PROJECTION, root + PROJECTION, transposed=True))
        aliases += _fused_aliases(keys, root, component)
    return aliases
