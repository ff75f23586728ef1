"""Metadata that follows an adapter through a transform: the input's own keys (``ss_*``, ``ssmd_*``,
``modelspec.*`` incl. trigger phrases) are kept; keys that describe the tensors (network dim/alpha/args/module,
hashes, diffusers' ``lora_adapter_metadata``, the PEFT config echoed as ``peft.*``) are dropped, to be written
anew by ``save_adapter``; ``ss_training_comment`` gains the transform's description."""

from __future__ import annotations

OF_THE_FILE = ("sshs_model_hash", "sshs_legacy_hash", "lora_adapter_metadata")
OF_THE_TENSORS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args")
COMMENT = "ss_training_comment"


def file_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata that stays with the adapter in any file: without the ``peft.*`` echo of a PEFT config and the
    keys of one particular file (hashes, diffusers' config)."""
    return {k: v for k, v in metadata.items() if not k.startswith("peft.") and k not in OF_THE_FILE}


def carried(metadata: dict[str, str], comment: str, **extra: str) -> dict[str, str]:
    """The input's metadata minus what describes the old tensors, with ``comment`` prepended to the training
    comment and ``extra`` keys set."""
    kept = {k: v for k, v in file_metadata(metadata).items() if k not in OF_THE_TENSORS}
    previous = kept.get(COMMENT)
    kept[COMMENT] = comment if not previous else f"{comment} | before: {previous}"
    kept.update(extra)
    return kept
