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

# "ntk" (static NTK-aware: θ' = θ·s^(d/(d-2))) has no HF type of its own; it exports as "default" with θ'.
ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")
# Other names of longrope: Phi-3's first 128k release said "su" (and briefly "yarn" with short/long factors), which
# HF still reads; "longrope2" is LongRoPE2's name for the same formula (its factors differ, not the rotation).
ROPE_TYPE_ALIASES = {"su": "longrope", "longrope2": "longrope"}
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


def validate_factors(factors: Any, field: str, half_dim: int, require_monotone: bool = True) -> np.ndarray:
    """Checks a LongRoPE λ vector (or a per-layer (n_layers, d/2) matrix) and returns it as float64.

    Raises ValueError naming `field` when the length is not d/2, a value is NaN/inf or below 1, or (when
    `require_monotone`) λ decreases along the frequency axis.
    """
    array = np.asarray(factors, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] != half_dim:
        raise ValueError(f"rope field '{field}' has shape {array.shape} but the rotary dimension needs {half_dim} "
                         f"factors per vector (rotary_dim/2); regenerate the factors for this model's head_dim")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"rope field '{field}' contains NaN or inf; every factor must be a finite number >= 1")
    if np.any(array < 1.0):
        bad = int(np.argmin(array.reshape(-1) >= 1.0))
        raise ValueError(f"rope field '{field}' has a factor {array.reshape(-1)[bad]:.6g} < 1 at index {bad}; "
                         f"rescale factors divide the frequency and must be >= 1 (1 = unchanged)")
    if require_monotone and np.any(np.diff(array, axis=-1) < 0):
        bad = int(np.argmax((np.diff(array, axis=-1) < 0).reshape(-1)))
        raise ValueError(f"rope field '{field}' is not monotone non-decreasing (first drop after flat index {bad}); "
                         f"LongRoPE needs λ_i <= λ_(i+1): sort it, or pass require_monotone=False if intended")
    return array


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """A rotary embedding plus its context-extension method; everything `frequencies` needs.

    Attributes:
      rope_type: one of ROPE_TYPES.
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
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unknown rope_type {self.rope_type!r}; use one of {', '.join(ROPE_TYPES)} "
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
        needs_factor = self.rope_type in ("linear", "ntk", "dynamic", "yarn", "llama3")
        if needs_factor:
            if self.factor is None:
                raise ValueError(f"rope_type {self.rope_type!r} requires the field 'factor' (the scale s, e.g. 4.0)")
            if not (math.isfinite(self.factor) and self.factor >= 1.0):
                raise ValueError(f"rope field 'factor' = {self.factor} must be a finite number >= 1")
        if self.rope_type in ("yarn", "llama3", "longrope") and self.original_max_position_embeddings is None:
            raise ValueError(f"rope_type {self.rope_type!r} requires 'original_max_position_embeddings' "
                             f"(the pre-training context length)")
        if self.rope_type == "llama3" and (self.low_freq_factor is None or self.high_freq_factor is None
                                           or self.high_freq_factor <= self.low_freq_factor):
            raise ValueError("rope_type 'llama3' requires 'low_freq_factor' < 'high_freq_factor' (Llama-3.1: 1 and 4)")
        if self.rope_type == "longrope":
            for field in ("short_factor", "long_factor"):
                if getattr(self, field) is None:
                    raise ValueError(f"rope_type 'longrope' requires '{field}' ({self.half_dim} numbers >= 1)")
            validate_factors(self.long_factor, "long_factor", self.half_dim, self.require_monotone)
            short = validate_factors(self.short_factor, "short_factor", self.half_dim, self.require_monotone)
            if short.ndim != 1:
                raise ValueError("rope field 'short_factor' must be one vector of d/2 numbers, not per layer")
            if self.critical_dim is not None and not 0 < self.critical_dim < self.half_dim:
                raise ValueError(f"rope field 'critical_dim' = {self.critical_dim} must lie in (0, {self.half_dim})")
        elif self.n_hat:
            raise ValueError("rope field 'n_hat' is only meaningful for rope_type 'longrope'; set it to 0")

    # ------------------------------------------------------------------ Hugging Face round trip
    def to_hf(self) -> dict[str, Any]:
        """The `rope_scaling` block of a HF config.json (also valid as transformers>=5 `rope_parameters`).

        Keys beyond HF's (`n_hat`, `mscale_policy`, `critical_dim`) are written only when they differ from HF's
        behaviour; transformers ignores unknown keys, so an exported n_hat > 0 is NOT applied by HF.
        """
        if self.rope_type == "ntk":
            from longrope_jax.rope.frequencies import ntk_aware_theta
            return self.replace(rope_type="default", factor=None,
                                theta=ntk_aware_theta(self.theta, self.factor, self.rotary_dim)).to_hf()
        block: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.theta}
        if self.partial_rotary_factor != 1.0:
            block["partial_rotary_factor"] = self.partial_rotary_factor
        if self.rope_type in ("linear", "dynamic", "yarn", "llama3"):
            block["factor"] = self.factor
        if self.rope_type in ("yarn", "llama3", "longrope"):
            block["original_max_position_embeddings"] = self.original_max_position_embeddings
        if self.rope_type == "yarn":
            for key in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
                if getattr(self, key) is not None:
                    block[key] = getattr(self, key)
            if not self.truncate:
                block["truncate"] = False
        if self.rope_type == "llama3":
            block["low_freq_factor"] = self.low_freq_factor
            block["high_freq_factor"] = self.high_freq_factor
        if self.rope_type == "longrope":
            if self.per_layer:
                raise ValueError("per-layer long factors cannot be written in HF's longrope format (one vector); "
                                 "average them or keep the spec in longrope-jax's own format (RopeSpec.to_dict)")
            block["short_factor"] = list(self.short_factor)
            block["long_factor"] = list(self.long_factor)
            if self.factor is not None:
                block["factor"] = self.factor
            # Always explicit, so serving stacks that do not implement our mscale policy still use the right scale.
            from longrope_jax.rope.frequencies import attention_scale
            block["attention_factor"] = attention_scale(self)
            if self.n_hat:
                block["n_hat"] = self.n_hat
            if self.critical_dim is not None:
                block["critical_dim"] = self.critical_dim
        return block

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
    rope_type = str(_first(block, "rope_type", "type", default="default"))
    if rope_type == "yarn" and "short_factor" in block:  # Phi-3's legacy spelling of longrope
        rope_type = "longrope"
    rope_type = ROPE_TYPE_ALIASES.get(rope_type, rope_type)
    if rope_type not in ROPE_TYPES or rope_type == "ntk":
        supported = ", ".join(t for t in ROPE_TYPES if t != "ntk")  # static NTK exports as "default" with θ'
        raise ValueError(f"unknown rope type {rope_type!r} in rope_scaling; supported: {supported} "
                         f"(aliases {ROPE_TYPE_ALIASES}); convert the config or add the type to longrope_jax.rope")
    max_pos = int(config["max_position_embeddings"])
    # As in HF's standardize_rope_params, a top-level original_max_position_embeddings (Phi-3) wins.
    original = _first(config, "original_max_position_embeddings",
                      default=_first(block, "original_max_position_embeddings"))
    if rope_type not in ("yarn", "llama3", "longrope"):
        original = None
    if original is None and rope_type in ("yarn", "llama3", "longrope"):
        original = max_pos  # HF's standardize_rope_params default
    fields = dict(
        rope_type=rope_type,
        head_dim=int(head_dim),
        theta=float(_first(block, "rope_theta", default=_first(config, "rope_theta", default=10000.0))),
        max_position_embeddings=max_pos,
        partial_rotary_factor=float(_first(block, "partial_rotary_factor",
                                           default=_first(config, "partial_rotary_factor", default=1.0))),
        original_max_position_embeddings=None if original is None else int(original),
        factor=None if block.get("factor") is None else float(block["factor"]),
        attention_factor=None if block.get("attention_factor") is None else float(block["attention_factor"]),
        beta_fast=block.get("beta_fast"), beta_slow=block.get("beta_slow"),
        mscale=block.get("mscale"), mscale_all_dim=block.get("mscale_all_dim"),
        truncate=bool(block.get("truncate", True)),
        low_freq_factor=block.get("low_freq_factor"), high_freq_factor=block.get("high_freq_factor"),
        short_factor=block.get("short_factor"), long_factor=block.get("long_factor"),
        n_hat=int(block.get("n_hat", 0)),
        mscale_policy=str(block.get("mscale_policy", "su")),
        critical_dim=block.get("critical_dim"),
        require_monotone=require_monotone,
    )
    if rope_type != "longrope" and fields["n_hat"]:
        raise ValueError("'n_hat' in rope_scaling requires rope_type 'longrope'")
    return RopeSpec(**fields)


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
