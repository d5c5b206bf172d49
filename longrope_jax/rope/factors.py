"""LongRoPE factor vectors: seeds from PI / NTK / YaRN and LongRoPE2's critical-dimension parameterisation.

Factors λ (length d/2) divide the pre-training inverse frequencies: θ'_i = θ_i / λ_i.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from longrope_jax.rope.frequencies import equivalent_factors
from longrope_jax.rope.spec import RopeSpec


def method_factors(base: RopeSpec, method: str, scale: float, seq_len: int | None = None) -> np.ndarray:
    """λ (float64, (d/2,)) of a classic method applied to a model with pre-training spec `base`.

    Args:
      base: the model's own rope spec (usually rope_type "default").
      method: "pi" (linear), "ntk" (static NTK-aware), "dynamic" (dynamic NTK at `seq_len`) or "yarn".
      scale: extension ratio s = target length / original length.
      seq_len: sequence length for "dynamic" (defaults to s · original).
    """
    original = base.max_position_embeddings
    common = dict(head_dim=base.head_dim, theta=base.theta, partial_rotary_factor=base.partial_rotary_factor,
                  max_position_embeddings=original, factor=float(scale))
    types = {"pi": "linear", "linear": "linear", "ntk": "ntk", "dynamic": "dynamic", "yarn": "yarn"}
    if method not in types:
        raise ValueError(f"unknown seed method {method!r}; use one of {sorted(types)}")
    extra = {"original_max_position_embeddings": original} if method == "yarn" else {}
    spec = RopeSpec(rope_type=types[method], **common, **extra)
    return equivalent_factors(spec, seq_len or int(round(scale * original)))


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
