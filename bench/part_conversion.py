"""Part 5: conversion — to-LoRA (rank 64) of an SDXL-sized LoKr adapter, ours vs a full-SVD baseline.

Ours is ``lyco_core.convert.to_lora`` with ``RankPolicy(rank=64)`` (randomized SVD where ``4·r ≤ min(dims)``); the
baseline is the same call with ``exact=True`` (``torch.linalg.svd`` of every ΔW), so both rebuild ΔW alike and
only the factorisation differs. One LoKr module (factor 8, w2 at r16, Tucker on 3×3 convs) per distinct SDXL UNet
weight shape is converted; totals weight each shape by how many SDXL weights have it (``--quick``: the six most
common shapes, covering most of the model). Quality: the relative Frobenius error of ours may exceed the optimal
(full-SVD) error by at most 1 % (``error_excess``).
"""

from __future__ import annotations

import statistics

import torch

import harness
import synth
import unets

RANK = 64


def _adapter(env, shape, gen):
    name = "lora_unet_bench"
    tensors = {f"{name}.{k}": v for k, v in synth.module_tensors("lokr", shape, gen).items()}
    return env.core.adapter_from_tensors(tensors, file="bench-lokr")


def run(env, quick: bool) -> dict:
    convert = __import__(f"{env.core.__name__}.convert", fromlist=["to_lora", "RankPolicy"])
    counts = unets.sdxl_shapes()
    shapes = sorted(counts, key=lambda s: -counts[s])[:6] if quick else sorted(counts)
    repeats = 1 if quick else 3
    gen = torch.Generator().manual_seed(0)
    policies = {"ours": convert.RankPolicy(rank=RANK), "full_svd": convert.RankPolicy(rank=RANK, exact=True)}
    rows, totals = [], {"ours": 0.0, "full_svd": 0.0}
    for shape in shapes:
        adapter = _adapter(env, shape, gen)
        reports = {}

        def call(name):
            def convert_once():
                reports[name] = convert.to_lora(adapter, policies[name])[1]

            return convert_once

        timings = harness.rounds({name: call(name) for name in policies}, repeats, 1, torch.device("cpu"))
        errors = {name: reports[name].total_error() or 0.0 for name in policies}
        excess = errors["ours"] / errors["full_svd"] - 1 if errors["full_svd"] > 0 else 0.0
        for name in policies:
            totals[name] += counts[shape] * timings.median(name)
        rows.append(
            {
                "shape": list(shape),
                "count": counts[shape],
                "ours_s": timings.median("ours"),
                "full_svd_s": timings.median("full_svd"),
                "speedup": timings.ratio("full_svd", "ours"),
                "error": errors["ours"],
                "optimal_error": errors["full_svd"],
                "error_excess": excess,
            }
        )
        print(
            f"  conversion {str(shape):20s} ×{counts[shape]:3d} speedup {rows[-1]['speedup']:.1f} excess {excess:.2e}",
            flush=True,
        )
    covered = sum(counts[s] for s in shapes)
    return {
        "rank": RANK,
        "shapes": rows,
        "weights_covered": f"{covered}/{sum(counts.values())}",
        "sdxl_ours_s": totals["ours"],
        "sdxl_full_svd_s": totals["full_svd"],
        "speedup": totals["full_svd"] / totals["ours"],
        "median_speedup": statistics.median(r["speedup"] for r in rows),
        "max_error_excess": max(r["error_excess"] for r in rows),
    }
