"""Start and drive a ComfyUI server over HTTP (stdlib only).

``server_command(...)`` is the server's command line and ``server_env(repo_root)`` the environment for a child
process that imports ComfyUI (the server, a fixture generator); ``server_up(base_url)`` says whether a server answers
yet (the test harness and ``tools/demo.py`` use all three).

``run_prompt(base_url, prompt)`` posts an API-format graph to ``/prompt``, polls
``/history/{prompt_id}`` until the run is completed and returns its ``outputs`` (raising
``PromptError`` with ComfyUI's ``node_errors``/``messages`` on a rejected or failed prompt).
``txt2img_graph(...)`` builds the standard CheckpointLoaderSimple -> [LoraLoader] ->
CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode -> SaveImage graph.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


def _resolves_to(entry: str, path: Path) -> bool:
    try:
        return Path(entry).resolve() == Path(path).resolve()
    except OSError:
        return False


def server_env(repo_root: Path) -> dict:
    """``os.environ`` without the ``PYTHONPATH`` entries that resolve to ``repo_root`` (the repository's ``nodes/``
    package would shadow ComfyUI's ``nodes.py``), with unbuffered output unless set otherwise."""
    env = dict(os.environ)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not _resolves_to(p, repo_root)]
    if keep:
        env["PYTHONPATH"] = os.pathsep.join(keep)
    else:
        env.pop("PYTHONPATH", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def server_command(python: str, base: Path, port: int, *extra: str) -> list[str]:
    """``main.py`` (run in the ComfyUI root) on the CPU, on 127.0.0.1:``port``, with ``base`` as its base directory
    (models, custom_nodes, input/output and its own database), no browser launched; ``extra`` appended."""
    return [
        python,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--database-url",
        f"sqlite:///{base}/user/comfyui.db",
        "--disable-auto-launch",
        *extra,
    ]


def server_up(base_url: str) -> bool:
    """Whether a ComfyUI server answers ``GET /system_stats`` at ``base_url`` (False while it boots or is gone)."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/system_stats", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class PromptError(RuntimeError):
    def __init__(self, msg: str, payload=None):
        super().__init__(msg)
        self.payload = payload


def http_json(base_url: str, path: str, data=None, *, method: str | None = None, timeout: float = 30.0):
    """GET (or POST ``data`` as JSON) and decode the JSON answer; HTTP errors carry their body."""
    url = base_url.rstrip("/") + path
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method=method or ("GET" if body is None else "POST"),
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def post_prompt(base_url: str, prompt: dict, client_id: str | None = None) -> str:
    """Queue an API-format prompt; return its prompt_id. HTTP 400 -> PromptError(node_errors)."""
    payload = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
    try:
        answer = http_json(base_url, "/prompt", payload)
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            detail = json.loads(text)
        except ValueError:
            detail = text
        raise PromptError(f"/prompt rejected the graph (HTTP {e.code}): {text[:2000]}", detail) from None
    if answer.get("node_errors"):
        raise PromptError(f"node errors: {answer['node_errors']}", answer)
    return answer["prompt_id"]


def wait_for_history(base_url: str, prompt_id: str, timeout: float = 180.0, poll: float = 0.25) -> dict:
    """Poll /history/{id} until its status says completed (or an error); return the entry."""
    deadline = time.monotonic() + timeout
    path = "/history/" + urllib.parse.quote(prompt_id)
    while True:
        hist = http_json(base_url, path) or {}
        entry = hist.get(prompt_id)
        if entry is not None:
            status = entry.get("status") or {}
            if status.get("completed") or status.get("status_str") == "error":
                return entry
        if time.monotonic() > deadline:
            raise TimeoutError(f"prompt {prompt_id} not completed after {timeout:.0f} s (last: {entry!r:.500})")
        time.sleep(poll)


def run_prompt(base_url: str, prompt: dict, timeout: float = 180.0) -> dict:
    """Queue ``prompt``, wait for it, assert success, return ``outputs`` (node id -> ui dict)."""
    pid = post_prompt(base_url, prompt)
    entry = wait_for_history(base_url, pid, timeout=timeout)
    status = entry.get("status") or {}
    if status.get("status_str") != "success":
        errors = [m for m in status.get("messages", []) if m and m[0] == "execution_error"]
        raise PromptError(f"prompt {pid} ended with {status.get('status_str')!r}: {errors or status}", entry)
    return entry.get("outputs", {})


def txt2img_graph(
    ckpt_name: str,
    *,
    positive: str = "a photo of a cat",
    negative: str = "blurry",
    seed: int = 0,
    steps: int = 2,
    cfg: float = 7.0,
    width: int = 64,
    height: int = 64,
    sampler: str = "euler",
    scheduler: str = "normal",
    prefix: str = "lyco_test",
    lora_name: str | None = None,
    strength_model: float = 1.0,
    strength_clip: float = 1.0,
) -> dict:
    """API-format txt2img graph; the SaveImage node has id "9"."""
    g = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }
    model, clip = ["4", 0], ["4", 1]
    if lora_name is not None:
        g["10"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": lora_name,
                "strength_model": strength_model,
                "strength_clip": strength_clip,
            },
        }
        model, clip = ["10", 0], ["10", 1]
    g["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": clip}}
    g["7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": clip}}
    g["3"] = {
        "class_type": "KSampler",
        "inputs": {
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": sampler,
            "scheduler": scheduler,
            "denoise": 1.0,
            "model": model,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    }
    return g


def output_images(outputs: dict) -> list[dict]:
    """All ``{"filename", "subfolder", "type"}`` image records in a history ``outputs`` dict."""
    return [img for node_out in outputs.values() for img in node_out.get("images", [])]
