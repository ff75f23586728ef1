"""What a conversion did, module by module, and the progress/cancel hook every long operation calls.

Relative error of a module: ``‖ΔW − ΔW'‖_F / ‖ΔW‖_F`` (ΔW the module's delta before, ΔW' after); the total is
``√(Σ‖ΔW − ΔW'‖_F² / Σ‖ΔW‖_F²)`` over every module with a delta. Exact steps report 0 (or the measured round-off).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

Progress = Callable[[int, int], None]
"""``progress(done, total)``; it may raise (e.g. on a user's cancel) to stop before anything is written."""


class Steps:
    """Calls ``progress(done, total)`` once at the start and after every step."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None:
            progress(0, total)

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


@dataclass
class ModuleResult:
    name: str
    source: str  # method(s) in
    result: str  # method out, e.g. "lora r16", "diff", "kept"
    err_sq: float = 0.0
    ref_sq: float = 0.0
    note: str = ""

    @property
    def error(self) -> float | None:
        return math.sqrt(self.err_sq / self.ref_sq) if self.ref_sq > 0 else None


@dataclass
class Report:
    """Per-module results, notes and timing of one operation; ``text()`` is what the CLI prints and nodes show."""

    operation: str
    detail: str = ""
    modules: list[ModuleResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    output: str = ""

    def add(
        self, name: str, source: str, result: str, err_sq: float = 0.0, ref_sq: float = 0.0, note: str = ""
    ) -> ModuleResult:
        entry = ModuleResult(name, source, result, err_sq, ref_sq, note)
        self.modules.append(entry)
        return entry

    def finish(self) -> "Report":
        self.seconds = time.perf_counter() - self.started
        return self

    def total_error(self) -> float | None:
        ref = sum(m.ref_sq for m in self.modules)
        return math.sqrt(sum(m.err_sq for m in self.modules) / ref) if ref > 0 else None

    def worst(self) -> ModuleResult | None:
        scored = [m for m in self.modules if m.error is not None]
        return max(scored, key=lambda m: m.error) if scored else None

    def summary(self) -> str:
        total, worst = self.total_error(), self.worst()
        text = f"{self.operation}"
        if self.detail:
            text += f" ({self.detail})"
        text += f": {len(self.modules)} modules in {self.seconds:.2f} s"
        if total is not None:
            text += f"; total relative error {total:.3e}"
        if worst is not None:
            text += f", worst {worst.error:.3e} ({worst.name})"
        if self.output:
            text += f"; wrote {self.output}"
        return text

    def text(self, limit: int | None = None) -> str:
        """The summary, the notes, then one line per module (the first ``limit`` lines, worst first when limited)."""
        lines = [self.summary(), *(f"note: {n}" for n in self.notes)]
        rows = self.modules
        if limit is not None and len(rows) > limit:
            rows = sorted(rows, key=lambda m: -(m.error or 0.0))[:limit]
        width = min(64, max((len(m.name) for m in rows), default=6))
        for m in rows:
            error = "exact" if m.error is None or m.err_sq == 0 else f"{m.error:.3e}"
            note = f"  {m.note}" if m.note else ""
            lines.append(f"  {m.name[-width:]:{width}}  {m.source:>10} → {m.result:<10} {error:>10}{note}")
        if limit is not None and len(self.modules) > limit:
            lines.append(f"  … {len(self.modules) - limit} more modules")
        return "\n".join(lines)
