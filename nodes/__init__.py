"""The ComfyUI face of ComfyUI-LyCO (V3 nodes). Imported only through the pack's comfy_entrypoint."""

from comfy_api.latest import ComfyExtension

from .block_loader import LoadAdapterBlockWeight
from .convert import CONVERT_NODES
from .info import AdapterInfo
from .loaders import LOADERS
from .loss_plot import LossPlot
from .stack import AdapterStack
from .train import TrainAdapter
from .train_configs import CONFIG_NODES


class LycoExtension(ComfyExtension):
    async def get_node_list(self):
        return [
            *LOADERS,
            AdapterInfo,
            LoadAdapterBlockWeight,
            AdapterStack,
            *CONFIG_NODES,
            TrainAdapter,
            LossPlot,
            *CONVERT_NODES,
        ]
