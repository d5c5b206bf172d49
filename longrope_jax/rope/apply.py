"""Pure JAX rotary embedding with runtime factors: cos/sin tables and `apply_rope`.

Nothing here is baked into a compiled program: inverse frequencies, LongRoPE factors, n̂ and the attention scale
all travel as arrays in `RopeInputs`, so one `jit` serves every candidate and `jax.vmap` batches them.
Channel layout is HF's `rotate_half`: frequency pair i rotates channels i and i + d/2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from longrope_jax.rope.frequencies import default_inv_freq, frequencies
from longrope_jax.rope.spec import RopeSpec


class RopeInputs(NamedTuple):
    """Runtime rope state (a pytree: vmap over any leaf to batch candidates).

    inv_freq: float32 (d/2,) or per layer (n_layers, d/2) — rescaled inverse frequencies.
    attention_scale: float32 () — multiplies cos and sin (not applied to the first n_hat positions).
    n_hat: int32 () — positions < n_hat use `original_inv_freq` and scale 1 (LongRoPE's un-interpolated start).
    original_inv_freq: float32 (d/2,) — the model's pre-training inverse frequencies.
    """

    inv_freq: jax.Array
    attention_scale: jax.Array
    n_hat: jax.Array
    original_inv_freq: jax.Array


def rope_inputs(spec: RopeSpec, seq_len: int) -> RopeInputs:
    """The RopeInputs in force for a sequence of `seq_len` tokens under `spec` (host-side, then arrays)."""
    inv_freq, scale = frequencies(spec, seq_len)
    return RopeInputs(
        inv_freq=jnp.asarray(inv_freq, jnp.float32),
        attention_scale=jnp.asarray(scale, jnp.float32),
        n_hat=jnp.asarray(spec.n_hat, jnp.int32),
        original_inv_freq=jnp.asarray(default_inv_freq(spec.theta, spec.rotary_dim).astype(np.float32)),
    )


def longrope_inputs(original_inv_freq: jax.Array, factors: jax.Array, attention_scale: jax.Array | float,
                    n_hat: jax.Array | int = 0) -> RopeInputs:
    """RopeInputs from traced LongRoPE factors λ: inv_freq = θ_i / λ_i. Pure, so `jax.vmap` over `factors` works.

    Args:
      original_inv_freq: (d/2,) float32 pre-training inverse frequencies.
      factors: (d/2,) or (n_layers, d/2) λ >= 1.
      attention_scale: () magnitude scale for cos/sin.
      n_hat: () number of un-interpolated start positions.
    """
    original_inv_freq = jnp.asarray(original_inv_freq, jnp.float32)
    factors = jnp.asarray(factors, jnp.float32)
    return RopeInputs(
        inv_freq=original_inv_freq / factors,
        attention_scale=jnp.asarray(attention_scale, jnp.float32),
        n_hat=jnp.asarray(n_hat, jnp.int32),
        original_inv_freq=original_inv_freq,
    )


def select_layer(rope: RopeInputs, layer: int | jax.Array) -> RopeInputs:
    """The RopeInputs of one layer (a no-op for shared (d/2,) factors)."""
    if rope.inv_freq.ndim == 2:
        return rope._replace(inv_freq=rope.inv_freq[layer])
    return rope


def rope_cos_sin(positions: jax.Array, rope: RopeInputs) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables for explicit positions.

    Args:
      positions: integer array (..., L) of absolute token positions.
      rope: RopeInputs with inv_freq of shape (d/2,).

    Returns:
      (cos, sin), each float32 (..., L, d) with channel j and j + d/2 sharing frequency j; scaled by
      attention_scale except at positions < n_hat, which get the original (unscaled, un-interpolated) values.
    """
    positions = jnp.asarray(positions)
    pos = positions.astype(jnp.float32)[..., None]  # fp32 angles, as HF computes them
    angles = pos * rope.inv_freq.astype(jnp.float32)
    original_angles = pos * rope.original_inv_freq.astype(jnp.float32)
    keep_original = (positions < rope.n_hat)[..., None]
    angles = jnp.where(keep_original, original_angles, angles)
    scale = jnp.where(keep_original, jnp.float32(1.0), rope.attention_scale.astype(jnp.float32))
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def rotate_half(x: jax.Array) -> jax.Array:
    """HF's rotate_half: (x1, x2) -> (-x2, x1) over the last axis halves."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the first `rotary_dim` channels of x; the rest (partial rotary) pass through.

    Args:
      x: (B, L, H, head_dim) queries or keys, any float dtype.
      cos, sin: (B, L, rotary_dim) or (L, rotary_dim) float32 tables from `rope_cos_sin`.

    Returns:
      Array like x (same dtype); the rotation itself is computed in float32.
    """
    rotary_dim = cos.shape[-1]
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    x32 = x.astype(jnp.float32)
    x_rot, x_pass = x32[..., :rotary_dim], x32[..., rotary_dim:]
    rotated = x_rot * cos + rotate_half(x_rot) * sin
    return jnp.concatenate([rotated, x_pass], axis=-1).astype(x.dtype)
