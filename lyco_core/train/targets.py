"""Which modules of a model a config adapts, by PEFT's documented rules (see config.py), and per-module r/alpha.

``select(model, config)`` → ``{name: module}`` in ``named_modules()`` order. A module qualifies when it matches the
target rules, is not excluded, is not under ``modules_to_save`` and the method can adapt it (``can_adapt``).
"""

from __future__ import annotations

import re

from torch import nn

from .config import AdapterConfig
from .matching import name_matches
from .methods import can_adapt
from .methods.base import CONV

ALL_LINEAR = "all-linear"


def layer_index(name: str, layers_pattern) -> int | None:
    """The layer index in ``name``: the first number after ``<pattern>.`` (any listed pattern), or without a
    pattern the first ``.<word>.<number>.`` segment (PEFT's lazy rule)."""
    if not layers_pattern:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
        return int(found.group("idx")) if found else None
    for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
        found = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
        if found:
            return int(found.group("idx"))
    return None


def _in_layers(config: AdapterConfig, name: str) -> bool:
    wanted = config.layers_to_transform
    if wanted is None or (isinstance(wanted, list) and not wanted):
        return True
    index = layer_index(name, config.layers_pattern)
    if index is None:
        return False
    return index == wanted if isinstance(wanted, int) else index in wanted


def output_layer(model: nn.Module) -> str | None:
    """The output layer ``"all-linear"`` leaves out: ``get_output_embeddings()`` when the model has one, else the
    last registered leaf module with parameters, if it is an nn.Linear."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    last = None
    for name, module in model.named_modules():
        if module is head:
            return name
        if not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            last = (name, module)
    return last[0] if last is not None and isinstance(last[1], nn.Linear) else None


def under_saved(config: AdapterConfig, name: str) -> bool:
    """Whether ``name`` is, or lies inside, one of ``modules_to_save``."""
    return any(re.match(rf"(^|.*\.){item}($|\..*)", name) for item in config.modules_to_save or ())


def select(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Module]:
    """The modules ``config`` adapts, in ``named_modules()`` order."""
    rule = config.target_modules
    skip = None
    if isinstance(rule, str) and rule.lower() == ALL_LINEAR:
        skip = output_layer(model)
    chosen = {}
    for name, module in model.named_modules():
        if not name or not can_adapt(module, config.method):
            continue
        if name_matches(config.exclude_modules, name) or under_saved(config, name):
            continue
        if skip is not None or rule is None:
            hit = isinstance(module, nn.Linear) or (rule is None and isinstance(module, CONV))
            hit = hit and name != skip and _in_layers(config, name)
        elif isinstance(rule, str):
            hit = name_matches(rule, name)
        else:
            hit = name_matches(rule, name) and _in_layers(config, name)
        if hit:
            chosen[name] = module
    return chosen


def saved_modules(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Module]:
    """The ``modules_to_save`` present in the model (exact name or dotted suffix), outermost only."""
    found = {}
    for name, module in model.named_modules():
        if name and name_matches(config.modules_to_save, name) and not any(name.startswith(f + ".") for f in found):
            found[name] = module
    return found
