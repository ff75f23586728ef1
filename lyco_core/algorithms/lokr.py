"""LoKr (Kronecker product of two factors).

``W1 = lokr_w1`` or ``w1_a @ w1_b`` (``(a,c)``); ``W2 = lokr_w2`` (``(b,d[,*k])``), or ``w2_a @ w2_b`` (conv ``w2_b``
may be flattened ``(r, d·∏k)``), or Tucker ``W2[p,q,…] = Σ_{i,j} t2[i,j,…]·w2_a[i,p]·w2_b[j,q]`` (``w2_a (r,b)``).
``ΔW = scale · reshape(kron(W1, W2.reshape(b, −1)), W.shape)``: row ``i·b+p``, input channel ``j·d+q``.
Rank r = ``w1_b.shape[0]`` if W1 is split, else ``w2_b.shape[0]`` if W2 is split; with both halves full LyCORIS
uses scale 1 whatever the stored alpha, PEFT alpha/r from its config (ScaleContext decides).
"""
from __future__ import annotations

import torch

from .base import AdditiveModule, check_dim, flat2, require, reshape_to, tucker_rebuild
from .registry import register


@register
class LoKr(AdditiveModule):
    algo = "lokr"
    suffixes = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    @classmethod
    def claims(cls, params):
        return any(k.startswith("lokr_") for k in params)

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        for half in ("1", "2"):
            if f"lokr_w{half}" not in params:
                if f"lokr_w{half}_a" not in params and f"lokr_w{half}_b" not in params:
                    raise self.fail(f"neither lokr_w{half} nor lokr_w{half}_a/lokr_w{half}_b is present",
                                    key=f"lokr_w{half}", expected=f"lokr_w{half}, or lokr_w{half}_a with lokr_w{half}_b")
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
            raise self.fail(f"the Kronecker factors give {rows_1}×{rows_2} = {rows_1 * rows_2} output rows but the "
                            f"weight has {weight_shape[0]}", expected="an adapter made for this layer")

    def delta(self, weight_shape, device, dtype):
        kron = torch.kron(self._w1(device, dtype).contiguous(), self._w2(device, dtype).contiguous())
        return reshape_to(kron, weight_shape, self, "kron(w1, w2)") * self.scale_value()
