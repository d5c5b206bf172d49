"""Attention kernels behind one interface: reference, memory-linear blockwise, cuDNN (GPU), splash (TPU).

Masks come from explicit token positions (causal: kv_pos <= q_pos; sliding window: q_pos - kv_pos < window), so
the same kernels serve plain sequences, KV-cache decoding and context-parallel layouts whose tokens are reordered.
Shapes: q (B, Lq, H, D); k, v (B, Lk, KV, D) with H a multiple of KV (GQA); positions int (B, L).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite, so fully masked rows give zeros instead of NaN


def _allowed(q_pos: jax.Array, kv_pos: jax.Array, sliding_window: int | None) -> jax.Array:
    """(B, Lq, Lk) boolean mask from positions."""
    q_pos, kv_pos = q_pos[:, :, None], kv_pos[:, None, :]
    allowed = kv_pos <= q_pos
    if sliding_window is not None:
        allowed &= (q_pos - kv_pos) < sliding_window
    return allowed


def _group(q: jax.Array, num_kv_heads: int) -> jax.Array:
    b, l, h, d = q.shape
    return q.reshape(b, l, num_kv_heads, h // num_kv_heads, d)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                        sliding_window: int | None = None, kv_valid: jax.Array | None = None) -> jax.Array:
    """Plain softmax attention with an explicit (Lq × Lk) score matrix; float32 softmax.

    kv_valid: optional bool (B, Lk), False for unused KV-cache slots.
    """
    b, lq, h, d = q.shape
    qg = _group(q, k.shape[2])
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    mask = _allowed(q_positions, kv_positions, sliding_window)
    if kv_valid is not None:
        mask &= kv_valid[:, None, :]
    scores = jnp.where(mask[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask[:, None, None], probs, 0.0)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, lq, h, d).astype(q.dtype)


def _pad_to(x: jax.Array, axis: int, multiple: int, value) -> jax.Array:
    pad = (-x.shape[axis]) % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                        sliding_window: int | None = None, block_q: int = 512, block_kv: int = 512) -> jax.Array:
    """Memory-linear attention: online softmax over KV blocks, no (Lq × Lk) matrix ever exists.

    KV blocks entirely in the future of a query block (or entirely outside its sliding window) are skipped with
    `lax.cond`; the predicate depends only on positions, so under `vmap` over rope candidates it stays a cond.
    Peak extra memory is O(B·H·block_q·block_kv).
    """
    b, lq, h, d = q.shape
    lk, num_kv = k.shape[1], k.shape[2]
    block_q, block_kv = min(block_q, lq), min(block_kv, lk)
    big = jnp.iinfo(jnp.int32).max // 2
    # Padded queries get position -big (attend nowhere, dropped at the end); padded keys +big (never attended).
    qp = _pad_to(q_positions.astype(jnp.int32), 1, block_q, -big)
    kp = _pad_to(kv_positions.astype(jnp.int32), 1, block_kv, big)
    qg = _pad_to(_group(q, num_kv), 1, block_q, 0)
    k, v = _pad_to(k, 1, block_kv, 0), _pad_to(v, 1, block_kv, 0)
    nq, nk = qg.shape[1] // block_q, k.shape[1] // block_kv
    group = h // num_kv
    scale = d ** -0.5

    def blocks(x, n, size):  # (B, n·size, ...) -> (n, B, size, ...)
        return jnp.moveaxis(x.reshape(x.shape[0], n, size, *x.shape[2:]), 1, 0)

    # Heads-major layouts, so every block product is a plain batched matmul over (B, KV):
    # queries (nq, B, KV, G·bq, D), keys/values (nk, B, KV, bk, D).
    q_blocks = jnp.transpose(blocks(qg, nq, block_q), (0, 1, 3, 4, 2, 5)).reshape(nq, b, num_kv, group * block_q, d)
    qp_blocks = blocks(qp, nq, block_q)
    kv_blocks = (jnp.swapaxes(blocks(k, nk, block_kv), 2, 3), jnp.swapaxes(blocks(v, nk, block_kv), 2, 3),
                 blocks(kp, nk, block_kv))

    def one_query_block(args):
        qb, qpos = args  # (B, KV, G·bq, D), (B, bq)
        q_max = jnp.max(qpos)
        q_min = jnp.min(jnp.where(qpos > -big, qpos, big))
        qpos_rows = jnp.tile(qpos, (1, group))  # row r of G·bq is query r % bq

        @jax.checkpoint  # backward recomputes scores per block instead of storing them
        def update(carry, kb, vb, kpos):
            m, l, acc = carry
            s = jnp.einsum("bkqd,bksd->bkqs", qb, kb, preferred_element_type=jnp.float32) * scale
            mask = _allowed(qpos_rows, kpos, sliding_window)[:, None]
            s = jnp.where(mask, s, NEG_INF)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            correction = jnp.exp(m - m_new)
            l = l * correction + jnp.sum(p, axis=-1)
            pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
            return m_new, l, acc * correction[..., None] + pv

        def step(carry, kv):
            kb, vb, kpos = kv
            skip = jnp.min(kpos) > q_max
            if sliding_window is not None:
                skip |= jnp.max(kpos) <= q_min - sliding_window
            carry = jax.lax.cond(skip, lambda c: c, lambda c: update(c, kb, vb, kpos), carry)
            return carry, None

        rows = group * block_q
        init = (jnp.full((b, num_kv, rows), NEG_INF, jnp.float32), jnp.zeros((b, num_kv, rows), jnp.float32),
                jnp.zeros((b, num_kv, rows, d), jnp.float32))
        (_, l, acc), _ = jax.lax.scan(step, init, kv_blocks)
        out = acc / jnp.where(l == 0, 1.0, l)[..., None]  # (B, KV, G·bq, D)
        return jnp.transpose(out.reshape(b, num_kv, group, block_q, d), (0, 3, 1, 2, 4))  # (B, bq, KV, G, D)

    out = jax.lax.map(one_query_block, (q_blocks, qp_blocks))  # (nq, B, bq, KV, G, D)
    out = jnp.moveaxis(out, 0, 1).reshape(b, nq * block_q, h, d)[:, :lq]
    return out.astype(q.dtype)


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
