"""Metadata highlights a user looks for: base model, trigger words, network settings (kohya ``ss_*``,
``modelspec.*``, PEFT config). Reference: docs/formats.md, Metadata."""

from __future__ import annotations

import json

_BASE_MODEL_KEYS = (
    "modelspec.architecture",
    "ss_base_model_version",
    "ss_sd_model_name",
    "peft.base_model_name_or_path",
)
_NETWORK_KEYS = (
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "peft.peft_type",
    "modelspec.title",
    "ss_output_name",
    "ss_training_comment",
)


def trigger_words(metadata: dict[str, str], limit: int = 20) -> list[str]:
    """``modelspec.trigger_phrase`` first, then the most frequent tags of ``ss_tag_frequency``."""
    words: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        words.extend(w.strip() for w in phrase.split(",") if w.strip())
    raw = metadata.get("ss_tag_frequency")
    if raw:
        try:
            datasets = json.loads(raw)
        except json.JSONDecodeError:
            datasets = {}
        counts: dict[str, int] = {}
        for tags in datasets.values() if isinstance(datasets, dict) else []:
            for tag, count in tags.items() if isinstance(tags, dict) else []:
                counts[tag.strip()] = counts.get(tag.strip(), 0) + int(count)
        words.extend(tag for tag, _ in sorted(counts.items(), key=lambda item: -item[1]) if tag not in words)
    return words[:limit]


def highlights(metadata: dict[str, str]) -> dict[str, object]:
    base = next((metadata[k] for k in _BASE_MODEL_KEYS if metadata.get(k)), None)
    return {
        "base_model": base,
        "trigger_words": trigger_words(metadata),
        "network": {k: metadata[k] for k in _NETWORK_KEYS if k in metadata},
    }
