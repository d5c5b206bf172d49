"""Rotary position embeddings and their context-extension methods (PI, NTK, YaRN, llama3, LongRoPE, LongRoPE2).

Public API (stable, used by external scripts):
  from_hf_config(config) -> RopeSpec
  RopeSpec.to_hf() -> dict
  frequencies(spec, seq_len) -> (inv_freq (d/2,), attention_scale)
  rope_inputs / longrope_inputs -> RopeInputs (runtime arrays), rope_cos_sin, apply_rope

A rope type is one module in `rope/types/` (a `RopeType` subclass with `@register_rope_type`).
"""

from longrope_jax.rope.apply import (RopeInputs, apply_rope, longrope_inputs, rope_cos_sin, rope_inputs,
                                     rotate_half, select_layer)
from longrope_jax.rope.factors import critical_dimension, expand_critical_dim, method_factors
from longrope_jax.rope.frequencies import (attention_scale, default_inv_freq, equivalent_factors, frequencies,
                                           ntk_aware_theta, uses_long_factors, yarn_mscale)
from longrope_jax.rope.registry import RopeType, register_rope_type, rope_type
from longrope_jax.rope.basics import validate_factors
from longrope_jax.rope.spec import ROPE_TYPES, RopeSpec, from_hf_config, longrope_spec

__all__ = [
    "ROPE_TYPES", "RopeInputs", "RopeSpec", "RopeType", "apply_rope", "attention_scale", "critical_dimension",
    "default_inv_freq", "equivalent_factors", "expand_critical_dim", "frequencies", "from_hf_config",
    "longrope_inputs", "longrope_spec", "method_factors", "ntk_aware_theta", "register_rope_type", "rope_type",
    "rope_cos_sin", "rope_inputs", "rotate_half", "select_layer", "uses_long_factors", "validate_factors",
    "yarn_mscale",
]
