"""Seeded random values for every tensor of a LyCORIS network (lycoris-lora 4.x), whose own init gives a zero delta.

Shared by the host fixtures (``adapter_fixtures.py``) and the core oracle (``tests/core/oracles/lycoris_oracle.py``,
which imports it as ``tests.host.lycoris_random``). torch only: no ComfyUI, no repository package.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


@torch.no_grad()
def randomise_lycoris(network, gen: torch.Generator, std_of: Callable[[nn.Module], float], scalar: float) -> None:
    """For each module ``lora`` of ``network.loras`` (in order) and each parameter ``p`` of it, with ``n ~ N(0, 1)``
    drawn from ``gen``: ``dora_scale ← p·(1 + 0.1·n)``, ``rescale ← 1 + 0.1·n``, ``scalar ← scalar`` (a noise draw
    is still taken), every other tensor ``← std_of(lora)·n``."""
    for lora in network.loras:
        std = std_of(lora)
        for pname, p in lora.named_parameters():
            leaf = pname.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if leaf == "dora_scale":
                p.copy_(p * (1.0 + 0.1 * noise))
            elif leaf == "rescale":
                p.copy_(1.0 + 0.1 * noise)
            elif leaf == "scalar":
                p.fill_(scalar)
            else:
                p.copy_(std * noise)
