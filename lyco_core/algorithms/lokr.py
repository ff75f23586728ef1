"""LoKr (Kronecker product of two factors).

``W1 = lokr_w1`` or ``w1_a @ w1_b`` (``(a,c)``); ``W2 = lokr_w2`` (``(b,d[,*k])``), or ``w2_a @ w2_b`` (conv ``w2_b``
may be flattened ``(r, d·∏k)``), or Tucker ``W2[p,q,…] = Σ_{i,j} t2[i,j,…]·w2_a[i,p]·w2_b[j,q]`` (``w2_a (r,b)``).
``ΔW = scale · reshape(kron(W1, W2.reshape(b, −1)), W.shape)``: row ``i·b+p``, input channel ``j·d+q``.
Rank r = ``w1_b.shape[0]`` if W1 is split, else ``w2_b.shape[0]`` if W2 is split; with both halves full LyCORIS
uses scale 1 whatever the stored alpha, PEFT alpha/r from its config (ScaleContext decides).
In place, without the Kronecker temporary: ``flat(W)`` viewed as ``(a, b, c, d·∏k)`` gets
``+= (m·scale)·W1[i,·,j,·] ⊙ W2[·,p,·,q]`` as one broadcast ``addcmul_``. Bypass: ``W1·(x·W2ᵀ)`` on the
input-channel groups (lyco_core/bypass.py), never forming the Kronecker product.
Reference: docs/methods.md, LoKr.
"""

from __future__ import annotations

import torch

from .base import (
    AdditiveModule,
    Loader,
    PeftFolder,
    alpha_tensor,
    check_dim,
    check_fits,
    flat2,
    require,
    reshape_to,
    tucker_rebuild,
)
from .factorization import factorization
from .peft_fields import lycoris_config_fields
from .registry import register


# --- PEFT's LoKr: which factor shapes its config builds -----------------------------------------------------
def factor_shapes(params) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of ``W1 (a, c)`` and ``W2 (b, d[, k…])`` the tensors rebuild; a split, non-Tucker conv ``W2``
    is ``(b, d·∏k)``, its kernel flattened (``w2_b (r, d·∏k)``)."""
    w1 = (
        params["lokr_w1"].shape if "lokr_w1" in params else (params["lokr_w1_a"].shape[0], params["lokr_w1_b"].shape[1])
    )
    if "lokr_w2" in params:
        w2 = params["lokr_w2"].shape
    elif "lokr_t2" in params:
        w2 = (params["lokr_w2_a"].shape[1], params["lokr_w2_b"].shape[1], *params["lokr_t2"].shape[2:])
    else:
        w2 = (params["lokr_w2_a"].shape[0], *params["lokr_w2_b"].shape[1:])
    return tuple(int(n) for n in w1), tuple(int(n) for n in w2)


def peft_factor_shapes(params) -> tuple[int, int, int, tuple[int, ...]]:
    """(a, b, c, candidate d) of ``factor_shapes``: a flat conv ``W2 (b, d·k²)`` leaves d one of ``D/k²``
    (k = 1…7); a full or Tucker ``W2`` states it."""
    (a, c), (b, d, *kernel) = factor_shapes(params)
    flat = "lokr_w2" not in params and "lokr_t2" not in params
    ds = tuple(d // k**2 for k in range(1, 8) if d % k**2 == 0) if flat else (d,)
    return a, b, c, ds


def peft_lokr_rank(params, decompose_both: bool) -> int:
    """The rank PEFT must be told so that it builds these factors (full halves need r ≥ half the side)."""
    for key in ("lokr_w1_b", "lokr_w2_b"):
        if key in params:
            return int(params[key].shape[0])
    a, b, c, (d,) = peft_factor_shapes(params)
    return max(b, d, a if decompose_both else 0, c if decompose_both else 0)


def peft_builds(params, factor: int, decompose_both: bool) -> bool:
    """Whether PEFT's LoKr, configured so, creates exactly these factor shapes (its rules: ``factorization`` of the
    output and input sizes, w2 decomposed at rank r)."""
    a, b, c, ds = peft_factor_shapes(params)
    rank = peft_lokr_rank(params, decompose_both)
    if factorization(a * b, factor, sort_divisor=False) != (a, b):
        return False
    # A flat conv w2_b leaves d ambiguous; the config never states d, so it is exact when every candidate d that
    # PEFT's rule could produce leads to these same factor kinds.
    fitting = [d for d in ds if factorization(c * d, factor, sort_divisor=False) == (c, d)]
    full_w1 = not (decompose_both and rank < max(a, c) / 2)
    return bool(fitting) and all(
        full_w1 == ("lokr_w1" in params) and (not rank < max(b, d) / 2) == ("lokr_w2" in params) for d in fitting
    )


def peft_layout(modules) -> tuple[int, bool, dict[str, str]]:
    """(decompose_factor, decompose_both, {module: why not}) reproducing every module's factor shapes in PEFT."""
    decompose_both = any("lokr_w1" not in m.params for m in modules.values())
    candidates = [-1] + sorted({peft_factor_shapes(m.params)[i] for m in modules.values() for i in (0, 2)})
    for factor in candidates:
        if all(peft_builds(m.params, factor, decompose_both) for m in modules.values()):
            return factor, decompose_both, {}
    return (
        -1,
        decompose_both,
        {
            n: "PEFT's LoKr factorization would build other factor shapes"
            for n, m in modules.items()
            if not peft_builds(m.params, -1, decompose_both)
        },
    )


@register
class LoKr(AdditiveModule):
    detect_order = 40
    algo = "lokr"
    label = "LoKr"
    suffixes = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    ndims = {**dict.fromkeys(suffixes[:6], (2, 3, 4, 5)), "lokr_t2": (3, 4, 5)}

    @classmethod
    def claims(cls, params):
        return any(k.startswith("lokr_") for k in params)

    @classmethod
    def unread(cls, params):
        """Beside the base rule: a full half (``lokr_w1``/``lokr_w2``) is what LyCORIS reads; its factors (and
        ``lokr_t2`` beside a full ``lokr_w2``) are not."""
        unread = set(super().unread(params))
        for half, factors in (("1", ("lokr_w1_a", "lokr_w1_b")), ("2", ("lokr_w2_a", "lokr_w2_b", "lokr_t2"))):
            if f"lokr_w{half}" in params:
                unread.update(k for k in factors if k in params)
        return sorted(unread)

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        for half in ("1", "2"):
            if f"lokr_w{half}" not in params:
                if f"lokr_w{half}_a" not in params and f"lokr_w{half}_b" not in params:
                    raise self.fail(
                        f"neither lokr_w{half} nor lokr_w{half}_a/lokr_w{half}_b is present",
                        key=f"lokr_w{half}",
                        expected=f"lokr_w{half}, or lokr_w{half}_a with lokr_w{half}_b",
                    )
                require(self, (f"lokr_w{half}_a", f"lokr_w{half}_b"))
        if "lokr_w1" not in params:
            check_dim(self, "lokr_w1_a", 1, params["lokr_w1_b"].shape[0], "the rank of lokr_w1_b")
        if "lokr_w2" not in params:
            rank2 = params["lokr_w2_b"].shape[0]
            check_dim(self, "lokr_w2_a", 0 if self.tucker else 1, rank2, "the rank of lokr_w2_b")
            if self.tucker:
                check_dim(self, "lokr_t2", 0, rank2, "the rank of lokr_w2_b")

    @property
    def tucker(self):
        return "lokr_t2" in self.params and "lokr_w2" not in self.params

    @property
    def full_matrix(self) -> bool:
        return "lokr_w1" in self.params and "lokr_w2" in self.params

    scaled = True
    peft_type = "LOKR"
    peft_alpha = ("alpha", 8.0)
    loader = Loader("LoKr", "Load LoKr")

    @classmethod
    def peft_folder(cls, modules, tucker):
        """One ``decompose_factor`` and ``decompose_both`` that make PEFT build every LoKr module's factor shapes
        (the dense differences among ``modules`` take any)."""
        factor, decompose_both, problems = peft_layout({n: m for n, m in modules.items() if isinstance(m, cls)})
        return PeftFolder(cls.algo, decompose_both, tucker, factor), problems

    @classmethod
    def peft_config_fields(cls, modules, tensors, folder):
        fields = {
            **lycoris_config_fields(folder),
            "decompose_both": folder.decompose_both,
            "decompose_factor": folder.decompose_factor,
            "rank_dropout_scale": False,
        }
        return fields, []

    def to_lycoris(self, has_bias):
        """With both halves full LyCORIS' scale is 1: another scale is folded into ``lokr_w1``."""
        if not self.full_matrix:
            return super().to_lycoris(has_bias)
        params, note = {k: v for k, v in self.params.items() if k != "alpha"}, ""
        scale = self.scale_value()
        if scale != 1.0:
            params["lokr_w1"] = self.params["lokr_w1"] * scale
            note = f"scale {scale:g} folded into lokr_w1 (LyCORIS full/full LoKr has scale 1)"
        params["alpha"] = self.params.get("alpha", alpha_tensor(1.0))
        return params, note

    def peft_rank(self, folder):
        return peft_lokr_rank(self.params, folder.decompose_both)

    def weight_shape(self):
        w1, w2 = factor_shapes(self.params)
        return torch.Size((w1[0] * w2[0], w1[1] * w2[1], *w2[2:]))

    def kernel_stored(self):
        return "lokr_w2" in self.params or "lokr_t2" in self.params  # a split W2 may hold a conv kernel flattened

    def rank(self):
        if "lokr_w1" not in self.params:
            return int(self.params["lokr_w1_b"].shape[0])
        if "lokr_w2" not in self.params:
            return int(self.params["lokr_w2_b"].shape[0])
        return None

    def scale_value(self):
        return self.ctx.scale(self.params.get("alpha"), self.rank(), full_matrix=self.full_matrix)

    def _w1(self, device, dtype):
        if "lokr_w1" in self.params:
            return self.params["lokr_w1"].to(device, dtype)
        return self.params["lokr_w1_a"].to(device, dtype) @ self.params["lokr_w1_b"].to(device, dtype)

    def _w2(self, device, dtype):
        if "lokr_w2" in self.params:
            return flat2(self.params["lokr_w2"].to(device, dtype))
        a = self.params["lokr_w2_a"].to(device, dtype)
        b = self.params["lokr_w2_b"].to(device, dtype)
        if self.tucker:
            return flat2(tucker_rebuild(self.params["lokr_t2"].to(device, dtype), flat2(a), flat2(b)))
        return flat2(a) @ flat2(b)

    def check_target(self, weight_shape, has_bias):
        rows_1 = self.params["lokr_w1"].shape[0] if "lokr_w1" in self.params else self.params["lokr_w1_a"].shape[0]
        if "lokr_w2" in self.params:
            rows_2 = self.params["lokr_w2"].shape[0]
        else:
            rows_2 = self.params["lokr_w2_a"].shape[1 if self.tucker else 0]
        if rows_1 * rows_2 != weight_shape[0]:
            raise self.fail(
                f"the Kronecker factors give {rows_1}×{rows_2} = {rows_1 * rows_2} output rows but the "
                f"weight has {weight_shape[0]}",
                expected="an adapter made for this layer",
            )

    def row_group(self):
        return int(
            self.params["lokr_w2"].shape[0]
            if "lokr_w2" in self.params
            else self.params["lokr_w2_a"].shape[1 if self.tucker else 0]
        )

    def factors(self, weight_shape, device, dtype):
        w1, w2 = self._w1(device, dtype), self._w2(device, dtype)
        check_fits(self, [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]], weight_shape, "kron(w1, w2)")
        return w1, w2

    def add_rows_(self, work, rows, factors, scale):
        w1, w2 = factors
        (b, dk), c = w2.shape, w1.shape[1]
        w1 = w1[rows.start // b : rows.stop // b]
        work.view(w1.shape[0], b, c, dk).addcmul_(
            w1[:, None, :, None], w2[None, :, None, :], value=scale * self.scale_value()
        )

    def bypass_weight(self, x, call, strength):
        """``kron(W1, W2) ⋆ x`` without the Kronecker product. Linear: ``x (…, c, d)`` → ``W1 · (x W2ᵀ)``
        ``(…, a, b)``. Conv: each of the c input-channel groups convolved with W2 ``(b, d, *k)``, then mixed by W1."""
        w1 = self._w1(x.device, x.dtype) * (strength * self.scale_value())
        w2 = self._w2(x.device, x.dtype)
        (a, c), b = w1.shape, w2.shape[0]
        if not call.conv_dims:
            mixed = torch.matmul(w1, x.reshape(*x.shape[:-1], c, -1) @ w2.t())
            return mixed.reshape(*x.shape[:-1], a * b)
        batch = x.shape[0]
        grouped = call.apply(x.reshape(batch * c, -1, *x.shape[2:]), w2.reshape(b, -1, *call.kernel))
        spatial = grouped.shape[2:]
        mixed = torch.matmul(w1, grouped.reshape(batch, c, -1))
        return mixed.reshape(batch, a * b, *spatial)

    def delta(self, weight_shape, device, dtype):
        kron = torch.kron(self._w1(device, dtype).contiguous(), self._w2(device, dtype).contiguous())
        return reshape_to(kron, weight_shape, self, "kron(w1, w2)") * self.scale_value()
