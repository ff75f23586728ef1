"""HTTP routes of the pack, put on ComfyUI's server by ``register()``, which the pack's ``comfy_entrypoint`` calls.

* ``GET /lyco/info?name=<adapter name>`` — the adapter summary of ``adapter_summary.info_for`` (200; 404 for names
  ComfyUI does not list; 422 with an ``error`` field for a listed file that is not a readable adapter). The work
  runs in a thread (``asyncio.to_thread``), never on the event loop.
* ``GET /lyco/adapters`` — ``{"adapters": [...], "strength_limit": 10.0}``: ComfyUI's ``loras`` list (the stack
  editor's choices) and the largest |strength| the nodes accept (the editor's number fields).
* ``GET /lyco/block_presets`` — the block-id sets and presets the block-weight editor offers.

ComfyUI mirrors them under ``/api/…``. Where no ``PromptServer`` instance exists (the pack imported outside
ComfyUI's server) nothing is registered; an instance that does not listen (in-process tests) just keeps the table.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .adapter_summary import info_for
from .block_weights import BLOCK_SETS, PRESETS
from .host import adapter_names
from .loaders import STRENGTH_LIMIT

log = logging.getLogger("ComfyUI-LyCO")


async def lyco_info(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    try:
        status, body = await asyncio.to_thread(info_for, name)
    except OSError as exc:  # the file vanished or became unreadable between listing and reading
        status, body = 404, {"error": f"cannot read the adapter file ({exc.strerror or exc})", "name": name}
    return web.json_response(body, status=status)


async def lyco_adapters(request: web.Request) -> web.Response:
    names = await asyncio.to_thread(adapter_names)
    return web.json_response({"adapters": names, "strength_limit": STRENGTH_LIMIT})


async def lyco_block_presets(request: web.Request) -> web.Response:
    return web.json_response({"block_sets": BLOCK_SETS, "presets": PRESETS})


def register() -> bool:
    """Add the routes to ComfyUI's server table; False (and a debug line) when there is no server."""
    try:
        from server import PromptServer

        routes = PromptServer.instance.routes
    except (ImportError, AttributeError):
        log.debug("[LyCO] no ComfyUI PromptServer instance: /lyco routes not registered")
        return False
    routes.get("/lyco/info")(lyco_info)
    routes.get("/lyco/adapters")(lyco_adapters)
    routes.get("/lyco/block_presets")(lyco_block_presets)
    return True
