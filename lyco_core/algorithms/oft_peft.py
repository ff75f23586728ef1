"""PEFT OFT, every saved format (decided by keys, tensor rank and ``peft_version``).

* ≥0.16, ``oft_R.weight (n or 1, bs(bs−1)/2)``: ``U[triu(1)] = row`` (OneTrainer's scaled OFT, flagged by a true
  ``oft_R.scaled_oft``, stores ``2√(bs−1)·row``: the row is divided by that first), ``Q = U − Uᵀ``; coft: per block, if
  ``‖Q‖_F > ε = eps/√n_rows`` then ``Q ← ε·Q/‖Q‖_F``. Exact: ``R = (I−Q)(I+Q)⁻¹``. Neumann (config default):
  <0.18 ``R = I + 2Σ_{i=1}^{T−1} Qⁱ``; ≥0.18 ``R = I + 2Σ_{i=1}^{K} Qⁱ + Q^{K+1}``, ``K = max(2, T−2)`` (T=1 → I,
  T=2 → I+2Q). Input side: ``W' = flat(W)·blockdiag(R)ᵀ``.
* 0.14–0.15, ``oft_r (n, bs, bs)`` + ``oft_s (out, 1)``: ``S = ½(A − Aᵀ)``, ``R = (I−S)(I+S)⁻¹``, input side, then
  rows ⊙ oft_s.
* ≤0.13, ``oft_r`` only: output side, ``bs = ⌈out/r⌉``, same ½-skew Cayley, ``W' = blockdiag(R)[:out,:out]ᵀ·flat(W)``.
Strength (PEFT has none; ours): ``R → m·R + (1−m)·I`` and ``s → 1 + m·(s − 1)``; m=1 is PEFT's merge exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .base import AdapterModule
from .oft import OFT_LOADER, DiagOFT
from .peft_fields import one_of
from .registry import register
from .rotation import cayley, rotate_columns, rotate_rows, toward_identity


@dataclass(frozen=True)
class PeftOFTOptions:
    """The ``adapter_config.json`` fields that shape PEFT OFT's rotation, with PEFT's defaults (the one place they
    are written: the trainer's OFT config and the PEFT writer take them from here)."""

    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5

    @classmethod
    def of(cls, config: dict[str, Any]) -> PeftOFTOptions:
        """The options a config gives (fields it lacks take PEFT's defaults; values were checked by the layout)."""
        return cls(**{f.name: type(f.default)(config.get(f.name, f.default)) for f in fields(cls)})

    @property
    def neumann_terms(self) -> int | None:
        """Terms of the Cayley–Neumann series, or None for the exact Cayley transform."""
        return self.num_cayley_neumann_terms if self.use_cayley_neumann else None


_OLD_FORMATS = {
    "input": "PEFT 0.14–0.15 OFT (oft_r with oft_s), which PEFT ≥0.16 no longer loads",
    "output": "PEFT ≤0.13 OFT (oft_r on the output rows), which PEFT ≥0.14 no longer loads",
}


def _block_size_from_packed(n_el: int) -> int | None:
    size = int(round((1 + math.sqrt(1 + 8 * n_el)) / 2))
    return size if size * (size - 1) // 2 == n_el else None


def neumann_series(q: torch.Tensor, terms: int, version: tuple[int, ...] | None) -> torch.Tensor:
    """PEFT's truncated Cayley–Neumann series for ``(I+Q)(I−Q)⁻¹``, with the coefficients of the file's version."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    result = eye.clone()
    if terms <= 1:
        return result
    if version is not None and version < (0, 18):
        power = eye
        for _ in range(terms - 1):
            power = power @ q
            result = result + 2 * power
        return result
    result = result + 2 * q
    if terms == 2:
        return result
    power = q
    last = max(2, terms - 2)
    for _ in range(2, last + 1):
        power = power @ q
        result = result + 2 * power
    return result + power @ q


def skew_from_packed(packed: torch.Tensor, block_size: int) -> torch.Tensor:
    """``Q = U − Uᵀ`` per row of ``packed (n, bs(bs−1)/2)``, where ``U[triu(1)] = row`` (row-major order)."""
    rows, cols = torch.triu_indices(block_size, block_size, 1, device=packed.device)
    upper = packed.new_zeros(packed.shape[0], block_size, block_size)
    upper[:, rows, cols] = packed
    return upper - upper.transpose(1, 2)


def coft_bound(eps: float, stored_blocks: int) -> float:
    """PEFT ≥0.16's coft radius ``eps/√n`` for ``n`` stored blocks."""
    return eps / math.sqrt(stored_blocks)


def project_blocks(q: torch.Tensor, bound: float) -> torch.Tensor:
    """Per block, scale to Frobenius norm ``bound`` where it is exceeded (PEFT's coft projection)."""
    norms = torch.linalg.matrix_norm(q, keepdim=True)
    return torch.where(norms <= bound, q, q * (bound / norms))


@register
class PeftOFT(AdapterModule):
    detect_order = 100
    algo = "oft"
    suffixes = ("oft_R.weight", "oft_R.scaled_oft", "oft_r", "oft_s")
    flags = ("oft_R.scaled_oft",)

    @classmethod
    def claims(cls, params):
        return "oft_R.weight" in params or "oft_r" in params

    peft_type = "OFT"
    peft_fan_in_fan_out = True
    label = DiagOFT.label
    lycoris_algo = DiagOFT.lycoris_algo
    loader = OFT_LOADER

    @classmethod
    def peft_config_fields(cls, modules, tensors, folder):
        """One block size, else one block count, for all layers (PEFT builds every layer's blocks from
        ``r``/``oft_block_size``), and the rotation options the modules were read with."""
        sizes = {m.block_size for m in modules.values()}
        counts = {int(m.params["oft_R.weight"].shape[0]) for m in modules.values()}
        options, version = one_of({(m.options, m.ctx.peft_version) for m in modules.values()}, "set of OFT options")
        if len(sizes) == 1 or options.block_share:
            rank, size = 0, one_of(sizes, "OFT block size")
        else:
            rank, size = one_of(counts, "OFT block size or block count"), 0
        config = {
            "r": rank,
            "oft_block_size": size,
            **asdict(options),
            "module_dropout": 0.0,
            "init_weights": True,
            "bias": "none",
        }
        notes = []
        if version is not None:
            config["peft_version"] = ".".join(map(str, version))
        if options.use_cayley_neumann and version is not None and version < (0, 18):
            notes.append(f"Cayley–Neumann series of PEFT {config['peft_version']} kept; PEFT ≥0.18 sums it differently")
        return config, notes

    def to_lycoris(self, has_bias):
        raise ValueError("PEFT OFT rotates input columns (its own Cayley form); LyCORIS OFT rotates output rows")

    def to_peft(self, has_bias, folder):
        if self.format != "packed":
            raise ValueError(_OLD_FORMATS[self.format])
        return {"oft_R.weight": self.packed(self.params["oft_R.weight"])}, None, None  # PEFT has no scaled form

    def __init__(self, name, params, ctx):
        super().__init__(name, params, ctx)
        if "oft_R.weight" in params:
            self.format = "packed"
            packed = params["oft_R.weight"]
            self.block_size = _block_size_from_packed(packed.shape[-1]) if packed.ndim == 2 else None
            if self.block_size is None:
                raise self.fail(
                    f"shape {list(packed.shape)} is not (blocks, bs·(bs−1)/2)",
                    key="oft_R.weight",
                    expected="a packed strict upper triangle per block",
                )
            flag = params.get("oft_R.scaled_oft")
            if flag is not None and flag.numel() != 1:
                raise self.fail(f"shape {list(flag.shape)}", key="oft_R.scaled_oft", expected="one flag (a 0-dim bool)")
            self.scaled = flag is not None and bool(flag.reshape(()).item())
        else:
            self.scaled = False
            self.format = "input" if "oft_s" in params else "output"
            blocks = params["oft_r"]
            if blocks.ndim != 3 or blocks.shape[1] != blocks.shape[2]:
                raise self.fail(f"shape {list(blocks.shape)}", key="oft_r", expected="(blocks, bs, bs)")
            self.block_size = int(blocks.shape[1])

    def rank(self):
        return self.block_size

    def packed(self, stored: torch.Tensor) -> torch.Tensor:
        """The packed rows as PEFT reads them: OneTrainer's scaled OFT divided by ``2√(bs−1)``, else as stored."""
        return stored / (2 * math.sqrt(self.block_size - 1)) if self.scaled else stored

    @property
    def options(self) -> PeftOFTOptions:
        return PeftOFTOptions.of(self.ctx.config)

    def summary(self):
        info = super().summary()
        options = self.options
        info.update(
            block_size=self.block_size,
            peft_format=self.format,
            scaled=self.format == "packed" and self.scaled,
            coft=options.coft,
            block_share=options.block_share,
            cayley_neumann=options.neumann_terms if self.format == "packed" else None,
        )
        return info

    def _stored(self) -> str:
        return "oft_R.weight" if self.format == "packed" else "oft_r"

    def check_target(self, weight_shape, has_bias):
        stored = self.params[self._stored()]
        n, bs = stored.shape[0], self.block_size
        if self.format == "output":
            if n * bs < weight_shape[0] or (n - 1) * bs >= weight_shape[0]:
                raise self.fail(f"{n} blocks of {bs} do not cover {weight_shape[0]} output rows", key="oft_r")
            return
        columns = math.prod(weight_shape[1:])
        if columns % bs or (n != 1 and n * bs != columns):
            raise self.fail(
                f"{n} blocks of {bs} do not cover {columns} input columns",
                key=self._stored(),
                expected="an adapter made for this layer",
            )
        scale = self.params.get("oft_s")
        if scale is not None and scale.numel() != weight_shape[0]:
            raise self.fail(f"oft_s has {scale.numel()} values", key="oft_s", expected=f"{weight_shape[0]}")

    def rotation(self, weight: torch.Tensor) -> torch.Tensor:
        options = self.options
        stored = self.tensor(self._stored(), weight)
        if self.format == "packed":
            q = skew_from_packed(self.packed(stored), self.block_size)
            if options.coft:
                q = project_blocks(q, coft_bound(options.eps, stored.shape[0]))
            terms = options.neumann_terms
            if terms is None:
                return cayley(q, plus_first=False)
            return neumann_series(q, terms, self.ctx.peft_version)
        if options.coft:
            n = stored.shape[0]
            out = weight.shape[0]
            bound = options.eps * math.ceil(out / max(n, 1)) ** 2 / math.sqrt(n)
            stored = project_blocks(stored, bound)
        return cayley(0.5 * (stored - stored.transpose(1, 2)), plus_first=False)

    def apply(self, weight, strength):
        return self.rotate(weight, self.rotation(weight), strength)

    def rotate(self, weight: torch.Tensor, rotation: torch.Tensor, strength: float) -> torch.Tensor:
        """W' for blocks ``rotation`` (from ``rotation``, possibly altered by the caller)."""
        rotation = toward_identity(rotation, strength)
        base = weight.to(rotation.dtype)
        if self.format == "output":
            rows, bs = weight.shape[0], self.block_size
            flat = base.reshape(rows, -1)
            padded = torch.cat([flat, flat.new_zeros(rotation.shape[0] * bs - rows, flat.shape[1])])
            return rotate_rows(padded, rotation)[:rows].reshape(weight.shape)
        new_weight = rotate_columns(base.reshape(weight.shape[0], -1), rotation)
        if "oft_s" in self.params:
            scale = self.tensor("oft_s", weight).reshape(-1, 1)
            new_weight = new_weight * (1 + strength * (scale - 1))
        return new_weight.reshape(weight.shape)
