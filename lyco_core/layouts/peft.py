"""PEFT layout: ``adapter_model.safetensors`` + ``adapter_config.json``; keys ``base_model.model.<path>.<param>``
(or ``<path>.<param>`` from ``get_peft_model_state_dict`` on a bare model).

Scale comes from the config: ``r``/``lora_alpha`` (LoRA) or ``r``/``alpha`` (LoHa, LoKr), overridden per module by
``rank_pattern``/``alpha_pattern`` (pattern ``p`` applies to ``path`` when ``re.match(rf"(.*\\.)?({p})$", path)``,
first match wins), ``use_rslora`` → alpha/√r. ``peft_version`` (written since 0.18) selects OFT series coefficients.
``modules_to_save`` copies are ``<path>.weight``/``.bias`` (read as ``saved``); embedding LoRA is
``lora_embedding_A (r, num)``/``lora_embedding_B (dim, r)``. ``write`` produces all of these (see its docstring).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import torch

from ..algorithms.base import ScaleContext
from ..algorithms.boft_peft import PeftBOFT
from ..algorithms.factorization import factorization
from ..algorithms.oft_peft import PeftOFT
from ..errors import AdapterError
from .base import Layout, ModulePath, Written, refuse
from .peft_config import checked_config

PEFT_PREFIX = "base_model.model."
_DEFAULT_ALPHA = {"LORA": 8.0, "LOHA": 8.0, "LOKR": 8.0}
# our method for each PEFT method (peft_type) we apply exactly
_PEFT_TYPES = {"lora": "LORA", "loha": "LOHA", "lokr": "LOKR", "ia3": "IA3", "oft": "OFT", "boft": "BOFT"}
_METHOD_OF_TYPE = {peft_type: method for method, peft_type in _PEFT_TYPES.items()}
_WHOLE_LAYER = ("saved", "full", "norm")


def parse_version(text: Any) -> tuple[int, ...] | None:
    """``"0.18.1.dev0"`` → ``(0, 18, 1)``; None when absent or unreadable."""
    if not text:
        return None
    numbers = []
    for part in str(text).split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers) or None


def pattern_value(patterns: dict[str, Any] | None, path: str, default: Any) -> Any:
    """PEFT's per-module override: the first pattern matching the end of ``path`` at a dot boundary."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default


def scale_context(file: str, config: dict[str, Any], path: str) -> ScaleContext:
    """The PEFT scale rule for the module at ``path`` under ``config``."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    alpha_field = "lora_alpha" if peft_type == "LORA" else "alpha"
    rank = config.get("r")
    alpha = config.get(alpha_field, _DEFAULT_ALPHA.get(peft_type))
    if rank is not None:
        rank = int(pattern_value(config.get("rank_pattern"), path, rank))
    if alpha is not None:
        alpha = float(pattern_value(config.get("alpha_pattern"), path, alpha))
    if rank is None or alpha is None or peft_type not in _DEFAULT_ALPHA:
        alpha = None
    return ScaleContext(
        file=file,
        config_alpha=alpha,
        config_rank=rank,
        rslora=bool(config.get("use_rslora")),
        peft=True,
        config=config,
        peft_version=parse_version(config.get("peft_version")),
        module_path=path,
    )


class PeftLayout(Layout):
    name = "peft"

    def __init__(self, file, config, metadata):
        super().__init__(file, checked_config(file, config) if config else config, metadata)

    @staticmethod
    def owns(module_names, config, metadata):
        return config is not None or any(name.startswith(PEFT_PREFIX) for name in module_names)

    def module_path(self, module_name):
        if module_name.startswith(PEFT_PREFIX):
            return ModulePath(module_name[len(PEFT_PREFIX) :], False)
        return ModulePath(module_name, False)

    def checked(self, module):
        """Refuse a module whose tensors contradict the config's ``peft_type`` (LoRA tensors labelled IA3 would take
        another scale rule), and any PEFT method this pack does not apply exactly (AdaLoRA, VeRA, …: read as one of
        ours they would be applied wrong). Whole trained layers go with every method: ``modules_to_save`` copies,
        and the full/norm differences the trainer holds for them before they are written as copies."""
        declared = self.config.get("peft_type")
        if declared is None or module.algo in _WHOLE_LAYER:
            return module
        method = _METHOD_OF_TYPE.get(declared.upper())
        if method is None:
            raise AdapterError(
                f"adapter_config.json declares peft_type {declared[:40]!r}, a PEFT method this pack does not apply",
                file=self.file,
                key="peft_type",
                expected=f"one of {', '.join(_METHOD_OF_TYPE)}",
            )
        if module.algo != method:
            raise AdapterError(
                f"the tensors are {module.algo} but adapter_config.json declares peft_type {declared!r}",
                file=self.file,
                module=module.name,
                expected=f"{method} tensors for peft_type {declared!r}, or the config the file was trained with",
            )
        return module

    def context(self, module_name, params):
        path = self.module_path(module_name).path
        if not self.config:  # a bare PEFT-prefixed file without its config: alpha = r
            return ScaleContext(file=self.file, peft=True, module_path=path)
        return scale_context(self.file, self.config, path)


# --- writing ---------------------------------------------------------------------------------------------------
_ELSEWHERE = {
    "oft": "LyCORIS OFT rotates output rows (with its constraint and rescale); PEFT OFT rotates input "
    "columns — save it in the lycoris layout, or convert it to LoRA",
    "boft": "LyCORIS BOFT rotates output rows; PEFT BOFT rotates input columns — save it in the lycoris "
    "layout, or convert it to LoRA",
    "glora": "PEFT has no GLoRA of this form",
    "norm": "PEFT has no norm-difference method (a trained norm layer is a modules_to_save copy, which "
    "needs the base weights: save it from the trainer)",
}
_OLD_OFT = {
    "input": "PEFT 0.14–0.15 OFT (oft_r with oft_s), which PEFT ≥0.16 no longer loads",
    "output": "PEFT ≤0.13 OFT (oft_r on the output rows), which PEFT ≥0.14 no longer loads",
}


def rank_alpha_fields(entries: dict[str, tuple[int, float]], alpha_field: str) -> dict[str, Any]:
    """``r``, alpha and the patterns that give every module (path: (r, alpha)) exactly its own pair: the most common
    values as defaults, escaped full paths (longest first, so a path never catches a longer one) for the rest."""

    def common(values):
        return Counter(values).most_common(1)[0][0]

    rank = common(r for r, _ in entries.values())
    alpha = common(a for _, a in entries.values())
    ordered = sorted(entries.items(), key=lambda item: -len(item[0]))
    return {
        "r": rank,
        alpha_field: alpha,
        "rank_pattern": {re.escape(p): r for p, (r, _) in ordered if r != rank},
        "alpha_pattern": {re.escape(p): a for p, (_, a) in ordered if not math.isclose(a, alpha, rel_tol=1e-12)},
    }


def _lokr_shapes(params) -> tuple[int, int, int, tuple[int, ...]]:
    """(a, b, c, candidate d): ``W1 (a,c)``, ``W2 (b, d[,k…])``. A plain conv stores ``w2_b (r, d·k²)`` flat, so d is
    one of ``D/k²`` (k = 1…7); a full or Tucker ``W2`` states it."""
    a, c = (
        params["lokr_w1"].shape if "lokr_w1" in params else (params["lokr_w1_a"].shape[0], params["lokr_w1_b"].shape[1])
    )
    if "lokr_w2" in params:
        b, ds = params["lokr_w2"].shape[0], (params["lokr_w2"].shape[1],)
    elif "lokr_t2" in params:
        b, ds = params["lokr_w2_a"].shape[1], (params["lokr_w2_b"].shape[1],)
    else:
        b, flat = params["lokr_w2_a"].shape[0], params["lokr_w2_b"].shape[1]
        ds = tuple(flat // k**2 for k in range(1, 8) if flat % k**2 == 0)
    return int(a), int(b), int(c), tuple(int(d) for d in ds)


def _lokr_rank(params, decompose_both: bool) -> int:
    """The rank PEFT must be told so that it builds these factors (full halves need r ≥ half the side)."""
    for key in ("lokr_w1_b", "lokr_w2_b"):
        if key in params:
            return int(params[key].shape[0])
    a, b, c, (d,) = _lokr_shapes(params)
    return max(b, d, a if decompose_both else 0, c if decompose_both else 0)


def _lokr_fits(params, factor: int, decompose_both: bool) -> bool:
    """Whether PEFT's LoKr, configured so, creates exactly these factor shapes (its rules: ``factorization`` of the
    output and input sizes, w2 decomposed at rank r)."""
    a, b, c, ds = _lokr_shapes(params)
    rank = _lokr_rank(params, decompose_both)
    if factorization(a * b, factor, sort_divisor=False) != (a, b):
        return False
    # A flat conv w2_b leaves d ambiguous; the config never states d, so it is exact when every candidate d that
    # PEFT's rule could produce leads to these same factor kinds.
    fitting = [d for d in ds if factorization(c * d, factor, sort_divisor=False) == (c, d)]
    full_w1 = not (decompose_both and rank < max(a, c) / 2)
    return bool(fitting) and all(
        full_w1 == ("lokr_w1" in params) and (not rank < max(b, d) / 2) == ("lokr_w2" in params) for d in fitting
    )


def _lokr_layout(modules) -> tuple[int, bool, dict[str, str]]:
    """(decompose_factor, decompose_both, {module: why not}) reproducing every module's factor shapes in PEFT."""
    decompose_both = any("lokr_w1" not in m.params for m in modules.values())
    candidates = [-1] + sorted({_lokr_shapes(m.params)[i] for m in modules.values() for i in (0, 2)})
    for factor in candidates:
        if all(_lokr_fits(m.params, factor, decompose_both) for m in modules.values()):
            return factor, decompose_both, {}
    return (
        -1,
        decompose_both,
        {
            n: "PEFT's LoKr factorization would build other factor shapes"
            for n, m in modules.items()
            if not _lokr_fits(m.params, -1, decompose_both)
        },
    )


def identity_pair(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left ``(out, r)``, right ``(r, cols)``), ``r = min(out, cols)``, with ``left @ right = flat(delta)`` exactly:
    one of them is the identity, the other ``flat(delta)``."""
    flat = delta.reshape(delta.shape[0], -1)
    eye = torch.eye(min(flat.shape), dtype=flat.dtype)
    return (eye, flat) if flat.shape[0] <= flat.shape[1] else (flat, eye)


def dense_params(module, method: str, tucker: bool) -> tuple[dict[str, torch.Tensor], int, float]:
    """A dense difference (``diff``[, ``diff_b``]) as exact factors of the folder's method, scale 1 (alpha = r):
    LoRA ``B @ A`` with one factor the identity (``diff_b`` → ``lora_B.bias``); LoHa ``(w1_a@w1_b) ⊙ (w2_a@w2_b)``
    with the first pair so and the second all ones (``w2_a[:,0] = 1``, ``w2_b[0] = 1``, the rest 0)."""
    diff = module.params["diff"]
    if diff.ndim < 2:
        raise ValueError("a one-dimensional difference has no PEFT form")
    left, right = identity_pair(diff)
    rank = left.shape[1]
    if method == "lora":
        params = {
            "lora_A.weight": right.reshape(rank, *diff.shape[1:]),
            "lora_B.weight": left.reshape(*left.shape, *[1] * (diff.ndim - 2)),
        }
        if "diff_b" in module.params:
            params["lora_B.bias"] = module.params["diff_b"]
        return params, rank, float(rank)
    if method != "loha":
        raise ValueError(
            f"a dense difference has no exact form in PEFT's {method.upper()} (save it in the lycoris layout)"
        )
    if "diff_b" in module.params:
        raise ValueError("PEFT's LoHa cannot change a bias")
    if tucker and diff.ndim > 2 and math.prod(diff.shape[2:]) > 1:
        raise ValueError("with use_effective_conv2d PEFT's LoHa builds Tucker cores for this convolution")
    ones_a, ones_b = torch.zeros_like(left), torch.zeros_like(right)
    ones_a[:, 0], ones_b[0] = 1, 1
    return {"hada_w1_a": left, "hada_w1_b": right, "hada_w2_a": ones_a, "hada_w2_b": ones_b}, rank, float(rank)


def peft_params(
    module, has_bias: bool | None, lokr_both: bool = False
) -> tuple[dict[str, torch.Tensor], int | None, float | None]:
    """(PEFT parameters, r, alpha) of one module, alpha such that PEFT's ``alpha/r`` equals the module's scale;
    raises ValueError with the reason when PEFT cannot hold it exactly."""
    p = module.params
    if isinstance(module, PeftOFT):
        if module.format != "packed":
            raise ValueError(_OLD_OFT[module.format])
        return {"oft_R.weight": p["oft_R.weight"]}, None, None
    if isinstance(module, PeftBOFT):
        return {"boft_R": p["boft_R"], "boft_s": p["boft_s"]}, None, None
    if module.algo in _ELSEWHERE:
        raise ValueError(_ELSEWHERE[module.algo])
    if module.algo == "ia3":
        on_input = module.on_input()
        if "ia3_l" in p:
            return {"ia3_l": p["ia3_l"]}, None, None
        if not on_input and has_bias is not False:
            raise ValueError(
                "PEFT (IA)³ would also scale this layer's bias"
                + (" (the model, --base, would tell whether the layer has one)" if has_bias is None else "")
            )
        gain = 1 + p["weight"]
        shape = (1, -1, 1, 1) if gain.ndim == 4 else (1, -1) if on_input else (-1, 1)
        return {"ia3_l": gain.reshape(shape)}, None, None
    if module.algo == "lora" and getattr(module, "embedding", False):
        if module.dora or "lora_up.bias" in p:
            raise ValueError("PEFT's embedding LoRA has no DoRA and no bias")
        params = {
            "lora_embedding_A": p["lora_up.weight"].t().contiguous(),
            "lora_embedding_B": p["lora_down.weight"].t().contiguous(),
        }
    elif module.algo == "lora":
        if module.tucker:
            raise ValueError("Tucker LoCon (lora_mid) has no PEFT form")
        params = {"lora_A.weight": p["lora_down.weight"], "lora_B.weight": p["lora_up.weight"]}
        if "lora_up.bias" in p:
            params["lora_B.bias"] = p["lora_up.bias"]
        if "magnitude" in p:
            params["lora_magnitude_vector"] = p["magnitude"]
        elif "dora_scale" in p:
            if module.dora_axis() != "out":
                raise ValueError("DoRA on the input axis has no PEFT form (PEFT normalises output rows)")
            up = p["lora_up.weight"]
            params["lora_magnitude_vector"] = (
                p["dora_scale"].reshape(-1) if up.ndim == 2 else p["dora_scale"].reshape(1, -1, *[1] * (up.ndim - 2))
            )
    else:
        if module.dora:
            raise ValueError(f"PEFT's {module.algo.upper()} has no DoRA")
        params = {k: v for k, v in p.items() if k != "alpha"}
    if module.algo == "lokr":
        rank = _lokr_rank(p, lokr_both)
    else:
        rank = module.rank()
    return params, rank, module.scale_value() * rank


def _one_of(values: set, what: str) -> Any:
    """The single value of ``values``; ValueError naming ``what`` when the modules disagree."""
    if len(values) != 1:
        raise ValueError(
            f"PEFT's config has one {what} for every layer (no per-module pattern); these modules have "
            f"{', '.join(sorted(map(str, values)))}"
        )
    return next(iter(values))


def oft_fields(modules) -> tuple[dict[str, Any], list[str]]:
    """(config fields, notes) of packed PEFT OFT modules: one block size, else one block count, for all layers
    (PEFT builds every layer's blocks from ``r``/``oft_block_size``), and the rotation options they were read with."""
    sizes = {m.block_size for m in modules.values()}
    counts = {int(m.params["oft_R.weight"].shape[0]) for m in modules.values()}
    options = {
        (
            bool(cfg.get("coft", False)),
            float(cfg.get("eps", 6e-5)),
            bool(cfg.get("block_share", False)),
            bool(cfg.get("use_cayley_neumann", True)),
            int(cfg.get("num_cayley_neumann_terms", 5)),
            m.ctx.peft_version,
        )
        for m in modules.values()
        for cfg in (m.ctx.config,)
    }
    coft, eps, shared, neumann, terms, version = _one_of(options, "set of OFT options")
    if len(sizes) == 1 or shared:
        rank, size = 0, _one_of(sizes, "OFT block size")
    else:
        rank, size = _one_of(counts, "OFT block size or block count"), 0
    fields = {
        "r": rank,
        "oft_block_size": size,
        "coft": coft,
        "eps": eps,
        "block_share": shared,
        "use_cayley_neumann": neumann,
        "num_cayley_neumann_terms": terms,
        "module_dropout": 0.0,
        "init_weights": True,
        "bias": "none",
        "fan_in_fan_out": False,
    }
    notes = []
    if version is not None:
        fields["peft_version"] = ".".join(map(str, version))
    if neumann and version is not None and version < (0, 18):
        notes.append(f"Cayley–Neumann series of PEFT {fields['peft_version']} kept; PEFT ≥0.18 sums it differently")
    return fields, notes


def boft_fields(modules) -> dict[str, Any]:
    """Config fields of PEFT BOFT modules: one factor count, and one block size (else one block count)."""
    shapes = [m.params["boft_R"].shape for m in modules.values()]
    fields = {
        "boft_n_butterfly_factor": _one_of({int(s[0]) for s in shapes}, "butterfly factor count"),
        "boft_dropout": 0.0,
        "init_weights": True,
        "bias": "none",
        "fan_in_fan_out": False,
    }
    sizes, counts = {int(s[2]) for s in shapes}, {int(s[1]) for s in shapes}
    if len(sizes) == 1:
        return {**fields, "boft_block_size": sizes.pop(), "boft_block_num": 0}
    return {**fields, "boft_block_size": 0, "boft_block_num": _one_of(counts, "BOFT block size or block count")}


def _folder_method(modules, file: str) -> str:
    """The one method of a folder's adapted modules; dense differences take that method's form (LoRA if alone), and
    modules of methods PEFT lacks are refused one by one later."""
    methods = sorted({m.algo for m in modules.values()} - {"full"} - (set(_ELSEWHERE) - set(_PEFT_TYPES)))
    if len(methods) > 1:
        raise refuse(
            "PEFT", {"(all)": f"a PEFT folder holds one method, this adapter mixes {', '.join(methods)}"}, file
        )
    return methods[0] if methods else "lora"


def write(adapter, targets: dict[str, tuple[str, str]], has_bias: dict[str, bool] | None = None) -> Written:
    """A PEFT folder's tensors (``base_model.model.<path>.<param>``) and its ``adapter_config.json``.

    One method per folder; dense differences in its exact form (``dense_params``); PEFT-style OFT/BOFT as they are;
    whole-module copies (``saved``) under their own ``weight``/``bias`` names, listed in ``modules_to_save``."""
    saved = {n: m for n, m in adapter.modules.items() if m.algo == "saved"}
    adapted = {n: m for n, m in adapter.modules.items() if n not in saved}
    if not adapted:
        raise refuse("PEFT", {"(all)": "a PEFT folder needs adapted modules besides modules_to_save"}, adapter.path)
    method = _folder_method(adapted, adapter.path)
    factor, lokr_both, problems = (
        _lokr_layout({n: m for n, m in adapted.items() if m.algo == "lokr"}) if method == "lokr" else (-1, False, {})
    )
    tucker = any(m.tucker for m in adapted.values())
    written, entries, feedforward = Written({}), {}, []
    for name, module in adapted.items():
        if name in problems:
            continue
        try:
            if module.algo == "full":
                params, rank, alpha = dense_params(module, method, tucker)
            else:
                params, rank, alpha = peft_params(module, None if has_bias is None else has_bias.get(name), lokr_both)
        except ValueError as exc:
            problems[name] = str(exc)
            continue
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in params.items()})
        entries[path] = (rank, alpha)
        feedforward += [path] if method == "ia3" and module.on_input() else []
    if problems:
        raise refuse("PEFT", problems, adapter.path)
    for name, module in saved.items():
        prefix, path = targets[name]
        written.tensors.update({f"{prefix}{path}.{k}": v for k, v in module.params.items()})
    lora_bias = any(k.endswith(".lora_B.bias") for k in written.tensors)
    dora = any(k.endswith(".lora_magnitude_vector") for k in written.tensors)
    if dora and not all(m.dora for m in adapted.values()):
        raise refuse(
            "PEFT", {"(all)": "use_dora is one switch for the whole folder; DoRA is on some modules only"}, adapter.path
        )
    config: dict[str, Any] = {
        "peft_type": _PEFT_TYPES[method],
        "target_modules": sorted(entries),
        "inference_mode": True,
        "task_type": None,
        "modules_to_save": sorted(targets[n][1] for n in saved) or None,
        "base_model_name_or_path": (adapter.config or {}).get("base_model_name_or_path"),
    }
    try:
        if method == "oft":
            fields, written.notes = oft_fields(adapted)
            config.update(fields)
        elif method == "boft":
            config.update(boft_fields(adapted))
    except ValueError as exc:
        raise refuse("PEFT", {"(all)": str(exc)}, adapter.path) from None
    if method == "ia3":
        config.update(feedforward_modules=sorted(feedforward), fan_in_fan_out=False, init_ia3_weights=True)
    elif method == "lora":
        config.update(
            rank_alpha_fields(entries, "lora_alpha"),
            use_dora=dora,
            use_rslora=False,
            lora_bias=lora_bias,
            bias="none",
            fan_in_fan_out=False,
            init_lora_weights=True,
            lora_dropout=0.0,
        )
    elif method in ("loha", "lokr"):
        config.update(
            rank_alpha_fields(entries, "alpha"),
            use_effective_conv2d=tucker,
            rank_dropout=0.0,
            module_dropout=0.0,
            init_weights=True,
        )
        if method == "lokr":
            config.update(decompose_both=lokr_both, decompose_factor=factor, rank_dropout_scale=False)
    written.config = config
    return written
