"""A low-dimensional monotone family of factor curves: K knots in log λ, linear between them.

z (K + 1 reals) ↦ λ (d/2,): the knot values are log(lower) + (log(upper) − log(lower)) · cumsum(softmax(z))[:K],
so every z gives factors that are monotone non-decreasing and inside [lower, upper] by construction; CMA-ES
moves freely in z and never proposes an illegal curve. `fit_knots` is the inverse on the knots (to start from a
seed such as YaRN).
"""

from __future__ import annotations

import numpy as np


def knot_positions(half_dim: int, knots: int) -> np.ndarray:
    """(K,) pair indices of the knots, spread evenly from the first pair to the last (whole pairs, so a curve's
    knots can be read back exactly)."""
    return np.round(np.linspace(0.0, half_dim - 1.0, int(knots)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z))
    return e / np.sum(e)


def knot_curve(z: np.ndarray, half_dim: int, lower: float, upper: float) -> np.ndarray:
    """(d/2,) monotone factors in [lower, upper] from z (K + 1,), interpolated linearly in log λ."""
    z = np.asarray(z, np.float64)
    lo, hi = np.log(lower), np.log(upper)
    values = lo + (hi - lo) * np.cumsum(_softmax(z))[:-1]
    return np.exp(np.interp(np.arange(half_dim), knot_positions(half_dim, len(z) - 1), values))


def fit_knots(factors: np.ndarray, knots: int, lower: float, upper: float, floor: float = 1e-3) -> np.ndarray:
    """z (K + 1,) whose curve passes through `factors` at the knots (clipped into [lower, upper]); a zero step
    between knots becomes a small one (`floor` of the log range) so that every direction stays open."""
    factors = np.asarray(factors, np.float64)
    lo, hi = np.log(lower), np.log(upper)
    at = np.interp(knot_positions(len(factors), knots), np.arange(len(factors)), np.log(np.clip(factors, lower,
                                                                                               upper)))
    at = np.maximum.accumulate(at)
    steps = np.diff(np.concatenate([[lo], at, [hi]])) / max(hi - lo, 1e-12)
    return np.log(np.maximum(steps, floor))
