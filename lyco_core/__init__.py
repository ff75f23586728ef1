"""lyco_core: read, understand and apply LyCORIS-family adapters exactly (torch + safetensors + numpy only).

ad = lyco_core.load_adapter(path)          # .safetensors, or a PEFT folder
ad.layout, ad.modules[name].algo, ad.modules[name].dora, ad.metadata
new = ad.patch(weights, strength=1.0)       # {key: new tensor} for every changed key
tuner = lyco_core.wrap(model, lyco_core.train.LoKrConfig(r=8))   # trainable adapters (see lyco_core.train)
"""

from .adapter import Adapter, adapter_from_tensors, load_adapter
from .errors import AdapterError
from .keymap import MatchReport
from .save import save_adapter
from .train import wrap

__version__ = "0.1.0"
__all__ = [
    "Adapter",
    "AdapterError",
    "adapter_from_tensors",
    "MatchReport",
    "load_adapter",
    "save_adapter",
    "wrap",
    "__version__",
]
