"""Training configurations with PEFT's field names and meanings, so a PEFT config carries over unchanged.

Target selection (every config; ``targets.py`` implements it as PEFT documents it):
* ``target_modules``: a string is a regex that must match the **whole** module name (``re.fullmatch``), except
  ``"all-linear"``: every ``nn.Linear`` but the output layer; a list matches a name exactly or as a dotted suffix
  (``"to_q"`` matches ``"…attn1.to_q"``); None means every Linear and Conv layer.
* ``exclude_modules``: same rules, and it always wins.
* ``layers_to_transform`` (int or list) with optional ``layers_pattern``: unless targets are a regex, keep only
  modules whose first ``<pattern>.<index>.`` (or, without a pattern, first ``.<name>.<index>.``) has that index.
* ``rank_pattern`` / ``alpha_pattern`` (regex → value): the first pattern ``p`` with
  ``re.match(rf"(.*\\.)?({p})$", name)`` overrides ``r`` / alpha for that module.
* ``modules_to_save``: these modules' own weights (and biases) are trained in full and saved (never adapted).

Where PEFT and LyCORIS disagree on the math (OFT, BOFT, IA3), ``variant`` picks the rule: ``"peft"`` is PEFT's
method as its config means it; ``"lycoris"`` is LyCORIS' (output-side OFT blocks with ``constraint`` and
``rescaled``; IA3 as ``W ⊙ (1 + w)``). Each variant saves exactly in its own layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from ..algorithms.oft_peft import PeftOFTOptions

Targets = Union[str, list, None]


@dataclass
class AdapterConfig:
    """Fields every method shares (target selection and saved extras)."""

    method: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""
    target_modules: Targets = None
    exclude_modules: Targets = None
    layers_to_transform: Union[int, list, None] = None
    layers_pattern: Union[str, list, None] = None
    modules_to_save: Union[list, None] = None

    def __post_init__(self):
        for name in ("target_modules", "exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern"):
            value = getattr(self, name)
            if isinstance(value, (set, tuple)):
                setattr(self, name, sorted(value) if name != "layers_to_transform" else list(value))
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform")
        for name in ("rank_dropout", "module_dropout", "lora_dropout", "boft_dropout"):
            p = getattr(self, name, 0.0)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able), with ``method`` to rebuild the right class."""
        return {"method": self.method, **dataclasses.asdict(self)}

    def peft_dict(self) -> dict[str, Any]:
        """The ``adapter_config.json`` PEFT reads for this config (``peft_type`` set; our own fields and unset
        (None) fields dropped, so PEFT's defaults apply)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in _OURS and v is not None}
        return {"peft_type": self.peft_type, "task_type": None, **data}

    def alpha_value(self) -> float | None:
        """The default alpha (PEFT ``lora_alpha``/``alpha``), None for methods without one."""
        return None

    @property
    def patterned(self) -> bool:
        return bool(getattr(self, "rank_pattern", None) or getattr(self, "alpha_pattern", None))


_OURS = {"variant", "constraint", "rescaled", "conv_decomposition"}


@dataclass
class LoraConfig(AdapterConfig):
    """LoRA: ``ΔW = s·B@A`` with ``s = lora_alpha/r`` (``/√r`` with ``use_rslora``); DoRA with ``use_dora``.

    ``lora_dropout`` drops input features of the adapter branch (PEFT; only where the layer runs the bypass form,
    i.e. under ``wrap`` — a host that applies adapters to the weight has no branch to drop from);
    ``init_lora_weights`` True: A kaiming, B 0,
    ``"gaussian"``: A ~ N(0, 1/r), B 0, False: both random. ``conv_decomposition="balanced"`` factors a k×k Conv2d
    as ``(out·kh) × (in·kw)`` (rank r) and runs it as a ``1×kw`` then a ``kh×1`` convolution; saved as the exact
    rank ``r·kh`` LoCon. nn.Embedding layers get an embedding LoRA (``ΔW = s·B@A`` on the table).
    """

    method: ClassVar[str] = "lora"
    peft_type: ClassVar[str] = "LORA"
    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: Union[bool, str] = True
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    conv_decomposition: str = "standard"

    def __post_init__(self):
        super().__post_init__()
        if self.conv_decomposition not in ("standard", "balanced"):
            raise ValueError(f"conv_decomposition must be 'standard' or 'balanced', got {self.conv_decomposition!r}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError(f"init_lora_weights must be True, False or 'gaussian', got {self.init_lora_weights!r}")

    def alpha_value(self):
        return float(self.lora_alpha)


@dataclass
class RankedConfig(AdapterConfig):
    """Fields of the low-rank LyCORIS methods: ``r``, ``alpha`` (ΔW carries alpha/r), per-module patterns."""

    r: int = 8
    alpha: float = 8
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    def alpha_value(self):
        return float(self.alpha)


@dataclass
class LoHaConfig(RankedConfig):
    """LoHa: ``ΔW = (alpha/r)·(w1_a@w1_b) ⊙ (w2_a@w2_b)``; Tucker cores for k×k convs with
    ``use_effective_conv2d``. ``rank_dropout`` masks rows of ΔW (rescaled by the mask mean, as PEFT LoHa);
    ``module_dropout`` skips the adapter per forward. ``init_weights`` True: w2_b 0, the rest kaiming (PEFT);
    ``"lycoris"``: LyCORIS' normal init with w2_a 0; False: all random."""

    method: ClassVar[str] = "loha"
    peft_type: ClassVar[str] = "LOHA"
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    init_weights: Union[bool, str] = True


@dataclass
class LoKrConfig(LoHaConfig):
    """LoKr: ``ΔW = (alpha/r)·kron(W1, W2)``. Shapes as PEFT builds them: ``(a,b) = factorization(out, f)``,
    ``(c,d) = factorization(in, f)`` with ``f = decompose_factor``; W1 ``(a,c)`` is split into ``w1_a@w1_b`` iff
    ``decompose_both`` and ``r < max(a,c)/2``; W2 is split iff ``r < max(b,d)/2`` (Tucker ``t2`` for k×k convs with
    ``use_effective_conv2d``). ``rank_dropout`` masks rows, divided by the mask mean iff ``rank_dropout_scale``.
    ``init_weights`` True: W1 0 (PEFT); ``"lycoris"``: W2 (or w2_b) 0; False: all random."""

    method: ClassVar[str] = "lokr"
    peft_type: ClassVar[str] = "LOKR"
    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False


@dataclass
class OFTConfig(AdapterConfig):
    """OFT: a block-diagonal orthogonal ``R`` (``r`` blocks, or blocks of ``oft_block_size``; give one, the other 0;
    a size that does not divide is moved to the nearest divisor, as PEFT does).

    ``variant="peft"``: rotates the input columns, ``W' = W·Rᵀ``, from packed skew parameters ``oft_R``; Cayley
    exact or Cayley–Neumann (``use_cayley_neumann``, ``num_cayley_neumann_terms``); ``coft`` keeps each block's
    skew matrix within ``eps/√n`` (projected in place every forward); ``block_share`` one block for all.
    ``variant="lycoris"``: rotates the output rows, ``W'_k = R_kᵀ·W_k``, ``R = (I+Q)(I−Q)⁻¹``, ``Q = B−Bᵀ``
    bounded jointly by ``constraint·out`` (0 = none); ``rescaled`` adds a trained per-row scale; a block size
    follows LyCORIS' rule ``(bs, n) = sorted(factorization(out, oft_block_size))``.
    ``module_dropout``: PEFT replaces ``int(p·n)`` random blocks by I per forward; LyCORIS skips the adapter.
    """

    method: ClassVar[str] = "oft"
    peft_type: ClassVar[str] = "OFT"
    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    init_weights: bool = True
    coft: bool = PeftOFTOptions.coft
    eps: float = PeftOFTOptions.eps
    block_share: bool = PeftOFTOptions.block_share
    use_cayley_neumann: bool = PeftOFTOptions.use_cayley_neumann
    num_cayley_neumann_terms: int = PeftOFTOptions.num_cayley_neumann_terms
    variant: str = "peft"
    constraint: float = 0.0
    rescaled: bool = False

    def __post_init__(self):
        super().__post_init__()
        if (self.r != 0) == (self.oft_block_size != 0):
            raise ValueError(f"give either r ({self.r}) or oft_block_size ({self.oft_block_size}), the other 0")
        _check_variant(self, peft_only=("coft", "block_share"), lycoris_only=("constraint", "rescaled"))


@dataclass
class BOFTConfig(AdapterConfig):
    """BOFT: butterfly products of block-orthogonal factors.

    ``variant="peft"``: ``boft_n_butterfly_factor`` factors of ``boft_block_num`` blocks of ``boft_block_size``
    (give one of the two) over the input columns, ½-skew Cayley, a trained per-row scale ``boft_s``;
    ``boft_dropout`` replaces ``int(p·n)`` random blocks by I per forward. ``variant="lycoris"``: output rows,
    block size = the largest even ``bs ≤ boft_block_size`` with ``out/bs`` a power of two, ``log2(out/bs)+1``
    stages, ``constraint`` and ``rescaled`` as LyCORIS OFT; ``boft_dropout`` skips the adapter per forward.
    """

    method: ClassVar[str] = "boft"
    peft_type: ClassVar[str] = "BOFT"
    boft_block_size: int = 4
    boft_block_num: int = 0
    boft_n_butterfly_factor: int = 1
    boft_dropout: float = 0.0
    init_weights: bool = True
    variant: str = "peft"
    constraint: float = 0.0
    rescaled: bool = False

    def __post_init__(self):
        super().__post_init__()
        if (self.boft_block_size != 0) == (self.boft_block_num != 0):
            raise ValueError("give either boft_block_size or boft_block_num, the other 0")
        if self.boft_n_butterfly_factor < 1:
            raise ValueError("boft_n_butterfly_factor must be ≥ 1")
        _check_variant(self, peft_only=(), lycoris_only=("constraint", "rescaled"))


@dataclass
class GLoRAConfig(RankedConfig):
    """GLoRA (LyCORIS): ``ΔW = (alpha/r)·(W ×_in (a1@a2) + b1@b2)``; a1, b1 kaiming and a2, b2 zero
    (``init_weights=False``: all random). ``module_dropout`` skips the adapter per forward. Saved in LyCORIS layout
    (PEFT's own ``GloraConfig`` is a different parametrisation)."""

    method: ClassVar[str] = "glora"
    peft_type: ClassVar[str] = ""
    module_dropout: float = 0.0
    init_weights: bool = True


@dataclass
class IA3Config(AdapterConfig):
    """(IA)³: a learned per-channel gain, on the input columns for ``feedforward_modules`` (same matching rules as
    ``target_modules``), else on the output rows.

    ``variant="peft"``: ``W' = W ⊙ l`` (l starts at 1) and, for layers that are not feed-forward, ``b' = b ⊙ l``.
    ``variant="lycoris"``: ``W' = W ⊙ (1 + w)`` (w starts at 0), bias untouched. ``init_ia3_weights=False``: random.
    """

    method: ClassVar[str] = "ia3"
    peft_type: ClassVar[str] = "IA3"
    feedforward_modules: Targets = None
    init_ia3_weights: bool = True
    variant: str = "peft"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.feedforward_modules, (set, tuple)):
            self.feedforward_modules = sorted(self.feedforward_modules)
        _check_variant(self, peft_only=(), lycoris_only=())


def _check_variant(config, peft_only: tuple[str, ...], lycoris_only: tuple[str, ...]) -> None:
    """Refuse a variant name we do not know, and fields that mean nothing in the chosen variant."""
    if config.variant not in ("peft", "lycoris"):
        raise ValueError(f"variant must be 'peft' or 'lycoris', got {config.variant!r}")
    unused = lycoris_only if config.variant == "peft" else peft_only
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in unused:
        if getattr(config, name) != defaults[name]:
            raise ValueError(f"{name} has no meaning for variant={config.variant!r}")


CONFIGS: dict[str, type[AdapterConfig]] = {
    cls.method: cls for cls in (LoraConfig, LoHaConfig, LoKrConfig, OFTConfig, BOFTConfig, GLoRAConfig, IA3Config)
}


def config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config from ``to_dict()`` output (unknown keys are refused)."""
    data = dict(data)
    method = data.pop("method", None)
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(CONFIGS)}")
    return CONFIGS[method](**data)
