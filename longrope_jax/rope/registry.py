"""The rope type registry: one `RopeType` subclass per rotary embedding type, in its own file under `rope/types/`.

Modelled on levanter's rotary config registry. A type says which HF names it answers to, which `rope_scaling` keys
it reads and writes, how it validates a spec, its inverse frequencies and attention scale, and (for the closed-form
extension methods) how it is applied at a scale s. Adding a type is one new file in `rope/types/` (found there by
name; nothing else to edit) plus its parity tests.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from longrope_jax.rope.spec import RopeSpec

_TYPES: dict[str, "RopeType"] = {}


class RopeType:
    """How one rope type behaves; subclasses are stateless and registered with `@register_rope_type`.

    Class attributes:
      name: the spec's rope_type.
      hf_names: the `rope_type` spellings of a HF config that mean this type (empty: no HF type of its own).
      hf_keys: `rope_scaling` keys (= RopeSpec fields) the type reads from and writes to a HF config.
      requires_factor: needs `factor` (the scale s).
      requires_original: needs `original_max_position_embeddings` (and writes it to HF).
      classic_method: the name of the closed-form extension method it implements ("pi", "yarn", ...), if any;
        such types are evaluation baselines and search seeds.
      order: display position of the classic method in tables (lower first).
    """

    name: ClassVar[str]
    hf_names: ClassVar[tuple[str, ...]] = ()
    hf_keys: ClassVar[tuple[str, ...]] = ()
    requires_factor: ClassVar[bool] = False
    requires_original: ClassVar[bool] = False
    classic_method: ClassVar[str | None] = None
    order: ClassVar[int] = 100

    def validate(self, spec: "RopeSpec") -> None:
        """Raises ValueError naming the field for a spec this type cannot run (beyond the shared checks)."""

    def inv_freq(self, spec: "RopeSpec", seq_len: int) -> np.ndarray:
        """Unrounded float64 inverse frequencies at `seq_len`: (d/2,), or (n_layers, d/2) for per-layer factors."""
        raise NotImplementedError

    def attention_scale(self, spec: "RopeSpec") -> float:
        """The factor cos and sin are multiplied by (HF's `attention_scaling`)."""
        return 1.0

    def uses_long_factors(self, spec: "RopeSpec", seq_len: int) -> bool:
        """Whether a length-dependent second factor set is in force (LongRoPE's long factors)."""
        return False

    def to_hf(self, spec: "RopeSpec") -> dict[str, Any]:
        """The HF `rope_scaling` block: the shared keys plus this type's `hf_keys` that are set."""
        block: dict[str, Any] = {"rope_type": self.name, "rope_theta": spec.theta}
        if spec.partial_rotary_factor != 1.0:
            block["partial_rotary_factor"] = spec.partial_rotary_factor
        if self.requires_original:
            block["original_max_position_embeddings"] = spec.original_max_position_embeddings
        for key in self.hf_keys:
            if getattr(spec, key) is not None:
                block[key] = getattr(spec, key)
        return block

    def classic_fields(self, scale: float, original: int) -> dict[str, Any]:
        """RopeSpec fields (beyond the model's head_dim/θ) of the classic method at scale s for a model of
        pre-training length `original`: by default this type with factor s at the original length."""
        if not self.classic_method:
            raise ValueError(f"rope type {self.name!r} is not a closed-form extension method")
        return {"rope_type": self.name, "factor": scale, "max_position_embeddings": original}


def register_rope_type(cls: type[RopeType]) -> type[RopeType]:
    """Class decorator: registers one instance of `cls` under `cls.name`."""
    if cls.name in _TYPES:
        raise ValueError(f"rope type {cls.name!r} is registered twice")
    _TYPES[cls.name] = cls()
    return cls


def _load_types() -> None:
    """Imports every module of `longrope_jax.rope.types`, which registers its type."""
    from longrope_jax.rope import types

    for module in pkgutil.iter_modules(types.__path__):
        importlib.import_module(f"{types.__name__}.{module.name}")


def registered_types() -> dict[str, RopeType]:
    if not _TYPES:
        _load_types()
    return _TYPES


def rope_type(name: str) -> RopeType:
    """The registered type called `name`; ValueError listing the known ones otherwise."""
    types = registered_types()
    if name not in types:
        raise ValueError(f"unknown rope_type {name!r}; use one of {', '.join(types)}")
    return types[name]


def hf_rope_type(hf_name: str) -> RopeType | None:
    """The type a HF config's rope_type spelling means, or None when no registered type reads it."""
    for kind in registered_types().values():
        if hf_name in kind.hf_names:
            return kind
    return None


def classic_methods() -> dict[str, RopeType]:
    """Closed-form extension methods ("pi", "ntk", "dynamic", "yarn", ...) and their types, in table order."""
    kinds = sorted((k for k in registered_types().values() if k.classic_method), key=lambda k: k.order)
    return {k.classic_method: k for k in kinds}
