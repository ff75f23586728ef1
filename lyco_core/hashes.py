"""kohya's precomputed adapter hashes (``sshs_model_hash``, ``sshs_legacy_hash``), as sd-scripts computes them.

Both hash the safetensors serialization of the tensors with only the ``ss_*`` metadata (so user metadata edited
later cannot change them): ``sshs_model_hash`` = SHA-256 of the bytes after the 8-byte length and the JSON header
(the data section, which no metadata affects); ``sshs_legacy_hash`` = the first 8 hex digits of the SHA-256 of the
64 KiB at offset 1 MiB of the whole serialization (header included).
"""

from __future__ import annotations

import hashlib
import struct

import torch

_LEGACY_OFFSET, _LEGACY_SIZE = 0x100000, 0x10000


def data_section_sha256(raw: bytes) -> str:
    """SHA-256 of a safetensors serialization's data section (what A1111 and additional-networks call the hash)."""
    (header_len,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + header_len :]).hexdigest()


def kohya_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of ``tensors`` saved with ``metadata``."""
    from safetensors.torch import save

    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    raw = save({k: v.contiguous() for k, v in tensors.items()}, training)
    legacy = hashlib.sha256(raw[_LEGACY_OFFSET : _LEGACY_OFFSET + _LEGACY_SIZE]).hexdigest()[:8]
    return data_section_sha256(raw), legacy
