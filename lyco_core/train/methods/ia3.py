"""Trainable (IA)³: a per-channel gain on the input columns (``feedforward_modules``) or the output rows.

PEFT (``ia3_l``, ones): ``W' = W ⊙ l`` and, for layers that are not feed-forward, ``b' = b ⊙ l``; stored
``(out,1)`` / ``(1,in)`` for Linear, ``(1,C,1,1)`` for convs. LyCORIS (``weight (C,)`` zeros, ``on_input``):
``W' = W ⊙ (1 + w)``, bias untouched. ``l = 1 + w`` where the two agree (no bias to scale), which is when
``save_adapter`` writes either in the other's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...algorithms.base import ScaleContext
from ...algorithms.ia3 import IA3
from ..config import NAMES_HELP, AdapterConfig, Node, Targets, check_variant, option, variant_option
from ..matching import name_matches
from .base import Trainable, trainable


@dataclass
class IA3Config(AdapterConfig):
    """(IA)³: a learned per-channel gain, on the input columns for ``feedforward_modules`` (same matching rules as
    ``target_modules``), else on the output rows.

    ``variant="peft"``: ``W' = W ⊙ l`` (l starts at 1) and, for layers that are not feed-forward, ``b' = b ⊙ l``.
    ``variant="lycoris"``: ``W' = W ⊙ (1 + w)`` (w starts at 0), bias untouched. ``init_ia3_weights=False``: random.
    """

    method: ClassVar[str] = "ia3"
    peft_type: ClassVar[str] = "IA3"
    node: ClassVar[Node] = Node(
        "LyCOIA3Config",
        "(IA)³ Config",
        "(IA)³: a learned gain per channel.",
        ("variant", "feedforward_modules", "init_ia3_weights"),
        position=70,
    )
    feedforward_modules: Targets = option(
        None,
        shown="ff.net.2, fc2",
        kind="names",
        tooltip="Modules whose gain acts on input channels (others: output channels). " + NAMES_HELP,
    )
    init_ia3_weights: bool = option(True, tooltip="true: gain 1 (no change at start).")
    variant: str = variant_option()

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.feedforward_modules, (set, tuple)):
            self.feedforward_modules = sorted(self.feedforward_modules)
        check_variant(self, peft_only=(), lycoris_only=())


@trainable
class IA3Trainable(Trainable):
    config_class = IA3Config
    algorithm = IA3
    ranked = False

    def __init__(self, name, layer, config):
        super().__init__(name, layer, config)
        self.variant = config.variant
        self.feedforward = name_matches(config.feedforward_modules, name)
        self.ff_config = {"feedforward_modules": config.feedforward_modules}
        channels = self.weight_shape[1] if self.feedforward else self.weight_shape[0]
        if self.variant == "peft":  # PEFT's shapes: (out,1) or (1,in) for Linear, (1,C,1,…) for convs
            ndim = len(self.weight_shape)
            if ndim == 2:
                shape = (1, channels) if self.feedforward else (channels, 1)
            else:
                shape = (1, channels, *[1] * (ndim - 2))
            gain = torch.ones(shape) if config.init_ia3_weights else 1 + 0.1 * torch.randn(shape)
            self.add("ia3_l", gain)
        else:
            gain = torch.zeros(channels) if config.init_ia3_weights else 0.1 * torch.randn(channels)
            self.add("weight", gain)
            self.add("on_input", torch.tensor(int(self.feedforward)), trainable=False)

    def context(self):
        return ScaleContext(file=self.name, peft=self.variant == "peft", config=self.ff_config, module_path=self.name)

    def changes_bias(self):
        return self.variant == "peft" and self.has_bias and not self.feedforward

    @torch.no_grad()
    def load_from(self, module):
        """From either IA3 spelling: the saved gain (``l`` or ``1 + w``) in our parametrisation."""
        if self.feedforward != module.on_input(self.weight_shape):
            raise ValueError(f"{self.name}: the saved IA3 scales the other axis (feedforward_modules differ)")
        gain = module.gain(torch.empty(0), 1.0)
        target = self.ia3_l if self.variant == "peft" else self.weight
        target.copy_((gain if self.variant == "peft" else gain - 1).reshape(target.shape))

    def lycoris_tensors(self):
        return {"weight": self.weight, "on_input": self.on_input}
