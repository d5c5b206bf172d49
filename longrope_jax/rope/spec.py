"""`RopeSpec`: one immutable description of a rotary embedding and its context-extension method.

A spec round-trips Hugging Face configs (`from_hf_config` / `RopeSpec.to_hf`) in the spirit of levanter's rotary
config registry: each rope type lists the keys it reads and writes, and every bad field raises one `ValueError`
that names the field and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from longrope_jax.rope.registry import hf_rope_type, registered_types, rope_type

ROPE_TYPES = tuple(registered_types())
# Other HF spellings of a registered type, e.g. Phi-3's "su" and LongRoPE2's "longrope2" for longrope.
ROPE_TYPE_ALIASES = {alias: kind.name for kind in registered_types().values() for alias in kind.hf_names
                     if alias != kind.name}
MSCALE_POLICIES = ("su", "yarn", "constant")

Factors = tuple[float, ...] | tuple[tuple[float, ...], ...]


def _as_factors(value: Any, field: str) -> Factors | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 1:
        return tuple(float(v) for v in array)
    if array.ndim == 2:
        return tuple(tuple(float(v) for v in row) for row in array)
    raise ValueError(f"rope field '{field}' must be a list of d/2 numbers or a (n_layers, d/2) nested list, "
                     f"got an array of shape {array.shape}; pass one factor per rotary frequency pair")


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """A rotary embedding plus its context-extension method; everything `frequencies` needs.

    Attributes:
      rope_type: a registered rope type (ROPE_TYPES; one module each in rope/types/).
      head_dim: per-head channel count; `rotary_dim = int(head_dim * partial_rotary_factor)` channels rotate.
      theta: RoPE base θ (θ_i = theta^(-2i/rotary_dim)).
      max_position_embeddings: the context the (extended) model is configured for.
      original_max_position_embeddings: pre-training context (yarn, llama3, longrope); None for the others.
      factor: scale s for linear, dynamic, yarn and llama3; for longrope an override of
        max_position_embeddings / original_max_position_embeddings (used only by the attention scale).
      attention_factor: explicit magnitude scale for cos/sin (yarn, longrope); None means the method's default.
      beta_fast, beta_slow, mscale, mscale_all_dim, truncate: YaRN parameters, HF semantics.
      low_freq_factor, high_freq_factor: llama3 parameters.
      short_factor, long_factor: LongRoPE λ, length rotary_dim/2 (or (n_layers, rotary_dim/2) per layer).
      n_hat: LongRoPE's un-interpolated start tokens: positions < n_hat keep the original cos/sin, unscaled.
      mscale_policy: LongRoPE attention scale when attention_factor is None: "su" √(1+ln s/ln L), "yarn" 0.1 ln s+1.
      critical_dim: LongRoPE2 critical dimension the long factors were searched with (metadata; None otherwise).
    """

    rope_type: str = "default"
    head_dim: int = 64
    theta: float = 10000.0
    max_position_embeddings: int = 2048
    partial_rotary_factor: float = 1.0
    original_max_position_embeddings: int | None = None
    factor: float | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    short_factor: Factors | None = None
    long_factor: Factors | None = None
    n_hat: int = 0
    mscale_policy: str = "su"
    critical_dim: int | None = None
    require_monotone: bool = dataclasses.field(default=True, compare=False)

    def __post_init__(self) -> None:
        # Normalise list inputs to hashable tuples so specs compare and hash by value.
        object.__setattr__(self, "short_factor", _as_factors(self.short_factor, "short_factor"))
        object.__setattr__(self, "long_factor", _as_factors(self.long_factor, "long_factor"))
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def original_length(self) -> int:
        """The pre-training context: original_max_position_embeddings when set, else max_position_embeddings."""
        return self.original_max_position_embeddings or self.max_position_embeddings

    @property
    def half_dim(self) -> int:
        return self.rotary_dim // 2

    @property
    def scale(self) -> float:
        """The extension ratio s used by the attention-scale formulas."""
        if self.rope_type == "longrope":
            if self.factor is not None:
                return float(self.factor)
            return self.max_position_embeddings / self.original_max_position_embeddings
        return float(self.factor) if self.factor is not None else 1.0

    @property
    def per_layer(self) -> bool:
        return self.long_factor is not None and isinstance(self.long_factor[0], tuple)

    def replace(self, **changes: Any) -> "RopeSpec":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if self.rope_type not in registered_types():
            raise ValueError(f"unknown rope_type {self.rope_type!r}; use one of {', '.join(registered_types())} "
                             f"(aliases: {', '.join(ROPE_TYPE_ALIASES)})")
        if self.head_dim <= 0 or self.rotary_dim % 2 or self.rotary_dim <= 0:
            raise ValueError(f"rope field 'head_dim'×'partial_rotary_factor' = {self.rotary_dim} must be a positive "
                             f"even channel count; check head_dim and partial_rotary_factor")
        if not (math.isfinite(self.theta) and self.theta > 1.0):
            raise ValueError(f"rope field 'rope_theta' = {self.theta} must be a finite base > 1 (e.g. 10000)")
        if self.max_position_embeddings <= 0:
            raise ValueError("rope field 'max_position_embeddings' must be a positive token count")
        if self.n_hat < 0:
            raise ValueError(f"rope field 'n_hat' = {self.n_hat} must be >= 0 (number of un-interpolated start tokens)")
        if self.mscale_policy not in MSCALE_POLICIES:
            raise ValueError(f"rope field 'mscale_policy' = {self.mscale_policy!r}; use one of {MSCALE_POLICIES}")
        if self.mscale_policy == "constant" and self.attention_factor is None:
            raise ValueError("rope field 'mscale_policy' is 'constant' but 'attention_factor' is missing; set it")
        if self.attention_factor is not None and not (math.isfinite(self.attention_factor)
                                                      and self.attention_factor > 0):
            raise ValueError(f"rope field 'attention_factor' = {self.attention_factor} must be a finite number > 0")
        kind = rope_type(self.rope_type)
        if kind.requires_factor:
            if self.factor is None:
                raise ValueError(f"rope_type {self.rope_type!r} requires the field 'factor' (the scale s, e.g. 4.0)")
            if not (math.isfinite(self.factor) and self.factor >= 1.0):
                raise ValueError(f"rope field 'factor' = {self.factor} must be a finite number >= 1")
        if kind.requires_original and self.original_max_position_embeddings is None:
            raise ValueError(f"rope_type {self.rope_type!r} requires 'original_max_position_embeddings' "
                             f"(the pre-training context length)")
        if self.n_hat and "n_hat" not in kind.hf_keys:
            raise ValueError("rope field 'n_hat' is only meaningful for rope_type 'longrope'; set it to 0")
        kind.validate(self)

    # ------------------------------------------------------------------ Hugging Face round trip
    def to_hf(self) -> dict[str, Any]:
        """The `rope_scaling` block of a HF config.json (also valid as transformers>=5 `rope_parameters`).

        Keys beyond HF's (`n_hat`, `critical_dim`) are written only when they differ from HF's behaviour;
        transformers ignores unknown keys, so an exported n_hat > 0 is NOT applied by HF.
        """
        return rope_type(self.rope_type).to_hf(self)

    def to_dict(self) -> dict[str, Any]:
        """Lossless JSON-able form (per-layer factors included); inverse of `RopeSpec.from_dict`."""
        out = dataclasses.asdict(self)
        out.pop("require_monotone")
        for key in ("short_factor", "long_factor"):
            if out[key] is not None:
                out[key] = np.asarray(out[key]).tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], require_monotone: bool = True) -> "RopeSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RopeSpec fields {unknown}; known fields are {sorted(known)}")
        return cls(**{**data, "require_monotone": require_monotone})


def _first(mapping: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            return mapping[key]
    return default


def from_hf_config(config: Mapping[str, Any], require_monotone: bool = True) -> RopeSpec:
    """Builds a RopeSpec from a whole HF `config.json` dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters`).

    Reads head_dim (or hidden_size / num_attention_heads), partial_rotary_factor, rope_theta,
    max_position_embeddings and original_max_position_embeddings (top level wins, as in Phi-3).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"from_hf_config takes the config.json dict, got {type(config).__name__}")
    block = dict(_first(config, "rope_scaling", "rope_parameters", default={}) or {})
    if block and all(isinstance(v, Mapping) for v in block.values()):
        raise ValueError("per-layer-type rope_parameters (nested by layer type) are not supported; "
                         "give one rope_scaling block shared by all layers")
    head_dim = _first(config, "head_dim")
    if head_dim is None:
        if "hidden_size" not in config or "num_attention_heads" not in config:
            raise ValueError("config needs 'head_dim' or both 'hidden_size' and 'num_attention_heads'")
        head_dim = config["hidden_size"] // config["num_attention_heads"]
    if "max_position_embeddings" not in config:
        raise ValueError("config needs 'max_position_embeddings' (the context length the model is configured for)")
    hf_name = str(_first(block, "rope_type", "type", default="default"))
    if hf_name == "yarn" and "short_factor" in block:  # Phi-3's legacy spelling of longrope
        hf_name = "longrope"
    kind = hf_rope_type(hf_name)
    if kind is None:
        readable = sorted(n for k in registered_types().values() for n in k.hf_names)
        raise ValueError(f"unknown rope type {hf_name!r} in rope_scaling; supported: {', '.join(readable)}; "
                         f"convert the config or add the type to longrope_jax/rope/types/")
    max_pos = int(config["max_position_embeddings"])
    original = None
    if kind.requires_original:
        # As in HF's standardize_rope_params: a top-level original_max_position_embeddings (Phi-3) wins, and the
        # configured length is the default.
        original = _first(config, "original_max_position_embeddings",
                          default=_first(block, "original_max_position_embeddings", default=max_pos))
    if block.get("n_hat") and "n_hat" not in kind.hf_keys:
        raise ValueError("'n_hat' in rope_scaling requires rope_type 'longrope'")
    fields: dict[str, Any] = dict(
        rope_type=kind.name,
        head_dim=int(head_dim),
        theta=float(_first(block, "rope_theta", default=_first(config, "rope_theta", default=10000.0))),
        max_position_embeddings=max_pos,
        partial_rotary_factor=float(_first(block, "partial_rotary_factor",
                                           default=_first(config, "partial_rotary_factor", default=1.0))),
        original_max_position_embeddings=None if original is None else int(original),
        require_monotone=require_monotone,
    )
    for key in kind.hf_keys:
        if block.get(key) is not None:
            fields[key] = _HF_VALUE_TYPES.get(key, lambda v: v)(block[key])
    return RopeSpec(**fields)


# rope_scaling values converted to the RopeSpec field's type on the way in.
_HF_VALUE_TYPES = {"factor": float, "attention_factor": float, "truncate": bool, "n_hat": int, "mscale_policy": str}


def longrope_spec(base: RopeSpec, long_factor: Sequence[float], short_factor: Sequence[float] | None = None,
                  max_position_embeddings: int | None = None, **changes: Any) -> RopeSpec:
    """A longrope spec for the same model as `base` (any type): short factors default to all ones."""
    original = base.original_length
    if base.rope_type in ("default", "linear", "dynamic"):
        original = base.max_position_embeddings
    short = [1.0] * base.half_dim if short_factor is None else short_factor
    return RopeSpec(**{
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(RopeSpec)},
        "rope_type": "longrope", "factor": None, "attention_factor": None, "beta_fast": None, "beta_slow": None,
        "mscale": None, "mscale_all_dim": None, "truncate": True, "low_freq_factor": None, "high_freq_factor": None,
        "original_max_position_embeddings": original,
        "max_position_embeddings": max_position_embeddings or base.max_position_embeddings,
        "short_factor": short_factor if short_factor is not None else short, "long_factor": long_factor,
        **changes,
    })
