"""``W' = W + ΔW`` for LoHa's and LoKr's ΔW as single autograd nodes: one out-of-place pass builds W', and the
hand-written backward keeps only the small factors from the forward (autograd through the plain formulas keeps
weight-sized products, or reduces weight-sized elementwise products). ``G = ∂ℓ/∂W'``; ``∂W = G``.

Hadamard (LoHa), ``W' = W + s·(L₁R₁) ⊙ (L₂R₂)``, ``L_j (out, r)``, ``R_j (r, cols)``: the backward recomputes
each product instead of having stored it: ``H₁ = G ⊙ L₂R₂``, ``∂L₁ = s·H₁R₁ᵀ``, ``∂R₁ = s·L₁ᵀH₁``; ``H₂ = G ⊙ L₁R₁``,
``∂L₂ = s·H₂R₂ᵀ``, ``∂R₂ = s·L₂ᵀH₂`` (one weight-sized temporary at a time besides G).

Kronecker (LoKr), ``W' = W + s·kron(W₁, W₂)``, ``W₁ (a, c)``, ``W₂ (b, d)`` (``d`` = input channels × kernel):
with ``flat(W')`` viewed as ``(a, b, c, d)``, ``W'[i,p,j,q] = W[i,p,j,q] + s·W₁[i,j]·W₂[p,q]`` (one broadcast
``addcmul``). Backward: ``Ĝ = G`` permuted to ``(a·c, b·d)`` (one copy), ``∂W₁ = s·Ĝ·vec(W₂)``,
``∂W₂ = s·vec(W₁)ᵀ·Ĝ`` (two matrix-vector products).
"""

from __future__ import annotations

import torch


class _HadamardUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, left1, right1, left2, right2, scale):
        ctx.save_for_backward(left1, right1, left2, right2)
        ctx.scale, ctx.weight_dtype = scale, weight.dtype
        return torch.addcmul(weight, left1 @ right1, left2 @ right2, value=scale)

    @staticmethod
    def backward(ctx, grad):
        left1, right1, left2, right2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = [grad.to(ctx.weight_dtype) if need[0] else None, None, None, None, None, None]
        for j, (left, right, other_left, other_right) in enumerate(
            ((left1, right1, left2, right2), (left2, right2, left1, right1))
        ):
            if not (need[1 + 2 * j] or need[2 + 2 * j]):
                continue
            weighted = (other_left @ other_right).to(grad.dtype).mul_(grad)  # H_j
            if need[1 + 2 * j]:
                grads[1 + 2 * j] = (weighted @ right.to(grad.dtype).t()).mul_(ctx.scale).to(left.dtype)
            if need[2 + 2 * j]:
                grads[2 + 2 * j] = (left.to(grad.dtype).t() @ weighted).mul_(ctx.scale).to(right.dtype)
        return tuple(grads)


def hadamard_update(
    weight: torch.Tensor,
    left1: torch.Tensor,
    right1: torch.Tensor,
    left2: torch.Tensor,
    right2: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``weight + scale·(left1 @ right1) ⊙ (left2 @ right2)`` (weight ``(out, cols)``, lefts ``(out, r)``, rights
    ``(r, cols)``), differentiable in all five tensors."""
    return _HadamardUpdate.apply(weight, left1, right1, left2, right2, float(scale))


class _KroneckerUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, first, second, scale):
        (a, c), (b, d) = first.shape, second.shape
        ctx.save_for_backward(first, second)
        ctx.scale, ctx.weight_dtype, ctx.weight_shape = scale, weight.dtype, weight.shape
        blocks = weight.reshape(a, b, c, d)
        return torch.addcmul(blocks, first[:, None, :, None], second[None, :, None, :], value=scale).reshape(
            weight.shape
        )

    @staticmethod
    def backward(ctx, grad):
        first, second = ctx.saved_tensors
        need = ctx.needs_input_grad
        (a, c), (b, d) = first.shape, second.shape
        grad_first = grad_second = None
        if need[1] or need[2]:
            regrouped = grad.reshape(a, b, c, d).permute(0, 2, 1, 3).reshape(a * c, b * d)  # Ĝ
            if need[1]:
                grad_first = (regrouped @ second.to(grad.dtype).reshape(-1)).mul_(ctx.scale).reshape(a, c)
                grad_first = grad_first.to(first.dtype)
            if need[2]:
                grad_second = (first.to(grad.dtype).reshape(-1) @ regrouped).mul_(ctx.scale).reshape(b, d)
                grad_second = grad_second.to(second.dtype)
        return grad.to(ctx.weight_dtype) if need[0] else None, grad_first, grad_second, None


def kronecker_update(weight: torch.Tensor, first: torch.Tensor, second: torch.Tensor, scale: float) -> torch.Tensor:
    """``weight + scale·reshape(kron(first, second), weight.shape)`` (first ``(a, c)``, second ``(b, d)``, weight
    ``a·b`` rows of ``c·d`` values), differentiable in all three tensors."""
    return _KroneckerUpdate.apply(weight, first, second, float(scale))
