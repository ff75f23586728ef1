"""Part 6: training — steps/s and peak memory of LyCOTrain vs ComfyUI's TrainLoraNode (train_bench.py), for LoRA,
LoHa, LoKr and OFT at rank 8 on the tiny SD1.5 checkpoint. ``speed_ratio`` is ours ÷ native steps/s (≥ 1 is
faster), ``peak_mem_ratio`` ours ÷ native peak memory; both also per method.
"""

from __future__ import annotations

import statistics

import train_bench


def run(env, quick: bool) -> dict:
    results = train_bench.measure(steps=3 if quick else 6, rounds=1 if quick else 3, gpu=env.device.type == "cuda")
    methods = {m: results[m] for m in train_bench.METHODS}
    for row in methods.values():
        row["peak_mem_ratio"] = row["ours_peak_mib"] / max(row["native_peak_mib"], 1e-6)
    return {
        "speed_ratio": statistics.median(r["ratio"] for r in methods.values()),
        "worst_speed_ratio": min(r["ratio"] for r in methods.values()),
        "peak_mem_ratio": statistics.median(r["peak_mem_ratio"] for r in methods.values()),
        "methods": methods,
        "setup": results["environment"],
    }
