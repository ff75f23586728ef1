"""Shared pieces of the training tests: a tiny model with Linear, 3×3/1×1 Conv and norm layers, one config per
method and variant, and a way to give an adapter non-trivial weights without training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.host.tolerances import forward_agreement

from lyco_core.train import BOFTConfig, GLoRAConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

LINEAR = ["fc1", "fc2"]
ALL = ["fc1", "fc2", "conv3", "conv1"]


class TinyNet(nn.Module):
    """fc1 64→96 (bias), fc2 96→64, conv3 32→48 3×3 (bias), conv1 48→32 1×1, LayerNorm(64), GroupNorm(4, 48)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 64, bias=False)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.conv1 = nn.Conv2d(48, 32, 1, bias=False)
        self.ln = nn.LayerNorm(64)
        self.gn = nn.GroupNorm(4, 48)

    def forward(self, x, image):
        return self.ln(self.fc2(torch.tanh(self.fc1(x)))), self.conv1(torch.tanh(self.gn(self.conv3(image))))


# Reductions on TinyNet's longest path: conv3 (32·3·3 products), GroupNorm (12 channels × 8×8 pixels), conv1 (48).
TINYNET_DEPTHS = (32 * 3 * 3, 12 * 8 * 8, 48)


def output_tolerance(outputs) -> float:
    """Absolute bound for two float32 forwards of TinyNet giving ``outputs``: ``forward_agreement(TINYNET_DEPTHS)``
    (2ε·(1 + √288 + √768 + √48) ≈ 1.3e-5) times the largest output."""
    return forward_agreement(TINYNET_DEPTHS) * max(float(y.detach().abs().max()) for y in outputs)


def tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(5, 64, generator=generator), torch.randn(2, 32, 8, 8, generator=generator)


# (id, config) for every method and variant, on all four layers unless the method is Linear-only in PEFT's forward.
CASES = [
    ("lora", LoraConfig(r=4, lora_alpha=8, target_modules=ALL)),
    ("lora-dora-rslora", LoraConfig(r=4, lora_alpha=8, use_dora=True, use_rslora=True, target_modules=ALL)),
    ("lora-balanced", LoraConfig(r=2, lora_alpha=4, conv_decomposition="balanced", target_modules=ALL)),
    ("loha", LoHaConfig(r=4, alpha=2, target_modules=ALL)),
    ("loha-tucker", LoHaConfig(r=4, alpha=2, use_effective_conv2d=True, target_modules=ALL)),
    ("lokr", LoKrConfig(r=4, alpha=2, target_modules=ALL)),
    (
        "lokr-both-tucker",
        LoKrConfig(
            r=1, alpha=4, decompose_both=True, use_effective_conv2d=True, decompose_factor=4, target_modules=ALL
        ),
    ),
    ("lokr-full", LoKrConfig(r=64, alpha=16, target_modules=ALL)),
    ("oft-peft", OFTConfig(oft_block_size=8, use_cayley_neumann=False, target_modules=LINEAR)),
    ("oft-peft-neumann-coft", OFTConfig(r=4, oft_block_size=0, coft=True, eps=1e-2, target_modules=LINEAR)),
    ("oft-lycoris", OFTConfig(oft_block_size=8, variant="lycoris", constraint=1e-2, rescaled=True, target_modules=ALL)),
    ("boft-peft", BOFTConfig(boft_block_size=8, target_modules=LINEAR)),
    ("boft-lycoris", BOFTConfig(boft_block_size=8, variant="lycoris", rescaled=True, target_modules=ALL)),
    ("glora", GLoRAConfig(r=4, alpha=2, target_modules=ALL)),
    ("ia3-peft", IA3Config(target_modules=ALL, feedforward_modules=["fc2", "conv1"])),
    ("ia3-lycoris", IA3Config(target_modules=ALL, feedforward_modules=["fc2"], variant="lycoris")),
]


@torch.no_grad()
def randomize(adapter, seed: int = 7, std: float = 0.1) -> None:
    """Perturb every trainable tensor of ``adapter`` by N(0, std²) (rotations stay small: std/4)."""
    generator = torch.Generator().manual_seed(seed)
    for trainable in adapter.modules.values():
        for name, parameter in trainable.named_parameters():
            scale = std / 4 if trainable.method in ("oft", "boft") else std
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on an oversubscribed pool of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
