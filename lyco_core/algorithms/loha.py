"""LoHa (Hadamard product of two low-rank products).

Plain: ``ΔW = scale · ((w1_a @ w1_b) ⊙ (w2_a @ w2_b))`` reshaped to W (conv: the products are ``(out, in·∏k)``).
Tucker (``hada_t1``/``hada_t2 (r,r,*k)``, ``w?_a (r,out)``, ``w?_b (r,in)``):
``T_j[o,i,…] = Σ_{p,q} t_j[p,q,…]·w_j_a[p,o]·w_j_b[q,i]``, ``ΔW = scale · T_1 ⊙ T_2``. Rank r = ``hada_w1_b.shape[0]``.
In place: each factor is a rank-r product ``L_j @ R_j`` (Tucker: ``L_j = w_j_aᵀ``, ``R_j = t_j ×_q w_j_b``); row chunks
``flat(W)[c] += (m·scale)·(L_1[c] @ R_1) ⊙ (L_2[c] @ R_2)`` (products into two cache-sized scratch chunks, then
``addcmul_``): W is streamed once and the products never leave the cache.
Reference: docs/methods.md, LoHa.
"""

from __future__ import annotations

import torch

from .base import AdditiveModule, Loader, check_dim, check_fits, flat2, require, reshape_to, tucker_fold, tucker_rebuild
from .inplace import scratch, span_length, steps, view_of
from .peft_fields import lycoris_config_fields
from .registry import register

_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


@register
class LoHa(AdditiveModule):
    detect_order = 20
    algo = "loha"
    label = "LoHa"
    suffixes = _FACTORS + ("hada_t1", "hada_t2")
    ndims = {**dict.fromkeys(_FACTORS, (2, 3, 4, 5)), "hada_t1": (3, 4, 5), "hada_t2": (3, 4, 5)}

    @classmethod
    def claims(cls, params):
        return any(k in params for k in _FACTORS)

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        require(self, _FACTORS)
        if self.tucker:
            require(self, ("hada_t1", "hada_t2"))
        rank = params["hada_w1_b"].shape[0]
        for key in ("hada_w1_a", "hada_w2_a"):
            check_dim(
                self,
                key,
                0 if self.tucker else 1,
                params[key.replace("_a", "_b")].shape[0],
                f"the rank of {key.replace('_a', '_b')}",
            )
        out_dim = 1 if self.tucker else 0  # the two halves multiply element by element: same rows, same columns
        check_dim(self, "hada_w2_a", out_dim, params["hada_w1_a"].shape[out_dim], "the rows of hada_w1_a")
        check_dim(self, "hada_w2_b", 1, params["hada_w1_b"].shape[1], "the columns of hada_w1_b")
        self._rank = int(rank)

    @property
    def tucker(self):
        return "hada_t1" in self.params or "hada_t2" in self.params

    scaled = True
    peft_type = "LOHA"
    peft_alpha = ("alpha", 8.0)
    loader = Loader("LoHa", "Load LoHa")

    @classmethod
    def peft_config_fields(cls, modules, tensors, folder):
        return lycoris_config_fields(folder), []

    def weight_shape(self):
        p = self.params
        if "hada_t1" in p:
            return torch.Size((p["hada_w1_a"].shape[1], p["hada_w1_b"].shape[1], *p["hada_t1"].shape[2:]))
        return torch.Size((p["hada_w1_a"].shape[0], flat2(p["hada_w1_b"]).shape[1]))

    def kernel_stored(self):
        return "hada_t1" in self.params  # plain LoHa stores a conv's kernel flattened into its input width

    def rank(self):
        return self._rank

    def scale_value(self):
        return self.ctx.scale(self.params.get("alpha"), self._rank)

    def _factor(self, j, device, dtype):
        a = self.params[f"hada_w{j}_a"].to(device, dtype)
        b = self.params[f"hada_w{j}_b"].to(device, dtype)
        if self.tucker:
            return tucker_rebuild(self.params[f"hada_t{j}"].to(device, dtype), flat2(a), flat2(b))
        return flat2(a) @ flat2(b)

    def factor_pair(self, j, device, dtype):
        """``(L_j (out, r), R_j (r, in·∏k))`` with ``L_j @ R_j`` = factor j, flattened."""
        a = flat2(self.params[f"hada_w{j}_a"].to(device, dtype))
        b = flat2(self.params[f"hada_w{j}_b"].to(device, dtype))
        if self.tucker:
            return a.t(), tucker_fold(self.params[f"hada_t{j}"].to(device, dtype), b)
        return a, b

    def check_target(self, weight_shape, has_bias):
        out = self.params["hada_w1_a"].shape[1 if self.tucker else 0]
        if out != weight_shape[0]:
            raise self.fail(
                f"hada_w1_a gives {out} output rows but the weight has {weight_shape[0]}",
                key="hada_w1_a",
                expected=f"{weight_shape[0]} rows",
            )

    def factors(self, weight_shape, device, dtype):
        """``(L_1, R_1, L_2, R_2)`` and two scratch chunks for the products."""
        pairs = self.factor_pair(1, device, dtype) + self.factor_pair(2, device, dtype)
        out, cols = pairs[0].shape[0], pairs[1].shape[1]
        check_fits(self, [out, cols], weight_shape, "hada_w1 ⊙ hada_w2")
        length = span_length(out, cols, device) * cols
        return pairs + (scratch("product1", length, dtype, device), scratch("product2", length, dtype, device))

    def add_rows_(self, work, rows, factors, scale):
        left1, right1, left2, right2, first, second = factors
        value = scale * self.scale_value()
        for chunk in steps(work.shape[0], first.numel() // work.shape[1]):  # ``work`` may be a chunk already
            shape = (chunk.stop - chunk.start, work.shape[1])
            within = slice(rows.start + chunk.start, rows.start + chunk.stop)
            product1 = torch.mm(left1[within], right1, out=view_of(first, *shape))
            product2 = torch.mm(left2[within], right2, out=view_of(second, *shape))
            work[chunk].addcmul_(product1, product2, value=value)

    def delta(self, weight_shape, device, dtype):
        product = self._factor(1, device, dtype) * self._factor(2, device, dtype)
        return reshape_to(product, weight_shape, self, "hada_w1 ⊙ hada_w2") * self.scale_value()
