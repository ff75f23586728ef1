"""The transform subcommands of ``python -m lyco_core``: convert, to-lora, resize, merge, extract, bake.

Each prints what it did (per-module relative error and the total for lossy steps) on stdout, draws a progress bar
on stderr when that is a terminal, and exits 0; a refused or failed operation exits 2 with the reason (cli.py).
MODEL/BASE/TUNED are state dicts whose keys are the model's own (read lazily from safetensors). Several inputs to
convert, to-lora or resize make a batch: ``-o`` is then a folder and each output is named after its input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .adapter import load_adapter
from .convert import LAYOUTS, RankPolicy, bake, convert, extract, merge, resize, to_lora
from .convert.names import COMPONENTS
from .errors import AdapterError
from .io import PICKLE_SUFFIXES, save_safetensors
from .save import DTYPES, save_adapter
from .statedict import metadata_of, open_state_dict


class TerminalProgress:
    """``progress(done, total)`` drawing one bar line on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.enabled = self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = int(30 * done / total)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def weighted(text: str) -> tuple[str, float]:
    """``PATH[:WEIGHT]``; a PATH that exists as given keeps its colons."""
    head, sep, tail = text.rpartition(":")
    if not sep or Path(text).exists():
        return text, 1.0
    try:
        return head, float(tail)
    except ValueError:
        return text, 1.0


def _stem(path: str) -> str:
    p = Path(path)
    return (
        p.parent.name
        if p.name in ("adapter_model.safetensors", "adapter_model.bin")
        else p.stem
        if p.is_file()
        else p.name
    )


def _outputs(inputs: list[str], out: str, layout: str) -> list[Path]:
    if len(inputs) == 1:
        return [Path(out)]
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise AdapterError("several inputs need a folder for -o", file=out, expected="a folder")
    return [folder / (_stem(i) + ("" if layout == "peft" else ".safetensors")) for i in inputs]


def _policy(args) -> RankPolicy:
    return RankPolicy(
        rank=args.rank,
        energy=args.energy,
        ratio=args.ratio,
        conv_rank=args.conv_rank,
        max_rank=args.max_rank,
        tucker=args.tucker,
        exact=args.exact_svd,
    )


def _save(adapter, path: Path, args, report, base=None) -> None:
    keys = list(base.keys()) if base is not None else None
    written = save_adapter(
        adapter,
        path,
        args.layout,
        overwrite=args.overwrite,
        dtype=args.dtype,
        model_keys=keys,
        component=args.component,
    )
    report.output = str(written)
    print(report.text(limit=None if args.verbose else 40))


def _base(args):
    return open_state_dict(args.base) if args.base else None


def _convert(args) -> int:
    base = _base(args)
    for source, target in zip(args.inputs, _outputs(args.inputs, args.output, args.layout)):
        adapter, report = convert(
            load_adapter(source),
            args.layout,
            model_keys=None if base is None else base.keys(),
            component=args.component,
            progress=TerminalProgress(f"convert {_stem(source)}"),
        )
        _save(adapter, target, args, report, base)
    return 0


def _rank_command(function, label):
    def run(args) -> int:
        base, policy = _base(args), _policy(args)
        for source, target in zip(args.inputs, _outputs(args.inputs, args.output, args.layout)):
            adapter, report = function(
                load_adapter(source),
                policy,
                base=base,
                device=args.device,
                progress=TerminalProgress(f"{label} {_stem(source)}"),
            )
            _save(adapter, target, args, report, base)
        return 0

    return run


def _merge(args) -> int:
    pairs = [weighted(text) for text in args.inputs]
    adapters = [load_adapter(path) for path, _ in pairs]
    policy, base = None if args.full else _policy(args), _base(args)
    adapter, report = merge(
        adapters, [w for _, w in pairs], policy, base=base, device=args.device, progress=TerminalProgress("merge")
    )
    _save(adapter, Path(args.output), args, report, base)
    return 0


def _extract(args) -> int:
    base, tuned = open_state_dict(args.base_model), open_state_dict(args.tuned_model)
    adapter, report = extract(
        base,
        tuned,
        _policy(args),
        method=args.method,
        factor=args.factor,
        min_diff=args.min_diff,
        device=args.device,
        progress=TerminalProgress("extract"),
    )
    _save(adapter, Path(args.output), args, report)
    return 0


def _bake(args) -> int:
    if Path(args.output).suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterError("bake writes safetensors", file=args.output, expected="a .safetensors file name")
    model = open_state_dict(args.model)
    pairs = [weighted(text) for text in args.inputs]
    state, report = bake(
        model, [load_adapter(p) for p, _ in pairs], [w for _, w in pairs], progress=TerminalProgress("bake")
    )
    metadata = {**metadata_of(model), "modelspec.merged_from": report.detail}
    dtype = DTYPES.get(args.dtype)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    report.output = str(save_safetensors(args.output, state, metadata, overwrite=args.overwrite))
    print(report.text(limit=None if args.verbose else 40))
    return 0


def _output_options(parser, layouts=True) -> None:
    parser.add_argument(
        "-o", "--output", required=True, help="output file (a folder for --layout peft, and for several inputs)"
    )
    if layouts:
        parser.add_argument(
            "--layout",
            choices=LAYOUTS,
            default="lycoris",
            help="file layout to write (default lycoris: kohya names, what A1111/Forge/ComfyUI read)",
        )
        parser.add_argument(
            "--component",
            choices=COMPONENTS,
            help="model part of generic (lycoris_/PEFT) module names, e.g. unet for diffusers",
        )
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the saved tensors (default: as computed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every module (default: the worst 40)")


def usable_device(text: str) -> str:
    """``--device``: a torch device this torch build can run on (else argparse exits 2 with the reason)."""
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and not (backend is not None and backend.is_available()):
        raise argparse.ArgumentTypeError(f"'{text}': this torch build has no usable {device.type} device")
    return text


def _rank_options(parser, allow_full: bool = False) -> None:
    policy = parser.add_mutually_exclusive_group(required=True)
    if allow_full:
        policy.add_argument("--full", action="store_true", help="write the exact sum as full-diff modules")
    policy.add_argument("--rank", type=int, help="keep this rank")
    policy.add_argument(
        "--energy", type=float, help="keep the smallest rank holding this fraction of ‖ΔW‖² (e.g. 0.99)"
    )
    policy.add_argument("--ratio", type=float, help="keep singular values ≥ RATIO × the largest")
    parser.add_argument("--conv-rank", type=int, help="fixed rank for convolutions")
    parser.add_argument("--max-rank", type=int, help="upper bound on any chosen rank")
    parser.add_argument("--tucker", action="store_true", help="Tucker-factor k×k convolutions (lora_mid)")
    parser.add_argument("--exact-svd", action="store_true", help="always full SVD (never randomized)")
    parser.add_argument(
        "--device", default="cpu", type=usable_device, help="torch device for the math, e.g. cuda (default cpu)"
    )


def add_commands(commands) -> None:
    """Register the transform subcommands on ``commands`` (an argparse subparsers object)."""
    p = commands.add_parser(
        "convert",
        help="write adapters in another layout, exactly",
        description="Rewrite adapters as LyCORIS/kohya, PEFT or diffusers files without changing "
        "their math; modules the target cannot express are refused by name.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="adapter file(s) or PEFT folder(s)")
    p.add_argument("--to", dest="layout", choices=LAYOUTS, required=True, help="target layout")
    p.add_argument("--base", metavar="MODEL", help="the model's state dict: maps kohya names to module paths")
    _output_options(p, layouts=False)
    p.add_argument("--component", choices=COMPONENTS, help="model part of generic (lycoris_/PEFT) names")
    p.set_defaults(run=_convert)

    for name, function, text in (
        ("to-lora", to_lora, "every module as a LoRA/LoCon by truncated SVD"),
        ("resize", resize, "change the rank of any adapter"),
    ):
        p = commands.add_parser(
            name,
            help=text,
            description=text + "; prints each module's and the total relative error "
            "‖ΔW−ΔW'‖/‖ΔW‖. OFT/BOFT/GLoRA/IA3/DoRA need --base.",
        )
        p.add_argument("inputs", nargs="+", metavar="IN", help="adapter file(s) or PEFT folder(s)")
        _rank_options(p)
        p.add_argument("--base", metavar="MODEL", help="the model's state dict (for weight-dependent methods)")
        _output_options(p)
        p.set_defaults(run=_rank_command(function, name))

    p = commands.add_parser(
        "merge",
        help="merge adapters (any methods) into one",
        description="Sum adapters' deltas with weights (IN:WEIGHT) into one LoRA (SVD) or one "
        "full-diff adapter (--full).",
    )
    p.add_argument("inputs", nargs="+", metavar="IN[:WEIGHT]", help="adapters with optional weights (default 1)")
    _rank_options(p, allow_full=True)
    p.add_argument("--base", metavar="MODEL", help="the model's state dict (for weight-dependent methods)")
    _output_options(p)
    p.set_defaults(run=_merge)

    p = commands.add_parser(
        "extract",
        help="an adapter from a base and a tuned model",
        description="Extract tuned − base per weight as a LoRA/LoCon (SVD) or a LoKr (nearest "
        "Kronecker product); prints each module's relative error.",
    )
    p.add_argument("base_model", metavar="BASE", help="base model state dict")
    p.add_argument("tuned_model", metavar="TUNED", help="tuned model state dict (same architecture)")
    _rank_options(p)
    p.add_argument("--method", choices=("lora", "lokr"), default="lora", help="adapter method")
    p.add_argument("--factor", type=int, default=-1, help="LoKr factor (default −1: LyCORIS' balanced factorization)")
    p.add_argument("--min-diff", type=float, default=0.0, help="skip layers with ‖ΔW‖ ≤ MIN_DIFF·‖W‖")
    _output_options(p)
    p.set_defaults(run=_extract)

    p = commands.add_parser(
        "bake",
        help="apply adapters to a checkpoint and save it",
        description="Write MODEL with the adapters applied in order (each method's own law), "
        "keys and dtypes unchanged.",
    )
    p.add_argument("model", metavar="MODEL", help="checkpoint state dict")
    p.add_argument("inputs", nargs="+", metavar="IN[:WEIGHT]", help="adapters with optional weights (default 1)")
    _output_options(p, layouts=False)
    p.set_defaults(run=_bake)
