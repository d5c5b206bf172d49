"""LongRoPE factor vectors: seeds from PI / NTK / YaRN and LongRoPE2's critical-dimension parameterisation.

Factors λ (length d/2) divide the pre-training inverse frequencies: θ'_i = θ_i / λ_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longrope_jax.rope.frequencies import equivalent_factors
from longrope_jax.rope.registry import classic_methods
from longrope_jax.rope.spec import RopeSpec


def classic_spec(base: RopeSpec, method: str, scale: float, original: int) -> RopeSpec:
    """The spec of a closed-form extension method (a registered type's `classic_method`: "pi", "ntk", "dynamic",
    "yarn", ...) at scale s, for a model with rope spec `base` pre-trained at `original` tokens."""
    methods = classic_methods()
    if method not in methods:
        raise ValueError(f"unknown closed-form method {method!r}; use one of {', '.join(methods)}")
    return RopeSpec(head_dim=base.head_dim, theta=base.theta, partial_rotary_factor=base.partial_rotary_factor,
                    **methods[method].classic_fields(float(scale), int(original)))


def method_factors(base: RopeSpec, method: str, scale: float, seq_len: int | None = None) -> np.ndarray:
    """λ (float64, (d/2,)) of a classic method applied to a model with pre-training spec `base`.

    Args:
      base: the model's own rope spec (usually rope_type "default"); its max_position_embeddings is the original.
      method: a closed-form method ("pi" or "linear", "ntk", "dynamic" at `seq_len`, "yarn").
      scale: extension ratio s = target length / original length.
      seq_len: sequence length for "dynamic" (defaults to s · original).
    """
    original = base.max_position_embeddings
    spec = classic_spec(base, "pi" if method == "linear" else method, scale, original)
    return equivalent_factors(spec, seq_len or int(round(scale * original)))


def method_factors_table(base: RopeSpec, target_length: int, methods: Sequence[str] = ("pi", "ntk", "yarn")
                         ) -> dict[str, np.ndarray]:
    """λ of classic methods at the target length, for seeds and for plots of searched factors against them."""
    scale = max(target_length / base.original_length, 1.0)
    return {m: equivalent_factors(classic_spec(base, m, scale, base.original_length), target_length)
            for m in methods}


def critical_dimension(rotary_dim: int, theta: float, original_length: int) -> int:
    """LongRoPE2's critical dimension: the first pair whose period exceeds the pre-training length, minus one.

    ceil((d/2) · log_theta(L / 2π)) − 1; pairs at and above it never saw a full rotation in pre-training.
    """
    return int(math.ceil((rotary_dim / 2) * math.log(original_length / (2 * math.pi)) / math.log(theta))) - 1


def expand_critical_dim(upper_factors: jax.Array, critical_dim: int) -> jax.Array:
    """Full λ from the factors searched at and above the critical dimension (LongRoPE2).

    Below cd, λ_i = λ_cd^(i/cd), a smooth NTK-like ramp from 1 (i = 0) to λ_cd. Pure jnp (vmappable).

    Args:
      upper_factors: (..., d/2 − cd) factors for pairs cd … d/2 − 1.
      critical_dim: cd, a Python int (it fixes shapes).

    Returns:
      (..., d/2) factors.
    """
    upper_factors = jnp.asarray(upper_factors, jnp.float32)
    lambda_cd = upper_factors[..., :1]
    exponents = jnp.arange(critical_dim, dtype=jnp.float32) / critical_dim
    lower = jnp.power(lambda_cd, exponents)
    return jnp.concatenate([lower, upper_factors], axis=-1)
