"""Shared RoPE arithmetic: the pre-training frequencies and the closed-form helpers several rope types use.

Follows transformers' `modeling_rope_utils`: the exponent 2i/d is rounded to float32 exactly as
`torch.arange(0, d, 2).float() / d` is; the rest runs in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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
