"""The ComfyUI face of ComfyUI-LyCO (V3 nodes). Imported only through the pack's comfy_entrypoint."""
from comfy_api.latest import ComfyExtension

from .info import AdapterInfo
from .loaders import LOADERS


class LycoExtension(ComfyExtension):
    async def get_node_list(self):
        return [*LOADERS, AdapterInfo]
