"""Second names of a model's weights: the paths another spelling of the same network gives them, derived from the
model's own keys, so an adapter named for one spelling matches a checkpoint written in the other.

* ``unet.py``: SD-style UNets, diffusers (``down_blocks.0.resnets.0.conv1``) ↔ LDM (``input_blocks.1.0.in_layers.2``).
* ``openclip.py``: OpenCLIP text encoders in LDM checkpoints (SD2, SDXL's second) → Hugging Face CLIP names.
* ``flux.py``: Flux.1/Chroma transformers as BFL/ComfyUI store them (fused q/k/v) → diffusers names.
* ``mmdit.py``: SD3/SD3.5 MMDiT as Stability/ComfyUI store it (fused q/k/v) → diffusers names.
* ``lumina.py``: Lumina2/Z-Image blocks → Z-Image's and Lumina2's diffusers names (fused q/k/v: q the first
  ``in_features`` rows, k and v halves of the rest, so grouped K/V heads split right).
* ``hunyuan_video.py``: HunyuanVideo as ComfyUI stores it → the original release's names (musubi-tuner).
* ``hunyuan_video_diffusers.py``: HunyuanVideo as ComfyUI stores it → the diffusers names Flux's aliases do not give
  (the token refiner ``context_embedder.*``, with q/k/v thirds of its fused ``self_attn.qkv``; ``x_embedder.proj``;
  the q/k norms).
* ``wan.py``: Wan 2.x as the original release/ComfyUI store it (``blocks.N.self_attn.q``) → diffusers names
  (``blocks.N.attn1.to_q``).

An ``Alias`` is matched like the key's own path (keymap.py). One may name only part of a weight (q, k or v in a fused
``in_proj_weight``): it then says which block of rows, and a module matched to it patches those rows alone.
"""

from __future__ import annotations

from collections.abc import Collection

from .base import Alias
from .flux import flux_aliases
from .hunyuan_video import hunyuan_video_aliases
from .hunyuan_video_diffusers import hunyuan_video_diffusers_aliases
from .lumina import lumina_aliases
from .mmdit import mmdit_aliases
from .openclip import openclip_aliases
from .unet import unet_aliases
from .wan import wan_aliases

__all__ = ["Alias", "model_aliases"]


def model_aliases(keys: Collection[str]) -> list[Alias]:
    """Every alias the recognised sub-models among ``keys`` (a set, for membership tests) give their weights."""
    return (
        unet_aliases(keys)
        + openclip_aliases(keys)
        + flux_aliases(keys)
        + mmdit_aliases(keys)
        + lumina_aliases(keys)
        + hunyuan_video_aliases(keys)
        + hunyuan_video_diffusers_aliases(keys)
        + wan_aliases(keys)
    )
