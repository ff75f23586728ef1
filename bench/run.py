"""Run the bench: ``python bench/run.py [--quick] [--json PATH] [--parts a,b] [--gpu]``.

Parts (each a ``part_*.py`` with ``run(env, quick) -> dict``): patch_math, prefetch (dynamic VRAM, 0.33+),
whole_model, inspect, conversion, training. Every figure is a ratio ours ÷ reference measured in this process
(medians of interleaved rounds after warm-up, see harness.py); memory is measured after all timing. Prints a table
and writes all figures as JSON
(default ``bench/results/bench.json``).
ComfyUI is found as the host tests find it (``$COMFYUI_PATH`` or the cached 0.3.75 tree, fetched on first use).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import harness
import host_env
import report

PARTS = ("patch_math", "prefetch", "whole_model", "inspect", "conversion", "training")
NEEDS_COMFY = {"patch_math", "prefetch", "whole_model", "conversion", "training"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and models (under 10 min on 2 cores)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "bench.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use its GPU (default: CPU)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (1 = time by thread CPU time, robust on a shared machine)",
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    env = host_env.comfy(args.gpu) if NEEDS_COMFY & set(parts) else None
    results = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "quick": args.quick,
            "clock": harness.clock(torch.device("cpu")).__name__ if not args.gpu else "wall",
            "device": str(env.device) if env else "cpu",
            "comfyui": str(env.root.name) if env else None,
        }
    }
    for part in PARTS:
        if part not in parts:
            continue
        started = time.perf_counter()
        print(f"[bench] {part} …", flush=True)
        module = __import__(f"part_{part}")
        results[part] = module.run(env, args.quick)
        results[part]["seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    print("[bench] memory …", flush=True)
    harness.run_later()
    for part in parts:
        finish = getattr(__import__(f"part_{part}"), "finish", None)
        if finish is not None:
            finish(results[part])
    results["environment"]["memory_seconds"] = time.perf_counter() - started
    print(report.table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(f"[bench] figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
