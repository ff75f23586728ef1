"""Block-orthogonal building blocks shared by OFT and BOFT (LyCORIS and PEFT variants).

Everything is blockwise: rotations are ``(n, bs, bs)`` stacks, never dense ``out×out`` matrices.
Reference: docs/methods.md, OFT and BOFT sections.
"""

from __future__ import annotations

import torch

from .inplace import row_chunks, scratch, span_length, view_of


def identity_like(blocks: torch.Tensor) -> torch.Tensor:
    return torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype).expand_as(blocks)


def cayley(q: torch.Tensor, *, plus_first: bool) -> torch.Tensor:
    """Per block: ``(I+Q)(I−Q)⁻¹`` when ``plus_first`` (LyCORIS), else ``(I−Q)(I+Q)⁻¹`` (PEFT exact).

    Both factors are functions of Q and commute, so this is one batched solve (no explicit inverse).
    """
    eye = identity_like(q)
    numerator, denominator = (eye + q, eye - q) if plus_first else (eye - q, eye + q)
    return torch.linalg.solve(denominator, numerator)


def toward_identity(rotation: torch.Tensor, strength: float) -> torch.Tensor:
    """``m·R + (1−m)·I``: the strength law for rotations (m=1 → R, m=0 → I)."""
    if strength == 1.0:
        return rotation
    return strength * rotation + (1.0 - strength) * identity_like(rotation)


def rotate_rows(weight: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Output side: ``W'_k = R_kᵀ · W_k`` for each block k of ``bs`` consecutive rows (any trailing dims)."""
    n, bs, _ = rotation.shape
    blocks = weight.reshape(n, bs, -1)
    return torch.bmm(rotation.transpose(1, 2), blocks).reshape(weight.shape)


def rotate_rows_(weight: torch.Tensor, rotation: torch.Tensor, row_scale: torch.Tensor | None = None) -> None:
    """In place ``W_k ← R_kᵀ·W_k`` (then ``⊙ row_scale (out,)``) for each block of bs rows of a weight of any dtype
    and layout: chunks of a few blocks, each rotated into one reused scratch chunk and copied back."""
    n, bs, _ = rotation.shape
    cols = weight[0].numel()
    rotated_chunk = scratch(
        "rotated", span_length(n, bs * cols, rotation.device) * bs * cols, rotation.dtype, rotation.device
    )
    transposed = rotation.transpose(1, 2)
    for rows, work in row_chunks(weight, bs, split=True):
        blocks = work.view(-1, bs, cols)
        rotated = torch.bmm(
            transposed[rows.start // bs : rows.stop // bs], blocks, out=view_of(rotated_chunk, *blocks.shape)
        )
        if row_scale is not None:
            rotated.mul_(row_scale[rows].view(-1, bs, 1))
        blocks.copy_(rotated)


def rotate_columns(flat_weight: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Input side: ``W' = W · blockdiag(R)ᵀ`` on the columns of a 2-D weight (one R may serve every block)."""
    out, cols = flat_weight.shape
    bs = rotation.shape[-1]
    blocks = flat_weight.reshape(out, cols // bs, bs).transpose(0, 1)  # (n, out, bs)
    if rotation.shape[0] == 1:
        rotated = blocks @ rotation[0].t()
    else:
        rotated = torch.bmm(blocks, rotation.transpose(1, 2))
    return rotated.transpose(0, 1).reshape(out, cols)
