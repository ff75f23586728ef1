"""The fields of a PEFT ``adapter_config.json`` that change the math, checked by type and range once, when the PEFT
layout reads the file: a wrong type or value is an AdapterError naming the field, never a crash, a hang or a silently
other result later (``use_rslora: "false"`` would be true in Python, ``r: -1`` a negative scale).

Regular expressions from the file (``rank_pattern``/``alpha_pattern`` keys, a string ``target_modules`` or
``feedforward_modules``) are compiled here. Python's ``re`` has no time limit, so patterns whose matching time can
explode are refused: a repeated group (``(a+)+``, ``(x|y)*``, ``(ab){2,}``) or a back-reference. PEFT's own patterns
are module names, dotted paths, ``.*`` wildcards, classes and alternatives, which stay linear and pass.
Reference: docs/formats.md, PEFT folders.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import AdapterError

MAX_NEUMANN_TERMS = 64  # PEFT's default is 5; the series converges long before this, and each term costs a matmul
MAX_ALPHA = 1e6
MAX_PATTERN = 1000
_BOOLS = ("use_rslora", "use_dora", "fan_in_fan_out", "coft", "block_share", "use_cayley_neumann",
          "use_effective_conv2d", "decompose_both")  # fmt: skip
_REPEATED_GROUP = re.compile(r"\)(?:[*+?]|\{\d*,?\d*\})")
_BACKREFERENCE = re.compile(r"\\[1-9]|\(\?P=")


def _fail(file: str, field: str, problem: str, expected: str) -> AdapterError:
    return AdapterError(f"adapter_config.json: {field} {problem}", file=file, key=field, expected=expected)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _rank(file: str, field: str, value: Any) -> int:
    """A rank: a whole number ≥ 0 (0 where OFT/BOFT give a block size instead)."""
    if not _number(value) or value != int(value) or value < 0:
        raise _fail(file, field, f"is {str(value)[:40]!r}", "a whole number ≥ 0")
    return int(value)


def _alpha(file: str, field: str, value: Any) -> float:
    if not _number(value) or abs(value) > MAX_ALPHA:
        raise _fail(file, field, f"is {str(value)[:40]!r}", f"a finite number of magnitude ≤ {MAX_ALPHA:g}")
    return float(value)


def safe_pattern(file: str, field: str, pattern: Any) -> re.Pattern:
    """``pattern`` compiled, or AdapterError if it is not a string, does not compile or could backtrack without
    bound (see the module docstring)."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        raise _fail(file, field, f"holds {str(pattern)[:40]!r}", f"a regular expression of at most {MAX_PATTERN} chars")
    unescaped = re.sub(r"\\.", "", pattern)
    if _REPEATED_GROUP.search(unescaped) or _BACKREFERENCE.search(pattern):
        raise _fail(
            file,
            field,
            f"pattern {pattern[:60]!r} repeats a group or refers back",
            "a pattern without repeated groups or back-references (their matching time can explode)",
        )
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise _fail(file, field, f"pattern {pattern[:60]!r} does not compile ({exc})", "a regular expression") from exc


def _patterns(file: str, field: str, value: Any, check) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(file, field, f"is {type(value).__name__}", "an object {pattern: value}")
    for pattern, entry in value.items():
        safe_pattern(file, field, pattern)
        check(file, f"{field}[{pattern[:40]!r}]", entry)
    return value


def _names(file: str, field: str, value: Any) -> Any:
    if isinstance(value, str):
        safe_pattern(file, field, value)
    elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(file, field, f"is {str(value)[:40]!r}", "a list of module names, or one regular expression")
    return value


def checked_config(file: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` itself once every field the math reads has a valid type and range (see the module docstring)."""
    for field in _BOOLS:
        if config.get(field) is not None and type(config[field]) is not bool:
            raise _fail(file, field, f"is {str(config[field])[:40]!r}", "true or false")
    if "peft_type" in config and not isinstance(config["peft_type"], str):
        raise _fail(file, "peft_type", f"is {str(config['peft_type'])[:40]!r}", "a PEFT method name such as LORA")
    if config.get("r") is not None:
        _rank(file, "r", config["r"])
    for field in ("lora_alpha", "alpha"):
        if config.get(field) is not None:
            _alpha(file, field, config[field])
    if config.get("rank_pattern"):
        _patterns(file, "rank_pattern", config["rank_pattern"], _rank)
    if config.get("alpha_pattern"):
        _patterns(file, "alpha_pattern", config["alpha_pattern"], _alpha)
    for field in ("target_modules", "feedforward_modules"):
        if config.get(field) is not None:
            _names(file, field, config[field])
    if "eps" in config and not (_number(config["eps"]) and config["eps"] >= 0):
        raise _fail(file, "eps", f"is {str(config['eps'])[:40]!r}", "a finite number ≥ 0")
    terms = config.get("num_cayley_neumann_terms")
    if terms is not None and not (type(terms) is int and 1 <= terms <= MAX_NEUMANN_TERMS):
        raise _fail(
            file, "num_cayley_neumann_terms", f"is {str(terms)[:40]!r}", f"a whole number 1…{MAX_NEUMANN_TERMS}"
        )
    return config
