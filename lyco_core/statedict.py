"""A model's state dict read lazily: keys, shapes and metadata from the safetensors header, each tensor on first use,
so matching and converting against a large checkpoint never holds all of it. Pickle checkpoints are read whole
(``torch.load(weights_only=True)``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .io import SAFETENSORS_SUFFIXES, load_tensors, read_header


class LazyStateDict(Mapping):
    """``{key: tensor}`` over a safetensors file; ``shape(key)`` and ``metadata`` come from the header."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.metadata, self._infos = read_header(path)
        self._handle = None

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._infos:
            raise KeyError(key)
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(self.path, framework="pt", device="cpu")
        return self._handle.get_tensor(key)

    def __iter__(self):
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def shape(self, key: str) -> torch.Size:
        return torch.Size(self._infos[key].shape)


def open_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """A model file's state dict: lazy for safetensors, loaded for weights-only pickles."""
    if Path(path).suffix.lower() in SAFETENSORS_SUFFIXES:
        return LazyStateDict(path)
    return load_tensors(path)[0]


def shape_of(state: Mapping[str, torch.Tensor], key: str) -> torch.Size:
    """A tensor's shape, from the header when the state dict is lazy."""
    return state.shape(key) if isinstance(state, LazyStateDict) else state[key].shape


def metadata_of(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return dict(state.metadata) if isinstance(state, LazyStateDict) else {}
