"""Gradient checkpointing as a temporary forward override: activations inside each given module are recomputed in
the backward pass instead of being kept (``torch.utils.checkpoint``, non-reentrant, RNG state preserved so dropout
masks repeat). The original forwards come back when the context exits, whatever happened inside."""

from __future__ import annotations

import contextlib

import torch.utils.checkpoint
from torch import nn


def _checkpointed(forward):
    def run(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


@contextlib.contextmanager
def gradient_checkpointing(modules: list[nn.Module]):
    """Within the context, every module in ``modules`` runs checkpointed."""
    saved = []
    try:
        for module in modules:
            saved.append((module, module.__dict__.get("forward")))
            module.forward = _checkpointed(module.forward)
        yield
    finally:
        for module, own in reversed(saved):
            if own is None:
                del module.forward
            else:
                module.forward = own
