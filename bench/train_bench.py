"""Training speed and memory: ``LyCOTrain`` vs ComfyUI's ``TrainLoraNode`` on the tiny SD1.5 checkpoint.

    python bench/train_bench.py [--steps 6] [--rounds 3] [--rank 8] [--dtype fp32|bf16] [--gpu] [--threads N]
                                [--json PATH]

Same data (4 latents 16×16, one conditioning), method, rank (alpha 1 as ComfyUI uses), training dtype, batch size 1,
no gradient checkpointing, every Linear and Conv of the UNet adapted on both sides (ComfyUI's trainer also trains
the norm weights and every bias as full deltas; ours does not). Both run through their node entry points.

steps/s is the marginal rate ``(n₂ − n₁)/(t₂ − t₁)`` between runs of n₁ = 1 and n₂ = ``--steps`` steps, so model
loading and setup cancel out; rounds alternate the two trainers and the median is reported. Peak memory is the
extra resident (CPU) or allocated (CUDA) memory of the ``--steps`` run over what was live before it (harness.py).
``measure()`` returns the figures for ``bench/run.py``'s training part.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import harness
import host_env

REPO = Path(__file__).resolve().parents[1]
METHODS = {  # ComfyUI's algorithm name → our config node and its fields at rank r
    "LoRA": ("LyCOLoRAConfig", lambda r: dict(r=r, lora_alpha=1.0)),
    "LoHa": ("LyCOLoHaConfig", lambda r: dict(r=r, alpha=1.0)),
    "LoKr": ("LyCOLoKrConfig", lambda r: dict(r=r, alpha=1.0, decompose_factor=r)),
    "OFT": ("LyCOOFTConfig", lambda r: dict(variant="lycoris", oft_block_size=r)),
}


def _setup(gpu: bool):
    """ComfyUI, our pack's node classes, ComfyUI's trainer, the tiny checkpoint and the data."""
    env = host_env.comfy(gpu)
    tiny = host_env._by_path("lyco_bench_tiny_sd15", REPO / "tests" / "host" / "tiny_sd15.py")
    fixtures = REPO / ".cache" / "fixtures"
    checkpoint = tiny.make_tiny_sd15(fixtures / "tiny_sd15.safetensors", seed=0)
    import torch
    import comfy.sd

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=True)
    generator = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(1, 4, 16, 16, generator=generator)} for _ in range(4)]
    positive = [clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))]
    ours = importlib.import_module(f"{host_env.PACKAGE}.nodes.train")
    configs = importlib.import_module(f"{host_env.PACKAGE}.nodes.train_configs")
    native = importlib.import_module("comfy_extras.nodes_train").TrainLoraNode
    return env, model, latents, positive, ours.TrainAdapter, {n.NODE_ID: n for n in configs.CONFIG_NODES}, native


def _config(node, fields: dict):
    values = {i.id: getattr(i, "default", None) for i in node.define_schema().inputs}
    values.update(fields, target_modules="")  # every Linear and Conv, as ComfyUI's trainer
    return node.execute(**values)[0]


def _native_defaults(native) -> dict:
    """The defaults of TrainLoraNode's inputs that this bench leaves alone: newer hosts add required ones
    (0.33: ``checkpoint_depth``, ``offloading``, ``bucket_mode``, ``bypass_mode``, all off or 1 by default, i.e.
    the path 0.3.75 always took)."""
    inputs = native.define_schema().inputs if hasattr(native, "define_schema") else []
    return {i.id: i.default for i in inputs if getattr(i, "default", None) is not None}


def measure(steps: int = 6, rounds: int = 3, rank: int = 8, dtype: str = "fp32", gpu: bool = False) -> dict:
    """{method: {ours/native steps per second, ratio, peak MiB each}} (see the module docstring)."""
    env, model, latents, positive, ours, config_nodes, native = _setup(gpu)
    shared = dict(batch_size=1, learning_rate=1e-4, optimizer="AdamW", seed=0, gradient_checkpointing=False)

    def run_ours(method, n):
        node_id, fields = METHODS[method]
        options = dict(
            shared,
            steps=n,
            grad_accumulation=1,
            text_encoder_lr=0.0,
            scheduler="constant",
            warmup_steps=0,
            training_dtype=dtype,
            checkpoint_every=0,
            name=f"bench_{method}",
        )
        ours.execute(
            model=[model],
            config=[_config(config_nodes[node_id], fields(rank))],
            latents=latents,
            positive=positive,
            **{k: [v] for k, v in options.items()},
        )

    def run_native(method, n):
        options = dict(
            _native_defaults(native),
            **shared,
            steps=n,
            grad_accumulation_steps=1,
            rank=rank,
            loss_function="MSE",
            training_dtype=dtype,
            lora_dtype="fp32",
            algorithm=method,
            existing_lora="[None]",
        )
        native.execute(model=[model], latents=latents, positive=positive, **{k: [v] for k, v in options.items()})

    trainers = {"ours": run_ours, "native": run_native}
    probe = harness.MemoryProbe(env.device)
    results = {}
    for method in METHODS:
        rates = {name: [] for name in trainers}
        peaks = {name: [] for name in trainers}
        for index in range(rounds):
            order = list(trainers) if index % 2 == 0 else list(reversed(trainers))
            for name in order:
                started = time.perf_counter()
                trainers[name](method, 1)
                one = time.perf_counter() - started
                probe.start()
                started = time.perf_counter()
                trainers[name](method, steps)
                many = time.perf_counter() - started
                peaks[name].append(probe.stop()[0])
                rates[name].append((steps - 1) / max(many - one, 1e-9))
        ours_rate, native_rate = statistics.median(rates["ours"]), statistics.median(rates["native"])
        results[method] = {
            "ours_steps_per_s": ours_rate,
            "native_steps_per_s": native_rate,
            "ratio": ours_rate / native_rate,
            "ours_peak_mib": statistics.median(peaks["ours"]) / 2**20,
            "native_peak_mib": statistics.median(peaks["native"]) / 2**20,
        }
    import torch

    results["environment"] = {
        "device": str(env.device),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "rank": rank,
        "steps": steps,
        "rounds": rounds,
    }
    return results


def table(results: dict) -> str:
    lines = [
        "| method | LyCOTrain steps/s | TrainLoraNode steps/s | ratio | LyCOTrain peak MiB | native peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        r = results[method]
        lines.append(
            f"| {method} | {r['ours_steps_per_s']:.2f} | {r['native_steps_per_s']:.2f} | {r['ratio']:.2f}× "
            f"| {r['ours_peak_mib']:.0f} | {r['native_peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use its GPU (default: CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = measure(args.steps, args.rounds, args.rank, args.dtype, args.gpu)
    print(table(results))
    print(json.dumps(results["environment"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
