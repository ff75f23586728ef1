"""The nearest Kronecker product (Van Loan & Pitsianis), for LoKr extraction.

Rearranging ``M (a·b, c·D)`` into ``R[(i,j), (p,q)] = M[i·b+p, j·D+q]`` (an ``(a·c, b·D)`` matrix) turns
``kron(W1, W2)`` into the rank-one ``vec(W1)·vec(W2)ᵀ``, so the best ``W1 (a,c)``, ``W2 (b,D)`` in Frobenius norm
come from the top singular pair of R: ``W1 = √σ₁·u₁``, ``W2 = √σ₁·v₁``, with error² ``‖M‖_F² − σ₁²``.
The shapes follow LyCORIS' factorization rule (algorithms/factorization.py).
"""

from __future__ import annotations

import torch


def nearest_kronecker(matrix: torch.Tensor, a: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W1 (a, c), W2 (b, D))`` minimising ``‖matrix − kron(W1, W2)‖_F`` for ``matrix (a·b, c·D)``."""
    rows, cols = matrix.shape
    b, d = rows // a, cols // c
    rearranged = matrix.reshape(a, b, c, d).permute(0, 2, 1, 3).reshape(a * c, b * d)
    u, s, vh = torch.linalg.svd(rearranged, full_matrices=False)
    root = s[0].sqrt()
    return (u[:, 0] * root).reshape(a, c), (vh[0] * root).reshape(b, d)
