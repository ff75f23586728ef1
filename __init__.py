"""ComfyUI-LyCO: ComfyUI loads this folder from custom_nodes/.

Only the V3 entry point is exposed (no NODE_CLASS_MAPPINGS, which would make ComfyUI skip it). The frontend
extension is served from js/ (WEB_DIRECTORY), registered this one way only.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    """Called once by ComfyUI's loader: the /lyco/* routes go on its server, the nodes come from the extension."""
    from .nodes import LycoExtension, routes

    routes.register()
    return LycoExtension()
