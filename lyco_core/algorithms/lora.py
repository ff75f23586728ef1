"""LoRA / LoCon: ``ΔW = scale · reshape(flat(up) @ flat(down), W.shape)``.

Tucker conv (``lora_mid (r,r,*k)``, down ``(r,in,1,1)``, up ``(out,r,1,1)``):
``ΔW[o,i,…] = scale · Σ_{p,q} mid[p,q,…]·up[o,p]·down[q,i]``.
Rank r = ``down.shape[0]``; scale per the layout (alpha/r, rsLoRA, PEFT config). PEFT ``lora_B.bias`` adds
``scale·bias`` to the layer bias. DoRA (``dora_scale`` / ``magnitude``) is handled by AdditiveModule.
In place: ``flat(W) += (m·scale)·U @ D'`` as one ``addmm_`` (Tucker folds the core into ``D' = mid ×_q down``,
``(r, in·∏k)``), with no ΔW temporary; factors stored in an fp16/bf16 weight's own dtype go straight into it
(``single_rounding_gemm``: float32 accumulation, one rounding, no conversion of W), and fp16/float32 factors or a
folded Tucker core into a bf16 weight as their exact bf16 pieces (``half_gemm_factors``).
Bypass: ``m·scale·U(D(x))`` as two thin products (see lyco_core/bypass.py).
Reference: docs/methods.md, LoRA / LoCon.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AdditiveModule, Loader, check_dim, check_fits, flat2, require, reshape_to, tucker_fold, tucker_rebuild
from .inplace import fast_bf16_gemm, half_gemm_factors
from .registry import register


@register
class LoRA(AdditiveModule):
    detect_order = 10
    algo = "lora"
    label = "LoRA"
    suffixes = ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_up.bias")
    ndims = {
        "lora_up.weight": (2, 3, 4, 5),
        "lora_down.weight": (2, 3, 4, 5),
        "lora_mid.weight": (3, 4, 5),
        "lora_up.bias": (1,),
    }

    @classmethod
    def claims(cls, params):
        return "lora_up.weight" in params or "lora_down.weight" in params

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        require(self, ("lora_up.weight", "lora_down.weight"))
        rank = params["lora_down.weight"].shape[0]
        check_dim(self, "lora_up.weight", 1, rank, "the rank from lora_down.weight")
        if "lora_mid.weight" in params:
            check_dim(self, "lora_mid.weight", 0, rank, "the rank")
            check_dim(self, "lora_mid.weight", 1, rank, "the rank")

    @property
    def tucker(self):
        return "lora_mid.weight" in self.params

    scaled = True
    peft_type = "LORA"
    peft_alpha = ("lora_alpha", 8.0)
    peft_fan_in_fan_out = True
    diffusers_loads = True
    loader = Loader("LoRA", "Load LoRA / LoCon", "LoRA and LoCon (incl. Tucker and DoRA) from any layout.")

    @classmethod
    def peft_config_fields(cls, modules, tensors, folder):
        """DoRA (``lora_magnitude_vector``) and ``lora_B.bias`` as the written tensors have them; DoRA is one switch
        for the whole folder."""
        dora = any(k.endswith(".lora_magnitude_vector") for k in tensors)
        if dora and not all(m.dora for m in modules.values()):
            raise ValueError("use_dora is one switch for the whole folder; DoRA is on some modules only")
        fields = {
            "use_dora": dora,
            "use_rslora": False,
            "lora_bias": any(k.endswith(".lora_B.bias") for k in tensors),
            "bias": "none",
            "init_lora_weights": True,
            "lora_dropout": 0.0,
        }
        return fields, []

    def kohya_lora(self):
        return not self.tucker and not self.dora

    def low_rank_factors(self):
        return None if self.tucker else (self.params["lora_up.weight"], self.params["lora_down.weight"])

    def to_peft(self, has_bias, folder):
        """``lora_A/lora_B`` (+ ``lora_B.bias``); DoRA as ``lora_magnitude_vector`` (PEFT normalises output rows, so
        an input-axis LyCORIS DoRA has no PEFT form); Tucker LoCon has none either."""
        p = self.params
        if self.tucker:
            raise ValueError("Tucker LoCon (lora_mid) has no PEFT form")
        params = {"lora_A.weight": p["lora_down.weight"], "lora_B.weight": p["lora_up.weight"]}
        if "lora_up.bias" in p:
            params["lora_B.bias"] = p["lora_up.bias"]
        if "magnitude" in p:
            params["lora_magnitude_vector"] = p["magnitude"]
        elif "dora_scale" in p:
            if self.dora_axis() != "out":
                raise ValueError("DoRA on the input axis has no PEFT form (PEFT normalises output rows)")
            up = p["lora_up.weight"]
            params["lora_magnitude_vector"] = (
                p["dora_scale"].reshape(-1) if up.ndim == 2 else p["dora_scale"].reshape(1, -1, *[1] * (up.ndim - 2))
            )
        rank = self.rank()
        return params, rank, self.scale_value() * rank

    def to_lycoris(self, has_bias):
        """PEFT DoRA's ``magnitude`` becomes an on-output ``dora_scale``; PEFT's ``lora_B.bias`` has no LyCORIS form."""
        if "lora_up.bias" in self.params:
            raise ValueError("PEFT lora_B.bias changes the layer bias, which a LyCORIS LoRA cannot")
        params, note = super().to_lycoris(has_bias)
        if "magnitude" in params:
            up = self.params["lora_up.weight"]
            params["dora_scale"] = params.pop("magnitude").reshape(-1, *[1] * (up.ndim - 1))
            note = "PEFT DoRA as LyCORIS DoRA: equal at strength 1, LyCORIS interpolates the rescale at other strengths"
        return params, note

    def weight_shape(self):
        up, down = self.params["lora_up.weight"], self.params["lora_down.weight"]
        if "lora_mid.weight" in self.params:
            return torch.Size((up.shape[0], down.shape[1], *self.params["lora_mid.weight"].shape[2:]))
        return torch.Size((up.shape[0], *down.shape[1:]))

    def rank(self):
        return int(self.params["lora_down.weight"].shape[0])

    def scale_value(self):
        return self.ctx.scale(self.params.get("alpha"), self.rank())

    def check_target(self, weight_shape, has_bias):
        out = self.params["lora_up.weight"].shape[0]
        if out != weight_shape[0]:
            raise self.fail(
                f"lora_up has {out} output rows but the weight has {weight_shape[0]}",
                key="lora_up.weight",
                expected=f"shape ({weight_shape[0]}, r, …)",
            )
        if self.tucker and tuple(self.params["lora_mid.weight"].shape[2:]) != tuple(weight_shape[2:]):
            raise self.fail(
                f"lora_mid kernel {list(self.params['lora_mid.weight'].shape[2:])} differs from the "
                f"weight's {list(weight_shape[2:])}",
                key="lora_mid.weight",
            )

    def delta(self, weight_shape, device, dtype):
        up = self.params["lora_up.weight"].to(device, dtype)
        down = self.params["lora_down.weight"].to(device, dtype)
        if self.tucker:
            mid = self.params["lora_mid.weight"].to(device, dtype)
            rebuilt = tucker_rebuild(mid, flat2(up).t(), flat2(down))
        else:
            rebuilt = flat2(up) @ flat2(down)
        return reshape_to(rebuilt, weight_shape, self, "lora_up @ lora_down") * self.scale_value()

    def factors(self, weight_shape, device, dtype):
        up = flat2(self.params["lora_up.weight"].to(device, dtype))
        down = flat2(self.params["lora_down.weight"].to(device, dtype))
        if self.tucker:
            down = tucker_fold(self.params["lora_mid.weight"].to(device, dtype), down)
        check_fits(self, [up.shape[0], down.shape[1]], weight_shape, "lora_up @ lora_down")
        return up, down

    def add_rows_(self, work, rows, factors, scale):
        up, down = factors
        work.addmm_(up[rows], down, alpha=scale * self.scale_value())

    def apply_(self, weight, strength):
        pair = None if self.dora or weight.ndim < 2 else self.half_pair(weight)
        if pair is None:
            return super().apply_(weight, strength)
        weight.view(weight.shape[0], -1).addmm_(*pair, alpha=strength * self.scale_value())
        return weight

    def half_pair(self, weight):
        """``(U, D')`` ready for one ``addmm_`` into an fp16/bf16 ``weight`` (``half_gemm_factors``), or None."""
        if weight.dtype not in (torch.float16, torch.bfloat16):
            return None
        if self.tucker and not (weight.dtype == torch.bfloat16 and fast_bf16_gemm(weight.device)):
            return None  # a folded Tucker core is a float32 product: only bf16 pieces carry it exactly
        up = flat2(self.params["lora_up.weight"].to(weight.device))
        down = flat2(self.params["lora_down.weight"].to(weight.device))
        if self.tucker:
            down = tucker_fold(self.params["lora_mid.weight"].to(weight.device, torch.float32), down.float())
        check_fits(self, [up.shape[0], down.shape[1]], weight.shape, "lora_up @ lora_down")
        return half_gemm_factors(weight, up, down)

    def bypass_weight(self, x, call, strength):
        """``m·scale·U ⋆ (D ⋆ x)``; conv: D carries the kernel (Tucker: 1×1 D, then ``mid`` with the layer's
        geometry), U is 1×1."""
        up = flat2(self.params["lora_up.weight"].to(x.device, x.dtype))
        down = self.params["lora_down.weight"].to(x.device, x.dtype)
        scale = strength * self.scale_value()
        if not call.conv_dims:
            return F.linear(F.linear(x, flat2(down)), up) * scale
        if self.tucker:
            hidden = call.apply(call.pointwise(x, flat2(down)), self.params["lora_mid.weight"].to(x.device, x.dtype))
        else:
            hidden = call.apply(x, down.reshape(down.shape[0], *call.weight_shape[1:]))
        return call.pointwise(hidden, up) * scale

    def bias_delta(self, device, dtype):
        bias = self.params.get("lora_up.bias")
        return None if bias is None else bias.to(device, dtype) * self.scale_value()
