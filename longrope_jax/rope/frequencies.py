"""Inverse frequencies and attention (magnitude) scale of every rope type, HF-exact, on the host.

Everything here is numpy: frequencies depend only on the spec and (for dynamic NTK and LongRoPE's short/long
switch) on the sequence length, both known before a program is compiled. The results become runtime arrays
(`longrope_jax.rope.apply.RopeInputs`), so one compiled model serves every spec and every candidate.

Arithmetic follows transformers' `modeling_rope_utils`: the exponent 2i/d is rounded to float32 exactly as
`torch.arange(0, d, 2).float() / d` is, the rest runs in float64 and is rounded to float32 once at the end.
"""

from __future__ import annotations

import math

import numpy as np

from longrope_jax.rope.spec import RopeSpec


def rotary_exponents(rotary_dim: int) -> np.ndarray:
    """(d/2,) exponents 2i/d, rounded to float32 the way HF computes them, returned as float64."""
    return (np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)).astype(np.float64)


def default_inv_freq(theta: float, rotary_dim: int) -> np.ndarray:
    """θ_i = theta^(-2i/d), float64, shape (d/2,)."""
    return 1.0 / (float(theta) ** rotary_exponents(rotary_dim))


def ntk_aware_theta(theta: float, scale: float, rotary_dim: int) -> float:
    """Static NTK-aware base: theta · s^(d/(d-2))."""
    return float(theta) * float(scale) ** (rotary_dim / (rotary_dim - 2))


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude scale 0.1·mscale·ln s + 1 (1 when s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def attention_scale(spec: RopeSpec) -> float:
    """The factor cos and sin are multiplied by (HF's `attention_scaling`)."""
    if spec.rope_type == "yarn":
        if spec.attention_factor is not None:
            return float(spec.attention_factor)
        if spec.mscale and spec.mscale_all_dim:
            return float(yarn_mscale(spec.factor, spec.mscale) / yarn_mscale(spec.factor, spec.mscale_all_dim))
        return yarn_mscale(spec.factor)
    if spec.rope_type == "longrope":
        if spec.attention_factor is not None:
            return float(spec.attention_factor)
        scale = spec.scale
        if scale <= 1.0:
            return 1.0
        if spec.mscale_policy == "yarn":
            return yarn_mscale(scale)
        return math.sqrt(1 + math.log(scale) / math.log(spec.original_max_position_embeddings))
    return 1.0


def _yarn_inv_freq(spec: RopeSpec) -> np.ndarray:
    dim, base, factor = spec.rotary_dim, spec.theta, spec.factor
    beta_fast = spec.beta_fast or 32
    beta_slow = spec.beta_slow or 1
    original = spec.original_max_position_embeddings

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF: prevent a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation_weight = 1.0 - ramp
    pos_freqs = base ** rotary_exponents(dim)
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight


def _llama3_inv_freq(spec: RopeSpec) -> np.ndarray:
    inv_freq = default_inv_freq(spec.theta, spec.rotary_dim)
    old_context = spec.original_max_position_embeddings
    low_wavelen = old_context / spec.low_freq_factor
    high_wavelen = old_context / spec.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / spec.factor, inv_freq)
    smooth = (old_context / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
    smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, scaled)


def uses_long_factors(spec: RopeSpec, seq_len: int) -> bool:
    """Phi-3 rule: long factors iff seq_len > original_max_position_embeddings."""
    return spec.rope_type == "longrope" and seq_len > spec.original_max_position_embeddings


def longrope_factors(spec: RopeSpec, seq_len: int) -> np.ndarray:
    """The λ in force at `seq_len`: long_factor iff seq_len > original, else short_factor."""
    chosen = spec.long_factor if uses_long_factors(spec, seq_len) else spec.short_factor
    # HF builds the factor tensor in float32; round the same way.
    return np.asarray(chosen, dtype=np.float32).astype(np.float64)


def inv_freq_float64(spec: RopeSpec, seq_len: int) -> np.ndarray:
    """Unrounded inverse frequencies; (d/2,), or (n_layers, d/2) for per-layer LongRoPE factors."""
    dim = spec.rotary_dim
    if spec.rope_type == "default":
        return default_inv_freq(spec.theta, dim)
    if spec.rope_type == "linear":
        return default_inv_freq(spec.theta, dim) / spec.factor
    if spec.rope_type == "ntk":
        return default_inv_freq(ntk_aware_theta(spec.theta, spec.factor, dim), dim)
    if spec.rope_type == "dynamic":
        max_pos = spec.max_position_embeddings
        length = max(int(seq_len), max_pos)
        base = spec.theta * ((spec.factor * length / max_pos) - (spec.factor - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim)
    if spec.rope_type == "yarn":
        return _yarn_inv_freq(spec)
    if spec.rope_type == "llama3":
        return _llama3_inv_freq(spec)
    if spec.rope_type == "longrope":
        return 1.0 / (longrope_factors(spec, seq_len) * spec.theta ** rotary_exponents(dim))
    raise ValueError(f"unknown rope_type {spec.rope_type!r}")


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
