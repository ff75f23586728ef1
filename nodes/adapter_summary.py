"""The answer of ``GET /lyco/info``: what a listed adapter file contains, read from its header only.

``info_for(name)`` → ``(HTTP status, JSON body)``:

* 200 — ``name``, ``file`` (base name), ``size`` (bytes), ``sha256`` (first 12 hex digits of the file's SHA-256),
  ``layout``, ``modules``, ``methods`` ({method[+dora]: count}), ``method_labels`` ({method: its name as people
  write it}, from each method's record), ``rank_range``, ``alpha_range``, ``dora``,
  ``tucker`` (module counts), ``base_model``, ``trigger_words`` (``modelspec.trigger_phrase``, the most frequent
  ``ss_tag_frequency`` tags, then sidecar files), ``title``, ``network`` (kohya/PEFT settings), ``unknown_keys``
  (count), ``sidecars`` (files read) and ``sidecar_errors``;
* 404 — ``{"error"}`` for any name not in ComfyUI's ``loras`` list (so ``..``, absolute or encoded paths never
  reach the file system);
* 422 — ``{"name", "file", "size", "sha256", "error"}`` for a listed file that is not a readable adapter (the
  message names the problem, never a machine path).

Answers are cached by the file's and its sidecars' (path, mtime, size): a rewritten file gets a new answer.
Blocking work (header read, hashing) is meant to run off the event loop (routes.py uses ``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import logging
import os

from ..lyco_core import AdapterError, load_adapter
from ..lyco_core.algorithms import method_labels
from ..lyco_core.bounded_cache import BoundedCache
from . import sidecars
from .host import adapter_names, adapter_path

log = logging.getLogger("ComfyUI-LyCO")
_answers = BoundedCache(256)


def short_hash(path: str, chunk: int = 1 << 20) -> str:
    """First 12 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:12]


def _algos(summary: dict) -> set[str]:
    return {key.split("+")[0] for key in summary["methods"]}


def _describe(name: str, path: str) -> dict:
    adapter = load_adapter(path, header_only=True)
    summary = adapter.summary()
    meta = summary["metadata"]
    found = sidecars.read_sidecars(path)
    words = list(meta["trigger_words"])
    words += [w for w in found["trigger_words"] if w not in words]
    return {
        "name": name,
        "file": os.path.basename(path),
        "size": os.path.getsize(path),
        "sha256": short_hash(path),
        "layout": summary["layout"],
        "modules": summary["modules"],
        "methods": summary["methods"],
        "method_labels": {algo: label for algo, label in method_labels().items() if algo in _algos(summary)},
        "rank_range": summary["rank_range"],
        "alpha_range": summary["alpha_range"],
        "dora": summary["dora"],
        "tucker": summary["tucker"],
        "base_model": meta["base_model"] or found["base_model"],
        "trigger_words": words,
        "title": adapter.metadata.get("modelspec.title") or adapter.metadata.get("ss_output_name"),
        "network": meta["network"],
        "unknown_keys": len(summary["unknown_keys"]),
        "sidecars": found["files"],
        "sidecar_errors": found["errors"],
    }


def _failure(name: str, path: str, exc: AdapterError) -> dict:
    message = str(AdapterError(exc.problem, file=name, module=exc.module, key=exc.key, expected=exc.expected))
    return {
        "name": name,
        "file": os.path.basename(path),
        "size": os.path.getsize(path),
        "sha256": short_hash(path),
        "error": message,
    }


def info_for(name: str) -> tuple[int, dict]:
    """(status, body) for an adapter name; see the module docstring."""
    if not name:
        return 400, {"error": "missing query parameter 'name'"}
    if name not in adapter_names():
        return 404, {"error": "unknown adapter name: not in ComfyUI's loras list", "name": name}
    path = adapter_path(name)
    stat = os.stat(path)
    return _answers.get((path, stat.st_mtime_ns, stat.st_size, sidecars.stamps(path)), lambda: _answer(name, path))


def _answer(name: str, path: str) -> tuple[int, dict]:
    try:
        return 200, _describe(name, path)
    except AdapterError as exc:
        return 422, _failure(name, path, exc)
