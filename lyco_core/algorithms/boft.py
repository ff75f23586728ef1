"""BOFT (LyCORIS butterfly OFT) on the output rows.

``oft_blocks (M, n, bs, bs)``; Q, constraint (over all M·n blocks, bound ``alpha·out``) and Cayley as diag-OFT.
With ``x = W``, for stage ``i = 0…M−1``: ``R_i ← m·R_i + (1−m)·I``; ``h = 2^i·bs/2``; the row permutation
``π = arange(out).reshape(−1, 2, h).transpose(1, 2).flatten()``; ``x[π] ← blockdiag(R_i) · x[π]`` (R, not Rᵀ,
on blocks of bs consecutive permuted rows). Finally ``W' = rescale ⊙ x`` if rescaled. Bias unchanged.
In place (``apply_``): the stage rotations are cached per (device, dtype) and interpolated per call; columns are
independent, so W (any dtype: fp16/bf16 chunks are converted into the scratch and written back with one rounding,
the rescale folded in) is processed in column chunks through two reused scratch chunks: stage i gathers
``y_{i−1}[π_{i−1}⁻¹[π_i]]`` (the previous stage's output, still in its permuted order) and multiplies it blockwise;
the last output is gathered back into row order once, ``x = y[π_{M−1}⁻¹]``. No dense permutation or rotation matrix
is formed.
Reference: docs/methods.md, BOFT.
"""

from __future__ import annotations

import torch

from .base import AdapterModule, check_ndim
from ..bounded_cache import BoundedCache
from .inplace import compute_dtype, scratch, span_length, spans, view_of
from .oft import OFT_LOADER, constrained_skew
from .registry import register
from .rotation import cayley, toward_identity


def butterfly_order(rows: int, half: int, device) -> torch.Tensor:
    """The stage permutation: within groups of ``2·half`` rows, interleave the two halves."""
    return torch.arange(rows, device=device).reshape(-1, 2, half).transpose(1, 2).reshape(-1)


def stage_gathers(rows: int, bs: int, stages: int, device) -> list[torch.Tensor]:
    """Row indices that feed each stage from the previous stage's permuted output (stage 0: from W), then π_{M−1}⁻¹
    that puts the last output back in row order."""
    orders = [butterfly_order(rows, (2**stage) * bs // 2, device) for stage in range(stages)]
    inverses = [torch.argsort(order) for order in orders]
    return [orders[0]] + [inverse[current] for inverse, current in zip(inverses, orders[1:])] + [inverses[-1]]


@register
class BOFT(AdapterModule):
    detect_order = 80
    algo = "boft"
    label = "BOFT"
    loader = OFT_LOADER
    peft_refusal = (
        "LyCORIS BOFT rotates output rows; PEFT BOFT rotates input columns — save it in the lycoris layout, or "
        "convert it to LoRA"
    )
    suffixes = ("oft_blocks", "rescale")

    @classmethod
    def claims(cls, params):
        return "oft_blocks" in params and params["oft_blocks"].ndim == 4

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        blocks = check_ndim(self, "oft_blocks", (4,))
        if blocks.shape[2] != blocks.shape[3] or blocks.shape[2] % 2:
            raise self.fail(
                f"blocks of shape {list(blocks.shape[2:])}",
                key="oft_blocks",
                expected="square blocks of even size (stages, n_blocks, bs, bs)",
            )
        self._cache = BoundedCache(4)

    def rank(self):
        return int(self.params["oft_blocks"].shape[2])

    def summary(self):
        info = super().summary()
        stages, n, bs, _ = self.params["oft_blocks"].shape
        info.update(
            block_size=int(bs),
            blocks=int(n),
            stages=int(stages),
            constraint=self.alpha(),
            rescaled="rescale" in self.params,
        )
        return info

    def check_target(self, weight_shape, has_bias):
        stages, n, bs, _ = self.params["oft_blocks"].shape
        if n * bs != weight_shape[0] or weight_shape[0] % (bs * 2 ** (stages - 1)):
            raise self.fail(
                f"{stages} stages of {n} blocks of {bs} do not fit {weight_shape[0]} output rows",
                key="oft_blocks",
                expected="an adapter made for this layer",
            )

    def rotation(self, weight: torch.Tensor) -> torch.Tensor:
        """The stage rotations ``(M, n, bs, bs)``: Cayley of the constrained skew blocks."""
        blocks = self.tensor("oft_blocks", weight)
        alpha = self.params.get("alpha")
        constraint = 0.0 if alpha is None else float(alpha) * weight.shape[0]
        return cayley(constrained_skew(blocks, constraint), plus_first=True)

    def apply(self, weight, strength):
        return self.rotate(weight, self.rotation(weight), strength)

    def rotate(self, weight: torch.Tensor, rotations: torch.Tensor, strength: float) -> torch.Tensor:
        """W' for stage rotations ``(M, n, bs, bs)`` (from ``rotation``, possibly altered by the caller)."""
        stages, n, bs, _ = rotations.shape
        x = weight.to(rotations.dtype).reshape(weight.shape[0], -1)
        for stage in range(stages):
            rotation = toward_identity(rotations[stage], strength)
            order = butterfly_order(x.shape[0], (2**stage) * bs // 2, x.device)
            permuted = x[order].reshape(n, bs, -1)
            x = x.clone() if stage == 0 else x
            x[order] = torch.bmm(rotation, permuted).reshape(-1, x.shape[1])
        new_weight = x.reshape(weight.shape)
        if "rescale" in self.params:
            new_weight = new_weight * self.tensor("rescale", weight).reshape(-1, *[1] * (weight.ndim - 1))
        return new_weight

    def apply_(self, weight, strength):
        """Column chunks straight from any contiguous weight (fp16/bf16 included: each chunk converted into the
        compute-dtype scratch and written back with one rounding); a strided one goes through one working copy."""
        if not weight.is_contiguous():
            return super().apply_(weight, strength)
        self.rebuild_(weight, strength)
        return weight

    def rebuild_(self, work, strength):
        stages, n, bs, _ = self.params["oft_blocks"].shape
        rows = work.view(work.shape[0], -1)
        out, cols = rows.shape
        dtype = compute_dtype(work)
        rotations = toward_identity(self._cache.get((work.device, dtype, out), lambda: self.rotation(work)), strength)
        gathers = self._cache.get((work.device, out, "gathers"), lambda: stage_gathers(out, bs, stages, work.device))
        rescale = self.tensor("rescale", work).reshape(out, 1) if "rescale" in self.params else None
        length = span_length(cols, out, work.device) * out
        source, target = (scratch(name, length, dtype, work.device) for name in ("source", "target"))
        for chunk in spans(cols, out, work.device):
            part = rows[:, chunk]
            x, y = view_of(source, out, part.shape[1]), view_of(target, out, part.shape[1])
            if part.dtype == dtype:
                torch.index_select(part, 0, gathers[0], out=x)
            else:
                torch.index_select(y.copy_(part), 0, gathers[0], out=x)
            for stage in range(stages):
                if stage:
                    torch.index_select(y, 0, gathers[stage], out=x)
                torch.bmm(rotations[stage], x.view(n, bs, -1), out=y.view(n, bs, -1))
            result = torch.index_select(y, 0, gathers[-1], out=x)
            part.copy_(result if rescale is None else result.mul_(rescale))
