"""The graph the README screenshot shows and the browser suite queues from the page, as data (standard library only):
Load Checkpoint → Adapter Stack (LoKr on, LoHa off) → Load Adapter (block weights: the OFT, OUTALL) → two prompts →
KSampler → VAE Decode → Save Image. ``tools/make_thumbnails.py`` and ``tests/browser/test_ui.py`` each build it in
the page with their own helpers from ``stack_graph(...)``: ``nodes`` (name, type, position, widget values, size) and
``links`` (from node, output slot, to node, input slot).
"""

from __future__ import annotations

import json


def stack_graph(ckpt: str, adapters: dict[str, str], prefix: str) -> dict:
    """The graph for checkpoint ``ckpt``, ``adapters`` {method: file name} (lokr, loha, oft), images saved under
    ``prefix``."""
    rows = [
        {"name": adapters["lokr"], "on": True, "strength_model": 0.8, "strength_clip": 0.8},
        {"name": adapters["loha"], "on": False, "strength_model": 1, "strength_clip": 1},
    ]
    nodes = [
        ("ckpt", "CheckpointLoaderSimple", 0, 0, {"ckpt_name": ckpt}, [300, 100]),
        ("stack", "LyCOAdapterStack", 340, 0, {"stack": json.dumps(rows)}, None),
        (
            "blocks",
            "LyCOLoadAdapterBlockWeight",
            840,
            0,
            {"adapter_name": adapters["oft"], "block_weights": "OUTALL"},
            None,
        ),
        ("pos", "CLIPTextEncode", 1310, 0, {"text": "a photo of a cat"}, [300, 110]),
        ("neg", "CLIPTextEncode", 1310, 170, {"text": "blurry"}, [300, 110]),
        ("latent", "EmptyLatentImage", 1310, 340, {"width": 64, "height": 64}, None),
        ("sampler", "KSampler", 1650, 70, {"steps": 2, "seed": 1, "control_after_generate": "fixed"}, None),
        ("decode", "VAEDecode", 1310, 520, {}, [220, 50]),
        ("save", "SaveImage", 1650, 470, {"filename_prefix": prefix}, [260, 280]),
    ]
    links = [
        ("ckpt", 0, "stack", 0),
        ("ckpt", 1, "stack", 1),
        ("stack", 0, "blocks", 0),
        ("stack", 1, "blocks", 1),
        ("blocks", 1, "pos", 0),
        ("blocks", 1, "neg", 0),
        ("blocks", 0, "sampler", 0),
        ("pos", 0, "sampler", 1),
        ("neg", 0, "sampler", 2),
        ("latent", 0, "sampler", 3),
        ("sampler", 0, "decode", 0),
        ("ckpt", 2, "decode", 1),
        ("decode", 0, "save", 0),
    ]
    return {
        "nodes": [dict(name=n, type=t, x=x, y=y, values=v, size=s) for n, t, x, y, v, s in nodes],
        "links": [dict(source=a, output=o, target=b, input=i) for a, o, b, i in links],
    }
