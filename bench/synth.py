"""Generated adapter tensors in the LyCORIS/kohya file layout (what both loaders read), per method and weight shape.

Methods and their settings (the issue's): ``lora`` r32 (LoCon on conv), ``locon_tucker`` r32 with ``lora_mid``
(conv k>1 only), ``loha`` r16, ``lokr`` factor 8 with w2 decomposed at r16 (Tucker ``lokr_t2`` on conv k>1),
``oft`` diag-OFT block 32 with constraint 1e-3, ``boft`` block ≤ 32 by LyCORIS' power-of-two factorisation,
``dora`` LoRA r32 with ``dora_scale`` on the output axis. Values are small seeded normals (the math, not the
values, is what is measured), stored as ``FILE_DTYPE`` fp16 like the files people share (kohya's and LyCORIS'
default save precision); scalars (alpha) float32.
"""

from __future__ import annotations

import importlib
import math

import torch

import host_env

factorization = importlib.import_module(f"{host_env.pack().__name__}.lyco_core.algorithms.factorization").factorization
FILE_DTYPE = torch.float16
METHODS = ("lora", "locon_tucker", "loha", "lokr", "oft", "boft", "dora")


def boft_shape(out: int, block: int = 32) -> tuple[int, int, int] | None:
    """``(stages, n_blocks, bs)``: the largest even ``bs ≤ block`` with ``out/bs`` a power of two, else None."""
    for bs in range(block - block % 2, 1, -2):
        n = out // bs
        if out % bs == 0 and n & (n - 1) == 0 and n > 1:
            return int(math.log2(n)) + 1, n, bs
    return None


def module_tensors(method: str, shape: tuple[int, ...], gen: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Parameter tensors (names after the module prefix) for a weight of ``shape``; None where the method does
    not apply to it (Tucker on a linear/1×1 weight, OFT/BOFT blocks that do not divide the output rows)."""
    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    spatial = math.prod(kernel)

    def normal(*size, std=0.05):
        return (torch.randn(*size, generator=gen) * std).to(FILE_DTYPE)

    if method in ("lora", "dora", "locon_tucker"):
        rank = 32
        tucker = method == "locon_tucker"
        if tucker and spatial == 1:
            return None
        ones = (1,) * len(kernel)
        tensors = {
            "lora_up.weight": normal(out, rank, *ones),
            "lora_down.weight": normal(rank, inp, *(ones if tucker else kernel)),
            "alpha": torch.tensor(16.0),
        }
        if tucker:
            tensors["lora_mid.weight"] = normal(rank, rank, *kernel)
        if method == "dora":
            tensors["dora_scale"] = normal(out, 1, *ones).abs() + 1.0
        return tensors
    if method == "loha":
        rank = 16
        return {
            "hada_w1_a": normal(out, rank),
            "hada_w1_b": normal(rank, inp * spatial),
            "hada_w2_a": normal(out, rank),
            "hada_w2_b": normal(rank, inp * spatial),
            "alpha": torch.tensor(8.0),
        }
    if method == "lokr":
        rank = 16
        (a, b), (c, d) = factorization(out, 8), factorization(inp, 8)
        tensors = {"lokr_w1": normal(a, c, std=0.5), "alpha": torch.tensor(8.0)}
        if spatial > 1:
            tensors.update(lokr_w2_a=normal(rank, b), lokr_w2_b=normal(rank, d), lokr_t2=normal(rank, rank, *kernel))
        else:
            tensors.update(lokr_w2_a=normal(b, rank), lokr_w2_b=normal(rank, d))
        return tensors
    if method == "oft":
        if out % 32:
            return None
        return {"oft_blocks": normal(out // 32, 32, 32, std=0.01), "alpha": torch.tensor(1e-3)}
    if method == "boft":
        layout = boft_shape(out)
        if layout is None:
            return None
        stages, n, bs = layout
        return {"oft_blocks": normal(stages, n, bs, bs, std=0.01), "alpha": torch.tensor(1e-3)}
    raise ValueError(f"unknown method {method}")


def adapter_file_tensors(method: str, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole adapter: ``{f"{module}.{param}": tensor}`` for every module name → weight shape the method fits."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        params = module_tensors(method, shape, gen)
        for param, value in (params or {}).items():
            tensors[f"{name}.{param}"] = value
    return tensors
