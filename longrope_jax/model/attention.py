"""Attention kernels behind one interface: reference, memory-linear blockwise, cuDNN (GPU), splash (TPU).

Masks come from explicit token positions (causal: kv_pos <= q_pos; sliding window: q_pos - kv_pos < window), so
the same kernels serve plain sequences, KV-cache decoding and context-parallel layouts whose tokens are reordered.
Shapes: q (B, Lq, H, D); k, v (B, Lk, KV, D) with H a multiple of KV (GQA); positions int (B, L).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from longrope_jax.model.blocked import (NEG_INF, allowed, backward_tiles, blocked_layout, finish, fold, group_heads,
                                       initial_state, q_unblock, tile_branches)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                        sliding_window: int | None = None, kv_valid: jax.Array | None = None) -> jax.Array:
    """Plain softmax attention with an explicit (Lq × Lk) score matrix; float32 softmax.

    kv_valid: optional bool (B, Lk), False for unused KV-cache slots.
    """
    b, lq, h, d = q.shape
    qg = group_heads(q, k.shape[2])
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    mask = allowed(q_positions, kv_positions, sliding_window)
    if kv_valid is not None:
        mask &= kv_valid[:, None, :]
    scores = jnp.where(mask[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask[:, None, None], probs, 0.0)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, lq, h, d).astype(q.dtype)


# ------------------------------------------------------------------------------------------ blockwise kernel
@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _blocked_attention(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window):
    state = fold(initial_state(qb_all), qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window)
    return finish(state)[0]


def _blocked_attention_fwd(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window):
    out, lse = finish(fold(initial_state(qb_all), qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window))
    # Named so a remat policy can keep them: the backward then needs q, k, v only (cheap to recompute), not a
    # second run of this forward ("save_attention" in transformer._REMAT).
    out, lse = checkpoint_name(out, "attention_out"), checkpoint_name(lse, "attention_lse")
    return out, (qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, out, lse)


def _blocked_attention_bwd(window, residuals, d_out):
    qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, out, lse = residuals
    dq, dk, dv = backward_tiles(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, d_out, out, lse, window)
    return dq.astype(qb_all.dtype), dk.astype(kb_all.dtype), dv.astype(vb_all.dtype), None, None, None


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                        sliding_window: int | None = None, block_q: int = 512, block_kv: int = 512) -> jax.Array:
    """Memory-linear attention: online softmax over KV blocks, no (Lq × Lk) matrix ever exists.

    Per (query block, KV block) a `lax.switch` picks skip (every key in the future or outside the window), full
    (every pair allowed: no mask work) or masked. The index depends only on positions, so under `vmap` over rope
    candidates it stays a switch. Peak extra memory is O(B·H·block_q·block_kv); the backward pass is a
    flash-attention one (custom VJP from the saved log-sum-exp), also memory-linear.
    """
    lq, d = q.shape[1], q.shape[3]
    block_q, block_kv = min(block_q, lq), min(block_kv, k.shape[1])
    q = (q.astype(jnp.float32) * (d ** -0.5)).astype(q.dtype)  # softmax scale folded into q (exact for d = 4^n)
    qb, qpos, kb, vb, kpos = blocked_layout(q, k, v, q_positions, kv_positions, block_q, block_kv)
    out = _blocked_attention(qb, kb, vb, qpos, kpos, tile_branches(qpos, kpos, sliding_window), sliding_window)
    return q_unblock(out, block_q, lq).astype(q.dtype)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, sliding_window: int | None = None,
                    implementation: str | None = "cudnn") -> jax.Array:
    """cuDNN flash attention via `jax.nn.dot_product_attention` (GPU).

    Assumes the standard causal layout (positions = offset + arange, no cache). `implementation="xla"` runs the
    same call on any backend, which is how the CPU tests check its masking and GQA layout.
    """
    window = None if sliding_window is None else (sliding_window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window,
                                        implementation=implementation)


def default_impl(backend: str | None = None) -> str:
    backend = backend or jax.default_backend()
    return {"tpu": "splash", "gpu": "cudnn"}.get(backend, "blockwise")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array, *,
              impl: str = "auto", sliding_window: int | None = None, block_q: int = 512,
              block_kv: int = 512) -> jax.Array:
    """Causal (optionally sliding-window) GQA self-attention; `impl` "auto" picks by backend."""
    impl = default_impl() if impl == "auto" else impl
    if impl == "reference":
        return reference_attention(q, k, v, q_positions, kv_positions, sliding_window)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, q_positions, kv_positions, sliding_window, block_q, block_kv)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, sliding_window)
    if impl == "splash":
        from longrope_jax.model.splash import splash_attention
        return splash_attention(q, k, v, sliding_window=sliding_window, block_q=block_q, block_kv=block_kv)
    raise ValueError(f"unknown attention impl {impl!r}; use auto, reference, blockwise, cudnn or splash")
