"""What every algorithm module shares: the scale context given by the file layout, validation helpers, and the
two module kinds — additive (``W' = W + m·ΔW``, ΔW independent of W) and weight-dependent (``W' = f(W, m)``).

All math runs in float32 (float64 if the weight is float64). ``apply``/``delta`` return new tensors (the reference
forms, autograd-safe); ``apply_`` rewrites a weight in place through the fast paths an algorithm may provide
(``rebuild_``; for additive methods ``factors`` + ``add_rows_``), with temporaries of at most one weight-sized
float32 tensor and, for the fast paths, only scratch chunks (see inplace.py).
Reference: docs/methods.md, Conventions and Scale rules.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import AdapterError
from .dora import lycoris_dora, lycoris_factor, peft_dora, peft_factor
from .inplace import compute_dtype, row_chunks, working_tensor


@dataclass
class ScaleContext:
    """How a module's ``alpha/r`` scale is resolved, decided by the file's layout.

    ``config_alpha``/``config_rank`` come from a PEFT config (after rank/alpha patterns) or diffusers metadata;
    when they are None the module's own ``alpha`` tensor rules (LyCORIS/kohya). ``peft`` selects PEFT's semantics
    (full/full LoKr scaled by alpha/r, DoRA without strength interpolation, OFT/BOFT/IA3 PEFT variants).
    """

    file: str = ""
    config_alpha: float | None = None
    config_rank: int | None = None
    rslora: bool = False
    peft: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    peft_version: tuple[int, ...] | None = None
    module_path: str = ""  # the module's path inside the model (PEFT prefixes removed), for config lookups
    # PEFT's fan_in_fan_out: the layer stores its weight transposed, (in, out) (transformers' Conv1D); the module's
    # math applies to the weight's transpose
    fan_in_fan_out: bool = False

    def scale(self, alpha_tensor: torch.Tensor | None, rank: int | None, *, full_matrix: bool = False) -> float:
        """alpha/r (or alpha/√r with rsLoRA) by the layout's rule; 1.0 when the file gives no usable alpha.

        LyCORIS: alpha from the tensor, missing or 0 → 1; LoKr with both halves full → 1 (``full_matrix``).
        PEFT: alpha and r from the config, no full/full exception.
        """
        if self.config_alpha is not None:
            r = self.config_rank or rank
            if not r:
                return 1.0
            return self.config_alpha / (math.sqrt(r) if self.rslora else r)
        if full_matrix or rank is None or alpha_tensor is None:
            return 1.0
        alpha = float(alpha_tensor)
        if alpha == 0.0 or not math.isfinite(alpha):
            return 1.0
        return alpha / rank


@dataclass(frozen=True)
class PeftFolder:
    """What a PEFT folder decides once for all its modules: its one ``method`` (our algo name of its ``peft_type``),
    LoKr's ``decompose_both`` and ``decompose_factor``, and ``tucker`` (``use_effective_conv2d``: convolutions get
    Tucker cores)."""

    method: str = "lora"
    decompose_both: bool = False
    tucker: bool = False
    decompose_factor: int = -1


@dataclass(frozen=True)
class Loader:
    """A host's loader dedicated to the files of one method (or of the methods that share it): ``key`` names it
    (ComfyUI: node id ``LyCOLoad<key>``), ``title`` is what the user sees, ``description`` what it loads."""

    key: str
    title: str
    description: str = ""


class AdapterModule:
    """One adapted layer. Subclasses set ``algo`` and implement ``apply`` (or ``delta`` when additive)."""

    algo: ClassVar[str] = ""
    label: ClassVar[str] = ""  # the method's name as people write it ("LoKr", "(IA)³"); "": ``algo``
    additive: ClassVar[bool] = False
    # the canonical parameter names this method reads (the registry's detection vocabulary), and where detection
    # asks this class among the others (registry.py lists the order)
    suffixes: ClassVar[tuple[str, ...]] = ()
    detect_order: ClassVar[int] = 0
    # those of ``suffixes`` stored as one number or flag of any dtype (IA3's ``on_input``), not as float tensors
    flags: ClassVar[tuple[str, ...]] = ()
    # whether ΔW carries the layout's alpha/r scale (written back as an alpha tensor in LyCORIS form)
    scaled: ClassVar[bool] = False
    # PEFT's name of the same math (adapter_config.json's peft_type), or None with the reason PEFT has no form of it
    peft_type: ClassVar[str | None] = None
    peft_refusal: ClassVar[str] = ""
    # the adapter_config.json field of PEFT's alpha for this method and PEFT's default when a config omits it (the
    # scale is then alpha/r, with rank/alpha patterns and rsLoRA); None: PEFT's form has no alpha/r scale
    peft_alpha: ClassVar[tuple[str, float] | None] = None
    # whether PEFT's config of this method has ``fan_in_fan_out`` (layers stored transposed, transformers' Conv1D);
    # without it the method's PEFT form takes plain Linear/Conv layers only
    peft_fan_in_fan_out: ClassVar[bool] = False
    # a whole trained layer (a copy, or a difference of every value): a PEFT folder of any method carries it, so it
    # neither decides the folder's method nor contradicts its peft_type
    whole_layer: ClassVar[bool] = False
    # a trained copy that replaces the layer (PEFT's modules_to_save), not a difference: written under the layer's
    # own parameter names and listed in the config's modules_to_save
    replaces_layer: ClassVar[bool] = False
    # the method's name in kohya/LyCORIS ``ss_network_args`` (``algo=``) where LyCORIS spells it otherwise than
    # ``algo`` ("": the same)
    lycoris_algo: ClassVar[str] = ""
    # whether diffusers' own loader reads this method (its PEFT form, ``to_peft``, in a single-file diffusers LoRA)
    diffusers_loads: ClassVar[bool] = False
    # ΔW is a vector (a norm layer's weight): it has no rank, so a conversion to LoRA keeps the module as it is
    vector_delta: ClassVar[bool] = False
    # the loader a host dedicates to this method's files; None: only the loaders that take every method
    loader: ClassVar[Loader | None] = None
    # the dimensionalities each parameter may have (checked on construction; parameters not named: any)
    ndims: ClassVar[dict[str, tuple[int, ...]]] = {}
    _SHARED_NDIMS: ClassVar[dict[str, tuple[int, ...]]] = {"dora_scale": (1, 2, 3, 4, 5), "magnitude": (1, 2, 3, 4, 5)}
    # parameters that hold one value per output channel (biases and their deltas)
    _PER_OUTPUT: ClassVar[tuple[str, ...]] = ("diff_b", "b_norm", "lora_up.bias")

    def __init__(self, name: str, params: dict[str, torch.Tensor], ctx: ScaleContext):
        self.name, self.params, self.ctx = name, params, ctx
        for key, allowed in {**self._SHARED_NDIMS, **self.ndims}.items():
            if key in params:
                check_ndim(self, key, allowed)

    @classmethod
    def unread(cls, params: dict[str, torch.Tensor]) -> list[str]:
        """The parameters in ``params`` that this method's law never reads: they are listed as unknown keys of the
        file, never silently dropped. Every method reads its ``suffixes`` and ``alpha``; additive ones the DoRA
        magnitude (``dora_scale``/``magnitude``) too."""
        read = {*cls.suffixes, "alpha", *(("dora_scale", "magnitude") if cls.additive else ())}
        return sorted(set(params) - read)

    def with_params(self, params: dict[str, torch.Tensor]) -> AdapterModule:
        """This module over other tensors of the same values (e.g. a host's copies on the compute device).
        Derived caches (rotations per device and dtype) depend on the values only, so the twin shares them."""
        twin = copy.copy(self)
        twin.params = params
        return twin

    # --- description -------------------------------------------------------------------------------------------
    @property
    def dora(self) -> bool:
        return False

    @property
    def tucker(self) -> bool:
        return False

    def rank(self) -> int | None:
        return None

    def alpha(self) -> float | None:
        tensor = self.params.get("alpha")
        return float(tensor) if tensor is not None else None

    def scale_value(self) -> float | None:
        return None

    def summary(self) -> dict[str, Any]:
        """Method, rank, alpha, scale, Tucker, DoRA axis and parameter shapes, as plain data."""
        return {
            "algo": self.algo,
            "rank": self.rank(),
            "alpha": self.alpha(),
            "scale": self.scale_value(),
            "tucker": self.tucker,
            "dora": self.dora,
            "dora_axis": self.dora_axis(),
            "shapes": {k: list(v.shape) for k, v in self.params.items()},
        }

    def dora_axis(self) -> str | None:
        return None

    def weight_shape(self) -> torch.Size | None:
        """The weight shape the module's own tensors imply, or None where they do not tell (a rotation or gain
        fits any layer of its width). Methods that store a convolution's kernel flattened give ``(out, in·∏k)``
        and say so in ``kernel_stored``."""
        return None

    def kernel_stored(self) -> bool:
        """Whether ``weight_shape`` is the weight's true shape, kernel included (False: a convolution would look
        like a Linear layer of ``in·∏k`` inputs without the model)."""
        return True

    # --- math ----------------------------------------------------------------------------------------------------
    def check_target(self, weight_shape: torch.Size, has_bias: bool) -> None:
        """Raise AdapterError if this module cannot apply to a weight of ``weight_shape`` (methods add their own
        rules; ``fits`` runs these and the rules every method shares)."""

    def fits(self, weight_shape: torch.Size, has_bias: bool) -> None:
        """Raise AdapterError unless this module applies to a weight of ``weight_shape``: the method's own rules,
        then one value per output channel in bias deltas and an output-axis DoRA scale, one per input channel in an
        input-axis one."""
        self.check_target(weight_shape, has_bias)
        rows = weight_shape[0] if len(weight_shape) else 1
        wanted = {key: rows for key in self._PER_OUTPUT}
        axis = self.dora_axis()
        if axis is not None:
            key = "magnitude" if "magnitude" in self.params else "dora_scale"
            wanted[key] = rows if axis == "out" or len(weight_shape) < 2 else weight_shape[1]
        for key, count in wanted.items():
            tensor = self.params.get(key)
            if tensor is not None and tensor.numel() != count:
                raise self.fail(f"{tensor.numel()} values for a weight of shape {list(weight_shape)}", key=key,
                                expected=f"{count} values")  # fmt: skip

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """W' for base ``weight`` at ``strength``, a new tensor in the compute dtype."""
        raise NotImplementedError

    def apply_(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """``weight ← W'`` in place (the same tensor is returned), math in the compute dtype, one final rounding.

        A contiguous compute-dtype weight is rewritten where it lies; any other goes through one working copy.
        """
        work = working_tensor(weight)
        self.rebuild_(work, strength)
        if work is not weight:
            weight.copy_(work)
        return weight

    def rebuild_(self, work: torch.Tensor, strength: float) -> None:
        """``work ← W'`` in place on a contiguous compute-dtype tensor. Fast paths override this; the default
        copies in the reference ``apply`` (one weight-sized temporary)."""
        work.copy_(self.apply(work, strength))

    def bypassable(self) -> bool:
        """Whether ``bypass_delta`` can stand in for merging (the method's ΔW does not depend on W)."""
        return False

    def bypass_delta(self, x: torch.Tensor, call, strength: float) -> torch.Tensor:
        """The adapter branch of a bypassed layer, ``m·(ΔW ⋆ x + Δb)`` (``call``: a ``bypass.LayerCall``)."""
        raise NotImplementedError

    def changes_bias(self) -> bool:
        """Whether ``bias_update`` ever returns a new bias."""
        return False

    def bias_update(self, bias: torch.Tensor, strength: float) -> torch.Tensor | None:
        """b' for base ``bias`` at ``strength`` (compute dtype), or None when the bias stays."""
        return None

    # --- other layouts -------------------------------------------------------------------------------------------
    def to_lycoris(self, has_bias: bool | None) -> tuple[dict[str, torch.Tensor], str]:
        """(parameters in LyCORIS/kohya form, note on anything folded); ValueError with the reason when this module
        has no exact LyCORIS form. ``has_bias``: whether the target layer has a bias (None: unknown).

        Default: the parameters as they are, with ``alpha = scale·r`` for scaled methods (so a PEFT config's scale is
        kept exactly) and any stored alpha kept otherwise."""
        params = {k: v for k, v in self.params.items() if k != "alpha"}
        if self.scaled:
            params["alpha"] = alpha_tensor(self.scale_value() * self.rank())
        elif "alpha" in self.params:
            params["alpha"] = self.params["alpha"]
        return params, ""

    def to_peft(
        self, has_bias: bool | None, folder: PeftFolder
    ) -> tuple[dict[str, torch.Tensor], int | None, float | None]:
        """(PEFT parameter tensors, r, alpha) with PEFT's ``alpha/r`` equal to this module's scale; ValueError with
        the reason when PEFT cannot hold it exactly. Default: the parameters under their own names (PEFT's LoHa and
        LoKr spell them as LyCORIS does), no DoRA."""
        if self.peft_type is None:
            raise ValueError(self.peft_refusal or f"PEFT has no {self.algo}")
        if self.dora:
            raise ValueError(f"PEFT's {self.algo.upper()} has no DoRA")
        rank = self.peft_rank(folder)
        return {k: v for k, v in self.params.items() if k != "alpha"}, rank, self.scale_value() * rank

    def peft_rank(self, folder: PeftFolder) -> int | None:
        """The ``r`` a PEFT config must give this module so that PEFT builds its tensors."""
        return self.rank()

    @classmethod
    def peft_folder(cls, modules: dict[str, AdapterModule], tucker: bool) -> tuple[PeftFolder, dict[str, str]]:
        """The settings a PEFT folder of this method takes once for all its ``modules`` (name: module, dense
        differences among them), and {name: why} for the modules no such setting builds. Default: none beyond the
        method and ``tucker``."""
        return PeftFolder(cls.algo, tucker=tucker), {}

    @classmethod
    def peft_config_fields(
        cls, modules: dict[str, AdapterModule], tensors: dict[str, torch.Tensor], folder: PeftFolder
    ) -> tuple[dict[str, Any], list[str]]:
        """(this method's own ``adapter_config.json`` fields, notes on anything folded) for a PEFT folder of
        ``modules`` (layer path: module) whose ``to_peft`` wrote ``tensors``; ValueError when no one config holds
        them all. The folder (peft_type, targets, ``r``/alpha and patterns, fan_in_fan_out, modules_to_save) is
        written by the layout. Default: no fields of its own."""
        return {}, []

    def kohya_lora(self) -> bool:
        """Whether kohya sd-scripts' own ``networks.lora`` (not LyCORIS) builds this module: a file of such modules
        only is labelled ``ss_network_module = networks.lora``, any other ``lycoris.kohya``."""
        return False

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(up, down)`` with ``ΔW = scale_value()·reshape(flat(up) @ flat(down), W.shape)`` (before DoRA and any
        bias delta), or None where ΔW is no such product of two factors. Conversions to LoRA re-factor these
        instead of rebuilding ΔW."""
        return None

    def check_result(self, result: torch.Tensor, base: torch.Tensor | None = None) -> None:
        """Raise AdapterError if W' (or b') holds NaN or Inf where the base ``base`` (when given) did not: the
        module's values overflow the weight's dtype, e.g. factors whose product exceeds fp16's range."""
        if not bool(torch.isfinite(result).all()) and (base is None or bool(torch.isfinite(base).all())):
            raise self.fail(
                f"applying it gives NaN or Inf in the {result.dtype} weight of shape {list(result.shape)}",
                expected="values whose result stays finite in the weight's dtype",
            )

    # --- helpers ------------------------------------------------------------------------------------------------
    def fail(self, problem: str, key: str | None = None, expected: str | None = None) -> AdapterError:
        return AdapterError(problem, file=self.ctx.file, module=self.name, key=key, expected=expected)

    def tensor(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        """A parameter as a compute-dtype tensor on the weight's device."""
        return self.params[key].to(device=weight.device, dtype=compute_dtype(weight))


class AdditiveModule(AdapterModule):
    """``W' = W + m·ΔW`` (and ``b' = b + m·Δb``); ΔW does not depend on W. DoRA, when present, rescales per its law."""

    additive = True

    def delta(self, weight_shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """ΔW including alpha/r, shaped like the weight."""
        raise NotImplementedError

    def bias_delta(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        return None

    def apply(self, weight, strength):
        dtype = compute_dtype(weight)
        return self.combine(weight.to(dtype), self.delta(weight.shape, weight.device, dtype), strength)

    def combine(self, base: torch.Tensor, delta: torch.Tensor, strength: float) -> torch.Tensor:
        """W' from the compute-dtype base W and ΔW: ``W + m·ΔW``, or DoRA's law when a magnitude is present."""
        if "magnitude" in self.params:
            return peft_dora(base, delta, strength, self.tensor("magnitude", base))
        if "dora_scale" in self.params:
            return lycoris_dora(base, delta, strength, self.tensor("dora_scale", base))
        return base + delta if strength == 1.0 else base + strength * delta

    def row_group(self) -> int:
        """How many consecutive rows of ΔW ``add_rows_`` must build together (1 unless the method says more)."""
        return 1

    def factors(self, weight_shape: torch.Size, device: torch.device, dtype: torch.dtype) -> Any:
        """What ``add_rows_`` needs, cast once per ``apply_``. Fast paths return their small factors (and scratch);
        the default is the whole ΔW (one weight-sized temporary)."""
        return self.delta(weight_shape, device, dtype)

    def add_rows_(self, work: torch.Tensor, rows: slice, factors: Any, scale: float) -> None:
        """``work += scale·flat(ΔW)[rows]`` in place (``work`` is ``(len(rows), cols)``, compute dtype)."""
        work.add_(factors.reshape(factors.shape[0], -1)[rows], alpha=scale)

    def apply_(self, weight, strength):
        """``W + m·ΔW`` in place, row chunk by row chunk. DoRA adds ΔW (PEFT: m·ΔW) first, then rescales the
        sum by its per-row factor; LyCORIS DoRA on the input axis needs whole columns: one working copy."""
        if weight.ndim == 0:
            return super().apply_(weight, strength)
        factors = self.factors(weight.shape, weight.device, compute_dtype(weight))
        if self.dora_axis() == "in":
            work = working_tensor(weight)
            self.add_rows_(work.view(work.shape[0], -1), slice(0, work.shape[0]), factors, 1.0)
            work.mul_(lycoris_factor(work, strength, self.tensor("dora_scale", work)))
            if work is not weight:
                weight.copy_(work)
            return weight
        # PEFT stores a conv magnitude as (1, out, 1, …): flattened so that row chunks can index it
        magnitude = self.tensor("magnitude", weight).reshape(-1) if "magnitude" in self.params else None
        dora_scale = self.tensor("dora_scale", weight) if "dora_scale" in self.params else None
        for rows, work in row_chunks(weight, self.row_group()):
            if magnitude is not None:
                self.add_rows_(work, rows, factors, strength)
                work.mul_(peft_factor(work, magnitude[rows]))
            elif dora_scale is not None:
                self.add_rows_(work, rows, factors, 1.0)
                work.mul_(lycoris_factor(work, strength, dora_scale[rows]))
            else:
                self.add_rows_(work, rows, factors, strength)
        return weight

    def bypassable(self):
        return not self.dora

    def bypass_delta(self, x, call, strength):
        out = self.bypass_weight(x, call, strength)
        bias = self.bias_delta(x.device, x.dtype)
        return out if bias is None else out + call.channels(strength * bias)

    def bypass_weight(self, x: torch.Tensor, call, strength: float) -> torch.Tensor:
        """``m·ΔW ⋆ x``. Default: ΔW formed in float32 for the call, cast to x's dtype (LoHa, full diffs)."""
        delta = self.delta(torch.Size(call.weight_shape), x.device, compute_dtype(x))
        return call.apply(x, (delta * strength).to(x.dtype))

    def changes_bias(self):
        return self.bias_delta(torch.device("cpu"), torch.float32) is not None

    def bias_update(self, bias, strength):
        bias_delta = self.bias_delta(bias.device, compute_dtype(bias))
        return None if bias_delta is None else bias.to(bias_delta.dtype) + strength * bias_delta

    @property
    def dora(self) -> bool:
        return "dora_scale" in self.params or "magnitude" in self.params

    def dora_axis(self) -> str | None:
        if "magnitude" in self.params:
            return "out"
        scale = self.params.get("dora_scale")
        if scale is None:
            return None
        return "in" if scale.shape[0] == 1 and scale.numel() > 1 else "out"


def alpha_tensor(value: float) -> torch.Tensor:
    """A 0-dim float32 alpha (kept float32 in fp16/bf16 files, so ``alpha/r`` survives the cast)."""
    return torch.tensor(float(value), dtype=torch.float32)


def check_fits(module: AdapterModule, shape: list[int], weight_shape: torch.Size, what: str) -> None:
    """Raise naming both shapes unless a rebuilt ``shape`` has as many values as the weight."""
    if math.prod(shape) != math.prod(weight_shape):
        raise module.fail(
            f"{what} rebuilds to {list(shape)} ({math.prod(shape)} values), which does not fit "
            f"the target weight {list(weight_shape)}",
            expected="an adapter made for this layer",
        )


def reshape_to(delta: torch.Tensor, weight_shape: torch.Size, module: AdapterModule, what: str) -> torch.Tensor:
    """Reshape a rebuilt delta to the weight's shape, or raise naming both shapes."""
    check_fits(module, list(delta.shape), weight_shape, what)
    return delta.reshape(weight_shape)


def flat2(t: torch.Tensor) -> torch.Tensor:
    """``t.reshape(t.shape[0], -1)``."""
    return t.reshape(t.shape[0], -1)


def tucker_rebuild(core: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``T[o,i,…] = Σ_{p,q} core[p,q,…]·left[p,o]·right[q,i]`` (left ``(r,out)``, right ``(r,in)``), contiguous."""
    return torch.einsum("pq...,po,qi->oi...", core, left, right).contiguous()


def tucker_fold(core: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``F[p,(i,…)] = Σ_q core[p,q,…]·right[q,i]`` as ``(r, in·∏k)``: the Tucker product is then ``leftᵀ @ F``
    (a rank-r matmul, no weight-sized intermediate)."""
    return torch.einsum("pq...,qi->pi...", core, right).reshape(core.shape[0], -1)


def require(module: AdapterModule, keys: tuple[str, ...]) -> None:
    """Raise naming the first missing partner tensor among ``keys``."""
    for key in keys:
        if key not in module.params:
            present = ", ".join(sorted(module.params))
            raise module.fail(
                f"missing tensor '{key}' (present: {present})",
                key=key,
                expected=f"all of {', '.join(keys)} for {module.algo}",
            )


def check_ndim(module: AdapterModule, key: str, ndims: tuple[int, ...]) -> torch.Tensor:
    tensor = module.params[key]
    if tensor.ndim not in ndims:
        raise module.fail(
            f"tensor has shape {list(tensor.shape)}",
            key=key,
            expected=f"{' or '.join(str(n) for n in ndims)} dimensions",
        )
    return tensor


def check_dim(module: AdapterModule, key: str, dim: int, value: int, meaning: str) -> None:
    tensor = module.params[key]
    if tensor.shape[dim] != value:
        raise module.fail(
            f"shape {list(tensor.shape)} contradicts {meaning} = {value}",
            key=key,
            expected=f"size {value} at dimension {dim}",
        )
