"""Command line: ``python -m lyco_core inspect PATH [--json]``, and the transforms of commands.py
(convert, to-lora, resize, merge, extract, bake).

Exit status 0 on success, 2 with the reason on stderr when a file is invalid, an operation is refused or the output
cannot be written, 130 when interrupted by Ctrl+C or SIGTERM (nothing is written then). A SIGKILL leaves at most one
hidden ``.<name>.<pid>.<random>.tmp`` beside the output, which the next write of that output removes.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .adapter import load_adapter
from .commands import add_commands
from .errors import AdapterError


def _format_inspect(summary: dict) -> str:
    lines = [
        f"file:    {summary['file']}",
        f"layout:  {summary['layout']}",
        f"modules: {summary['modules']}  ({', '.join(f'{k} {v}' for k, v in sorted(summary['methods'].items()))})",
    ]
    if summary["rank_range"]:
        lines.append(f"rank:    {summary['rank_range'][0]}–{summary['rank_range'][1]}")
    if summary["alpha_range"]:
        lines.append(f"alpha:   {summary['alpha_range'][0]:g}–{summary['alpha_range'][1]:g}")
    lines.append(f"DoRA:    {summary['dora']} modules   Tucker: {summary['tucker']} modules")
    meta = summary["metadata"]
    if meta["base_model"]:
        lines.append(f"base:    {meta['base_model']}")
    if meta["trigger_words"]:
        lines.append(f"trigger: {', '.join(meta['trigger_words'])}")
    for key, value in meta["network"].items():
        lines.append(f"{key}: {value}")
    if summary["unknown_keys"]:
        lines.append(f"unknown keys ({len(summary['unknown_keys'])}): {', '.join(summary['unknown_keys'][:10])}")
    lines.append("")
    lines.append(f"{'module':60} {'algo':6} {'rank':>5} {'alpha':>8} {'scale':>8}  flags")
    for name, info in summary["per_module"].items():
        flags = " ".join(f for f, on in (("tucker", info["tucker"]), (f"dora-{info['dora_axis']}", info["dora"])) if on)
        alpha = "" if info["alpha"] is None else f"{info['alpha']:g}"
        scale = "" if info["scale"] is None else f"{info['scale']:.4g}"
        rank = "" if info["rank"] is None else str(info["rank"])
        lines.append(f"{name[:60]:60} {info['algo']:6} {rank:>5} {alpha:>8} {scale:>8}  {flags}")
    return "\n".join(lines)


def _inspect(args) -> int:
    summary = load_adapter(args.path, header_only=True).summary()
    print(json.dumps(summary, indent=2) if args.json else _format_inspect(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lyco_core",
        description="Inspect, convert, resize, merge, extract and bake LyCORIS-family "
        "adapters (LyCORIS/kohya, PEFT, diffusers, ComfyUI).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="layout, methods, ranks, alphas, DoRA, metadata of an adapter")
    inspect.add_argument("path", help="a .safetensors file or a PEFT adapter folder")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(run=_inspect)
    add_commands(commands)
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl+C: unwinding removes a half-written temporary file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.run(args)
    except AdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
