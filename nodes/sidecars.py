"""Sidecar files next to an adapter that other tools write: trigger words and base model.

For ``<dir>/<stem>.safetensors`` (or a PEFT folder's ``adapter_model.safetensors``) it reads, when present:

* ``<stem>.txt`` — trigger words, comma- or line-separated (a common hand-written convention);
* ``<stem>.json`` — A1111's card (``activation text``, ``sd version``) or ``trigger_words``/``trainedWords``,
  ``base_model``/``baseModel``;
* ``<stem>.civitai.info`` — Civitai's version record (``trainedWords``, ``baseModel``).

Unreadable or malformed sidecars are skipped and named in ``errors``; nothing is ever written.

Links: like ComfyUI for models, the adapter may be a symlink, or sit in a symlinked folder; a sidecar is read only
when it really lies in the same folder as the adapter's listed path (after resolving links), so a ``.txt`` linked to
a file elsewhere is never served as trigger words.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SUFFIXES = (".txt", ".json", ".civitai.info")
_WORD_KEYS = ("activation text", "trigger_words", "trainedWords", "trained_words")
_BASE_KEYS = ("baseModel", "base_model", "sd version")


def sidecar_paths(path: str | os.PathLike) -> list[Path]:
    """The sidecar files that exist for an adapter file, in reading order: regular files whose real location is
    the real folder of the adapter's listed path."""
    stem = Path(path).with_suffix("")
    folder = stem.parent.resolve()
    candidates = [stem.with_name(stem.name + suffix) for suffix in SUFFIXES]
    return [p for p in candidates if p.is_file() and p.resolve().parent == folder]


def stamps(path: str | os.PathLike) -> tuple:
    """(name, mtime_ns, size) of each existing sidecar: part of a cache key."""
    out = []
    for sidecar in sidecar_paths(path):
        stat = sidecar.stat()
        out.append((sidecar.name, stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def _split_words(value) -> list[str]:
    items = value if isinstance(value, list) else re.split(r"[,\n]", str(value))
    return [str(item).strip() for item in items if str(item).strip()]


def _from_json(data: dict) -> tuple[list[str], str | None]:
    words = [w for key in _WORD_KEYS if data.get(key) for w in _split_words(data[key])]
    base = next((str(data[key]) for key in _BASE_KEYS if data.get(key)), None)
    return words, base


def read_sidecars(path: str | os.PathLike) -> dict:
    """{"files": [names read], "trigger_words": [...], "base_model": str | None, "errors": [messages]}."""
    result = {"files": [], "trigger_words": [], "base_model": None, "errors": []}
    for sidecar in sidecar_paths(path):
        try:
            text = sidecar.read_text(encoding="utf-8-sig")
            if sidecar.name.endswith(".txt"):
                words, base = _split_words(text), None
            else:
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                words, base = _from_json(data)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            result["errors"].append(f"{sidecar.name}: {exc}")
            continue
        result["files"].append(sidecar.name)
        result["trigger_words"].extend(w for w in words if w not in result["trigger_words"])
        result["base_model"] = result["base_model"] or base
    return result
