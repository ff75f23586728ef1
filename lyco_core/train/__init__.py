"""Training LyCORIS-family adapters on any torch model (no host needed).

    from lyco_core.train import LoKrConfig, wrap, train, TrainSettings, save_trained
    tuner = wrap(model, LoKrConfig(r=8, alpha=8, target_modules=["to_q", "to_v"]))
    state = train(tuner.adapter().parameters(), loss_fn, len(data), TrainSettings(steps=500, learning_rate=1e-3))
    save_trained(tuner.adapter(), "my_lokr.safetensors")          # LyCORIS layout; layout="peft" for a folder

Files: config (the shared config base, PEFT's target rules, the config registry), targets (selection rules),
methods/ (one file per method: its config and its trainable, registered together with ``@trainable``, reusing
``lyco_core.algorithms``), wrap (attach/merge/unmerge/detach), loop (+ optim, checkpointing), export (files and
``ss_*`` metadata), resume (continue from a saved adapter). The config classes (``LoraConfig``, ``LoKrConfig``, …)
are importable from here and from ``config`` by name.
"""

from .config import CONFIGS, AdapterConfig, config_from_dict, named_config
from .export import TrainingRecord, as_adapter, lycoris_name, lycoris_tensors, save_trained, training_metadata
from .loop import TrainSettings, TrainState, load_state, save_state, train
from .optim import SCHEDULERS, optimizer_names
from .resume import load_weights, resume_state, state_path
from .methods import can_adapt
from .targets import select
from .wrap import AttachedAdapter, LycoTuner, build_adapter, wrap


def __getattr__(name: str):
    """The config classes by name (``LoraConfig``, ``LoKrConfig``, …), as their method files register them."""
    return named_config(__name__, name)


__all__ = [
    "AdapterConfig",
    "as_adapter",
    "AttachedAdapter",
    "LycoTuner",
    "build_adapter",
    "SCHEDULERS",
    "TrainSettings",
    "TrainState",
    "TrainingRecord",
    "can_adapt",
    "config_from_dict",
    "load_state",
    "load_weights",
    "lycoris_name",
    "lycoris_tensors",
    "optimizer_names",
    "resume_state",
    "save_state",
    "save_trained",
    "select",
    "state_path",
    "train",
    "training_metadata",
    "wrap",
]
__all__ += [cls.__name__ for cls in CONFIGS.values()]
