"""Diagonal OFT (LyCORIS): block-orthogonal rotation of the output rows.

``oft_blocks B (n, bs, bs)``; ``Q = B − Bᵀ``; constraint ``c = alpha·out``: if ``c > 0`` and
``q = ‖Q‖_F + 1e-8 > c`` (norm over all blocks jointly) then ``Q ← Q·c/q``; ``R = (I+Q)(I−Q)⁻¹`` per block;
strength ``R_m = m·R + (1−m)·I``; ``W'_k = R_mᵀ·W_k`` per block of rows; then ``W' ← rescale ⊙ W'`` if a
``rescale (out,1,…)`` is present (not interpolated: LyCORIS rescales at any m). Bias unchanged.
LyCORIS 2.0.x ``oft_diag`` stores the finished R: only the strength and the rotation apply.
In place (``apply_``): R is cached per (device, dtype) — one batched solve per adapter, not one per forward in
ComfyUI's low-VRAM path or per strength change — only ``R_m`` (n·bs² values) is formed per call, and row blocks are
rotated a few at a time with the rescale fused.
Reference: docs/methods.md, Diagonal OFT.
"""

from __future__ import annotations

import torch

from .base import AdapterModule, Loader, check_ndim
from ..bounded_cache import BoundedCache
from .inplace import compute_dtype
from .registry import register
from .rotation import cayley, rotate_rows, rotate_rows_, toward_identity


def constrained_skew(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """``Q = B − Bᵀ``, scaled down to Frobenius norm ``constraint`` (all blocks jointly) when it exceeds it."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.linalg.vector_norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    return q


# the one loader of every OFT and BOFT form (LyCORIS and PEFT)
OFT_LOADER = Loader(
    "OFT", "Load OFT", "OFT and BOFT; the strength interpolates the rotation toward identity (never applied twice)."
)


@register
class DiagOFT(AdapterModule):
    detect_order = 70
    algo = "oft"
    label = "OFT"
    lycoris_algo = "diag-oft"
    loader = OFT_LOADER
    peft_refusal = (
        "LyCORIS OFT rotates output rows (with its constraint and rescale); PEFT OFT rotates input columns — save it "
        "in the lycoris layout, or convert it to LoRA"
    )
    suffixes = ("oft_blocks", "oft_diag", "rescale")

    @classmethod
    def claims(cls, params):
        return "oft_diag" in params or ("oft_blocks" in params and params["oft_blocks"].ndim == 3)

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        self.key = "oft_diag" if "oft_diag" in params else "oft_blocks"
        self._rotations = BoundedCache(4)
        blocks = check_ndim(self, self.key, (3,))
        if blocks.shape[1] != blocks.shape[2]:
            raise self.fail(
                f"blocks of shape {list(blocks.shape[1:])} are not square", key=self.key, expected="(n_blocks, bs, bs)"
            )

    def rank(self):
        return int(self.params[self.key].shape[1])  # block size

    def constraint(self, out_dim: int) -> float:
        alpha = self.params.get("alpha")
        return 0.0 if alpha is None else float(alpha) * out_dim

    def summary(self):
        info = super().summary()
        blocks = self.params[self.key]
        info.update(
            block_size=int(blocks.shape[1]),
            blocks=int(blocks.shape[0]),
            constraint=self.alpha(),
            rescaled="rescale" in self.params,
            stored_rotation=self.key == "oft_diag",
        )
        return info

    def check_target(self, weight_shape, has_bias):
        n, bs, _ = self.params[self.key].shape
        if n * bs != weight_shape[0]:
            raise self.fail(
                f"{n} blocks of {bs} rows cover {n * bs} rows but the weight has {weight_shape[0]}",
                key=self.key,
                expected="an adapter made for this layer",
            )
        rescale = self.params.get("rescale")
        if rescale is not None and rescale.numel() != weight_shape[0]:
            raise self.fail(
                f"rescale has {rescale.numel()} values",
                key="rescale",
                expected=f"{weight_shape[0]} (one per output row)",
            )

    def rotation(self, weight: torch.Tensor) -> torch.Tensor:
        blocks = self.tensor(self.key, weight)
        if self.key == "oft_diag":
            return blocks
        return cayley(constrained_skew(blocks, self.constraint(weight.shape[0])), plus_first=True)

    def apply(self, weight, strength):
        return self.rotate(weight, self.rotation(weight), strength)

    def rotate(self, weight: torch.Tensor, rotation: torch.Tensor, strength: float) -> torch.Tensor:
        """W' for blocks ``rotation (n, bs, bs)`` (from ``rotation``, possibly altered by the caller)."""
        rotation = toward_identity(rotation, strength)
        new_weight = rotate_rows(weight.to(rotation.dtype), rotation)
        if "rescale" in self.params:
            new_weight = new_weight * self.tensor("rescale", weight).reshape(-1, *[1] * (weight.ndim - 1))
        return new_weight

    def apply_(self, weight, strength):
        key = (weight.device, compute_dtype(weight), weight.shape[0])
        rotation = toward_identity(self._rotations.get(key, lambda: self.rotation(weight)), strength)
        rescale = self.tensor("rescale", weight).reshape(-1) if "rescale" in self.params else None
        rotate_rows_(weight, rotation, rescale)
        return weight
