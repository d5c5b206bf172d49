"""Inverse frequencies and attention (magnitude) scale of every rope type, HF-exact, on the host.

Everything here is numpy: frequencies depend only on the spec and (for dynamic NTK and LongRoPE's short/long
switch) on the sequence length, both known before a program is compiled. The results become runtime arrays
(`longrope_jax.rope.apply.RopeInputs`), so one compiled model serves every spec and every candidate. Each type's
formula lives in its own module under `rope/types/`; the rest runs in float64 and is rounded to float32 once.
"""

from __future__ import annotations

import numpy as np

from longrope_jax.rope.basics import default_inv_freq, ntk_aware_theta, rotary_exponents, yarn_mscale
from longrope_jax.rope.registry import rope_type
from longrope_jax.rope.spec import RopeSpec

__all__ = ["attention_scale", "default_inv_freq", "equivalent_factors", "frequencies", "inv_freq_float64",
           "longrope_factors", "ntk_aware_theta", "rotary_exponents", "uses_long_factors", "yarn_mscale"]


def attention_scale(spec: RopeSpec) -> float:
    """The factor cos and sin are multiplied by (HF's `attention_scaling`)."""
    return rope_type(spec.rope_type).attention_scale(spec)


def uses_long_factors(spec: RopeSpec, seq_len: int) -> bool:
    """Phi-3 rule: long factors iff seq_len > original_max_position_embeddings (longrope only)."""
    return rope_type(spec.rope_type).uses_long_factors(spec, seq_len)


def longrope_factors(spec: RopeSpec, seq_len: int) -> np.ndarray:
    """The λ in force at `seq_len`: long_factor iff seq_len > original, else short_factor."""
    return rope_type("longrope").factors(spec, seq_len)


def inv_freq_float64(spec: RopeSpec, seq_len: int) -> np.ndarray:
    """Unrounded inverse frequencies; (d/2,), or (n_layers, d/2) for per-layer LongRoPE factors."""
    return rope_type(spec.rope_type).inv_freq(spec, seq_len)


def frequencies(spec: RopeSpec, seq_len: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies and attention scale in force for a sequence of `seq_len` tokens.

    Returns:
      inv_freq: float32, shape (rotary_dim/2,) — or (n_layers, rotary_dim/2) for per-layer LongRoPE factors.
      attention_scale: the float cos/sin are multiplied by (LongRoPE: the same for short and long factors).
    """
    if int(seq_len) <= 0:
        raise ValueError(f"seq_len must be a positive token count, got {seq_len}")
    return inv_freq_float64(spec, int(seq_len)).astype(np.float32), attention_scale(spec)


def equivalent_factors(spec: RopeSpec, seq_len: int) -> np.ndarray:
    """Any method expressed as LongRoPE λ (original θ_i / new θ_i), float64 (d/2,): PI → all s, NTK, YaRN, ….

    Used to seed the search with PI/NTK/YaRN and to plot searched factors against them.
    """
    return default_inv_freq(spec.theta, spec.rotary_dim) / inv_freq_float64(spec, seq_len)
