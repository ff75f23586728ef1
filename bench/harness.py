"""Timing and memory measurement shared by every bench part.

Timing: ``rounds`` interleaves the candidates (ours, the reference, the floor) in every round, rotating their
order, so that load from other processes hits all of them alike; a ratio is taken per round and the reported
ratio is the median of those, after ``warmup`` untimed rounds. With one torch thread on CPU the clock is the
thread's CPU time (``time.thread_time``: immune to other processes on a shared machine), else wall time.

Peak memory (``measure``): on CUDA ``max_memory_allocated`` − ``memory_allocated`` around the call. On CPU,
torch allocations are invisible to tracemalloc, so the bench measures the process's resident set: glibc hands every
free page back first (``malloc_trim(0)``), so whatever the call allocates — fresh mappings or reused heap — must be
faulted in; the kernel's high-water mark is reset (``/proc/self/clear_refs`` ← 5) and ``VmHWM`` − ``VmRSS`` before
the call is its peak extra memory. Faulting pages in costs time, so memory is measured in calls of its own, after
all timing (``later`` / ``run_later``), never in a timed call.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def _trim_malloc() -> None:
    """Return every free heap page to the system (glibc ``malloc_trim(0)``; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MemoryProbe:
    """Peak and retained extra memory (bytes) of one call, against what was live just before it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return
        _trim_malloc()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        self.before = _status_kib("VmRSS") * 1024

    def stop(self) -> tuple[int, int]:
        """(peak, retained) extra bytes since ``start``; retained is measured after freeing what malloc holds."""
        if self.device.type == "cuda":
            sync(self.device)
            return (
                torch.cuda.max_memory_allocated(self.device) - self.before,
                torch.cuda.memory_allocated(self.device) - self.before,
            )
        peak = max(0, _status_kib("VmHWM") * 1024 - self.before)
        gc.collect()
        _trim_malloc()
        return peak, _status_kib("VmRSS") * 1024 - self.before


@dataclass
class Timings:
    """Seconds per candidate and round (rounds aligned across candidates)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median over rounds of numerator/denominator (same-round pairs)."""
        pairs = zip(self.seconds[numerator], self.seconds[denominator])
        return statistics.median(a / b for a, b in pairs if b > 0)


def clock(device: torch.device):
    """The timer: thread CPU time for single-threaded CPU work, wall time otherwise."""
    return time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def rounds(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    before_each: Callable[[str, int], None] | None = None,
) -> Timings:
    """Time every candidate once per round, ``warmup`` + ``repeats`` rounds, order rotating each round;
    ``before_each(name, round)`` runs untimed before each call (e.g. to restore the weight)."""
    names = list(candidates)
    timer = clock(device)
    timings = Timings({name: [] for name in names})
    for index in range(warmup + repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            if before_each is not None:
                before_each(name, index)
            sync(device)
            start = timer()
            candidates[name]()
            sync(device)
            if index >= warmup:
                timings.seconds[name].append(timer() - start)
    return timings


def measure(call: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """(peak, retained) extra bytes of one call."""
    probe = MemoryProbe(device)
    probe.start()
    call()
    return probe.stop()


_LATER: list[Callable[[], None]] = []


def later(job: Callable[[], None]) -> None:
    """Queue a memory measurement to run after every timing of the bench (see the module docstring)."""
    _LATER.append(job)


def run_later() -> None:
    """Run the queued memory measurements."""
    while _LATER:
        _LATER.pop(0)()


@contextlib.contextmanager
def logged_errors():
    """ERROR records logged meanwhile (ComfyUI's adapters catch their own exceptions and only log them)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    root.handlers = [handler]
    root.setLevel(logging.ERROR)  # setLevel, not .level: it also clears the loggers' isEnabledFor caches
    try:
        yield records
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
