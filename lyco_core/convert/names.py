"""Module names across layouts: which model component a module belongs to, and how each layout spells it.

* LyCORIS/kohya: ``<prefix><path with '.' written '_'>`` (``lora_unet_``, ``lora_te_``/``lora_te1_``/``lora_te2_``,
  ``lycoris_`` for a generic model, …).
* PEFT: ``base_model.model.<dotted path>`` — one model per folder.
* diffusers: ``<component>.<dotted path>`` (``unet.``, ``transformer.``, ``text_encoder.``, ``text_encoder_2.``).

Dotted → mangled is mechanical. Mangled → dotted is not (``_`` is ambiguous): it needs the model's keys; the dotted
path is then the tail of the matched key with the mangled path's length (``.``→``_`` keeps lengths), or the
key's own path when only ``text_model.`` levels differ. A generic module (``lycoris_``, PEFT) has no component of
its own: ``component`` states it when the target layout needs one (diffusers).
Reference: docs/formats.md, LyCORIS / kohya layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AdapterError
from ..keymap import WeightIndex
from ..naming import COMPONENTS as NAMED
from ..naming import PEFT_PREFIX, kohya_prefix, spelled

COMPONENTS = tuple(NAMED)  # the component names a user may state (CLI --component, the convert node)


@dataclass(frozen=True)
class ModuleId:
    """``component`` of the model and ``path`` inside it (``mangled`` if dots were written as ``_``)."""

    component: str
    path: str
    mangled: bool

    def mangled_path(self) -> str:
        return self.path if self.mangled else self.path.replace(".", "_")

    def identity(self) -> tuple[str, str]:
        """What merging groups by: the same layer whatever the layout (``text_model`` levels and te/te1 alike)."""
        component = NAMED[self.component].same_as or self.component
        return component, self.mangled_path().replace("text_model_", "")


def module_id(adapter, name: str) -> ModuleId:
    """The component and path a module of ``adapter`` points at."""
    mangled = adapter.layout == "lycoris"
    spelling, path = spelled(adapter.layout, name)
    return ModuleId(spelling.component if spelling else "model", path.rstrip("_") if mangled else path, mangled)


def _dotted(adapter, names: list[str], model_keys) -> tuple[dict[str, str], dict[str, str]]:
    """({name: dotted path}, {name: why not}) for mangled modules, resolved against the model's keys."""
    index = WeightIndex(model_keys)
    report = adapter.match(index.keys)
    found, failed = {}, {}
    for name in names:
        if name not in report.matched:
            failed[name] = report.unmatched[name]
            continue
        key = str(report.target(name))  # a weight key, or the part of a fused one that the module's own name aliases
        mangled = module_id(adapter, name).path
        # the key's own path, then its aliases (the same layer in another spelling of the network, aliases/)
        tail = next((t for t in (_tail(p, mangled) for p in index.paths(key)) if t is not None), None)
        if tail is not None:
            found[name] = tail
        else:  # only text_model levels differ: the model's own path (or alias) below the matched component root
            stripped = mangled.replace("text_model_", "")
            path = key[: -len(".weight")] if key in index.keys else index.paths(key)[0]
            cut = path.replace("text_model.", "")
            found[name] = cut[-len(stripped) :] if cut[-len(stripped) :].replace(".", "_") == stripped else path
    return found, failed


def _tail(path: str, mangled: str) -> str | None:
    """The end of dotted ``path`` that ``mangled`` spells (at a dot boundary), or None."""
    tail = path[-len(mangled) :] if len(mangled) <= len(path) else ""
    if tail.replace(".", "_") == mangled and (len(tail) == len(path) or path[-len(mangled) - 1] == "."):
        return tail
    return None


def target_names(
    adapter, layout: str, model_keys=None, component: str | None = None, paths: dict[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """{module name: (prefix, path)} in ``layout`` (``prefix + path`` is the written module name).

    Mangled names become dotted through ``paths`` ({module: dotted path}, a host's own placement) or the model's
    ``model_keys``. Raises AdapterError naming the modules that cannot be named there (mangled names without
    either, several models in one PEFT folder, a diffusers file without a stated component).
    """
    if component is not None and component not in COMPONENTS:
        raise AdapterError(f"unknown component '{component}'", expected=", ".join(COMPONENTS))
    ids = {name: module_id(adapter, name) for name in adapter.modules}
    if component is not None:
        ids = {n: ModuleId(component, i.path, i.mangled) if i.component == "model" else i for n, i in ids.items()}
    if layout == "lycoris":
        te_split = any(i.component == "te2" for i in ids.values())
        return {n: (kohya_prefix(i.component, te_split), i.mangled_path()) for n, i in ids.items()}
    dotted = {n: i.path for n, i in ids.items() if not i.mangled}
    mangled = [n for n, i in ids.items() if i.mangled]
    if mangled and paths is not None:
        missing = [n for n in mangled if n not in paths]
        if missing:
            raise AdapterError(
                f"{len(missing)} modules were not placed in the model (e.g. {missing[0]})",
                file=adapter.path,
                expected="the model this adapter was made for",
            )
        dotted.update({n: paths[n] for n in mangled})
    elif mangled:
        if model_keys is None:
            raise AdapterError(
                f"{len(mangled)} module names are kohya-mangled (e.g. {mangled[0]}) and '_' is "
                f"ambiguous: writing them as {layout} needs the model's module names",
                file=adapter.path,
                expected="the model's keys (--base MODEL, or a connected MODEL/CLIP)",
            )
        found, failed = _dotted(adapter, mangled, model_keys)
        if failed:
            shown = "; ".join(f"{n}: {r}" for n, r in list(failed.items())[:4])
            raise AdapterError(
                f"{len(failed)} modules match no weight of the given model ({shown})",
                file=adapter.path,
                expected="the model this adapter was made for",
            )
        dotted.update(found)
    if layout == "peft":
        components = sorted({i.component for i in ids.values()})
        if len(components) > 1:
            raise AdapterError(
                f"a PEFT folder holds one model, this adapter spans {', '.join(components)}",
                file=adapter.path,
                expected="--to diffusers or --to lycoris, which hold several",
            )
        return {n: (PEFT_PREFIX, dotted[n]) for n in ids}
    if layout == "diffusers":
        generic = [n for n, i in ids.items() if NAMED[i.component].diffusers is None]
        if generic:
            piped = [c.name for c in NAMED.values() if c.diffusers]
            raise AdapterError(
                f"{len(generic)} modules (e.g. {generic[0]}) belong to no named pipeline component",
                file=adapter.path,
                expected=f"a stated component ({', '.join(piped)})",
            )
        return {n: (NAMED[i.component].diffusers, dotted[n]) for n, i in ids.items()}
    raise AdapterError(f"unknown layout '{layout}'", expected="lycoris, peft or diffusers")
