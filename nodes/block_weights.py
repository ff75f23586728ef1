"""Block weights in the LBW convention: a preset name or a comma-separated vector → a weight per block id, and the
block id of a ComfyUI model key.

Block ids: ``BASE`` (the text encoders), ``INnn`` / ``M00`` / ``OUTnn`` = the LDM UNet's ``input_blocks.nn`` /
``middle_block`` / ``output_blocks.nn`` — derived from the *model* key ComfyUI patches, so every file spelling
(kohya, diffusers, PEFT…) lands in the same block. A vector of 17 or 26 values (SD1.x/SD2) or 12 or 20 values
(SDXL) names the ids of that set in order (``block_presets.json``); ids it does not name get 0, as in LBW. UNet
modules outside the numbered blocks (time embedding, ``out``) are not block-weighted: they keep weight 1.
Presets are looked up for the model's family. No ComfyUI import here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_DATA = json.loads(Path(__file__).with_name("block_presets.json").read_text(encoding="utf-8"))
BLOCK_SETS: dict[str, list[str]] = _DATA["block_sets"]
PRESETS: dict[str, dict[str, str]] = _DATA["presets"]
_SET_BY_LENGTH = {len(ids): name for name, ids in BLOCK_SETS.items()}
_BLOCK_KEY = re.compile(r"^diffusion_model\.(input_blocks|middle_block|output_blocks)\.(\d+)\.")
OTHER = "other"  # UNet modules outside the numbered blocks


def block_of(key: str, side: str) -> str:
    """The block id of a patched model key: ``BASE`` for the text encoder, ``INnn``/``M00``/``OUTnn`` or
    ``other`` for the UNet."""
    if side == "clip":
        return "BASE"
    match = _BLOCK_KEY.match(key)
    if match is None:
        return OTHER
    kind, index = match.groups()
    if kind == "middle_block":
        return "M00"
    return f"{'IN' if kind == 'input_blocks' else 'OUT'}{int(index):02d}"


def model_family(unet_keys) -> str:
    """``sdxl`` for an SDXL-shaped UNet (class embedding, at most 9 input blocks), else ``sd15``."""
    keys = list(unet_keys)
    deep = any(k.startswith("diffusion_model.input_blocks.9.") for k in keys)
    label = any(k.startswith("diffusion_model.label_emb.") for k in keys)
    return "sdxl" if label and not deep else "sd15"


@dataclass(frozen=True)
class BlockWeights:
    """Weights by block id, as parsed: ``source`` is the preset name or "vector", ``block_set`` the id set used."""

    weights: dict
    source: str
    block_set: str

    def weight(self, block: str) -> float:
        """The factor for a block id: its value, 0 for ids the vector does not name, 1 outside numbered blocks."""
        if block == OTHER:
            return 1.0
        return self.weights.get(block, 0.0)


def parse_block_weights(text: str, family: str = "sd15") -> BlockWeights:
    """A preset name (case-insensitive, looked up for ``family``) or comma-separated numbers; ValueError with the
    accepted forms otherwise."""
    stripped = (text or "").strip()
    if not stripped:
        raise ValueError(
            "block_weights is empty: give a preset name (" + ", ".join(PRESETS[family]) + ") or comma-separated weights"
        )
    presets = {name.upper(): name for name in PRESETS[family]}
    source = "vector"
    if stripped.upper() in presets:
        source = presets[stripped.upper()]
        stripped = PRESETS[family][source]
    tokens = [t.strip() for t in re.split(r"[,\s]+", stripped) if t.strip()]
    values = []
    for position, token in enumerate(tokens, 1):
        try:
            values.append(float(token))
        except ValueError:
            raise ValueError(
                f"block_weights value {position} ('{token}') is not a number and '{text.strip()}' is "
                f"no preset of {family} ({', '.join(PRESETS[family])})"
            ) from None
    block_set = _SET_BY_LENGTH.get(len(values))
    if block_set is None:
        counts = ", ".join(f"{len(ids)} ({name})" for name, ids in BLOCK_SETS.items())
        raise ValueError(f"block_weights has {len(values)} values; expected {counts}")
    return BlockWeights(dict(zip(BLOCK_SETS[block_set], values)), source, block_set)
