"""LyCORIS' rule for the LoKr factor shapes (both libraries use it; PEFT with ``sort_divisor=False``).

``factorization(dim, factor)``: if ``factor > 0`` divides ``dim`` → ``(factor, dim/factor)`` sorted ascending (PEFT
keeps that order: ``sort_divisor=False``); else, starting from ``(1, dim)``, move to the next divisor ``m' > m``
while ``m' ≤ factor`` (−1 = no bound) and ``m' + dim/m' ≤ m + n``; return ``(m, n)`` with ``m ≤ n``.
A LoKr weight is ``kron(W1 (a,c), W2 (b, d·∏k))`` with ``(a,b) = factorization(out)``, ``(c,d) = factorization(in)``.
Reference: docs/methods.md, LoKr.
"""

from __future__ import annotations


def factorization(dim: int, factor: int = -1, *, sort_divisor: bool = True) -> tuple[int, int]:
    if factor > 0 and dim % factor == 0:
        m, n = factor, dim // factor
        return (min(m, n), max(m, n)) if sort_divisor else (m, n)
    bound = dim if factor < 0 else factor
    m, n = 1, dim
    while m < n:
        candidate = m + 1
        while dim % candidate:
            candidate += 1
        if candidate > bound or candidate + dim // candidate > m + n:
            break
        m, n = candidate, dim // candidate
    return (m, n) if m <= n else (n, m)
