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


# 2**f on [-1/2, 1/2], degree 5, Horner order (max relative error 2.2e-7 in float32).
_EXP2_POLY = (1.3266974e-3, 9.6754599e-3, 5.5507425e-2, 2.4022122e-1, 6.9314694e-1, 1.0000001)


@jax.custom_jvp
def _exp(x: jax.Array) -> jax.Array:
    """exp(x) for float32 x <= 0 (softmax numerators), ~2 ulp; exp(x < -87) gives 2**-126 (~1e-38), not 0.

    XLA's CPU exp spends ~22 vector ops per element on range clamps and a Cody-Waite reduction; here it is
    2**(x·log2 e) = 2**n · poly(f) with n = round(x·log2 e), f in [-1/2, 1/2]: ~12 ops, no table, still vectorised.
    """
    t = jnp.maximum(x * 1.4426950408889634, -126.0)
    n = jnp.floor(t + 0.5)
    f = t - n
    p = _EXP2_POLY[0]
    for c in _EXP2_POLY[1:]:
        p = p * f + c
    return p * jax.lax.bitcast_convert_type((n.astype(jnp.int32) + 127) << 23, jnp.float32)


@_exp.defjvp
def _exp_jvp(primals, tangents):
    y = _exp(primals[0])
    return y, y * tangents[0]


def _online_update(carry, qb, kb, vb, mask):
    """One online-softmax step; qb is pre-scaled. mask None: every (query, key) pair of the tile is allowed."""
    m, l, acc = carry
    s = jnp.einsum("bkqd,bksd->bkqs", qb, kb, preferred_element_type=jnp.float32)
    if mask is not None:
        s = jnp.where(mask, s, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    # m starts at NEG_INF / 2 > NEG_INF, so a masked score gives _exp(<= -5e29) ~ 1e-38, nothing next to the row
    # max's exp(0) = 1: no select on p. A row with no allowed key yet keeps m = NEG_INF / 2 and l ~ 0.
    p = _exp(s - m_new[..., None])
    correction = _exp(m - m_new)
    l = l * correction + jnp.sum(p, axis=-1)
    pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
    return m_new, l, acc * correction[..., None] + pv


def _branch(index, skip, full, masked, *operands):
    """`lax.switch` over the per-(query block, KV block) case: 0 skip, 1 full (no mask work), 2 masked."""
    return jax.lax.switch(index, (skip, full, masked), *operands)


def _blocked_forward(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window):
    """Online softmax over KV blocks for every query block: (out (nq, B, KV, R, D) float32, lse (nq, B, KV, R)).

    Rows R = G·bq; qpos_all (nq, B, R) holds each row's position. A row with no allowed key gets out 0 and
    lse +1e30 (so the backward's exp(s - lse) is ~1e-38 for it, and its dO is 0 anyway: padded rows are dropped).
    """
    # Positions (hence masks and branch choices) are usually constants of an enclosing layer `lax.scan`; its
    # reverse-mode partial evaluation hoists everything computed from constants out of the loop, which here would
    # materialise every tile's mask and masked-score fill: O(L²) memory. Tying them to q keeps them in the loop.
    qb_all, qpos_all, kpos_all, branches = jax.lax.optimization_barrier((qb_all, qpos_all, kpos_all, branches))

    def one_query_block(args):
        qb, qpos, branch_row = args

        def update(masked):
            def fn(carry, kb, vb, kpos):
                mask = _allowed(qpos, kpos, window)[:, None] if masked else None
                return _online_update(carry, qb, kb, vb, mask)
            return fn

        def step(carry, xs):
            *kv, branch = xs
            return _branch(branch, lambda c, *_: c, update(False), update(True), carry, *kv), None

        rows = qb.shape[:-1]
        init = (jnp.full(rows, NEG_INF / 2, jnp.float32), jnp.zeros(rows, jnp.float32),
                jnp.zeros(qb.shape, jnp.float32))
        (m, l, acc), _ = jax.lax.scan(step, init, (kb_all, vb_all, kpos_all, branch_row))
        # A row that saw no allowed key has l ~ 0 (every p underflowed); one that did has l >= 1.
        seen = l >= 0.5
        out = jnp.where(seen[..., None], acc / jnp.maximum(l, 0.5)[..., None], 0.0)
        return out, jnp.where(seen, m + jnp.log(jnp.maximum(l, 0.5)), -NEG_INF)

    return jax.lax.map(one_query_block, (qb_all, qpos_all, branches))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _blocked_attention(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window):
    return _blocked_forward(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window)[0]


def _blocked_attention_fwd(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window):
    out, lse = _blocked_forward(qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, window)
    # Named so a remat policy can keep them: the backward then needs q, k, v only (cheap to recompute), not a
    # second run of this forward ("save_attention" in transformer._REMAT).
    out, lse = checkpoint_name(out, "attention_out"), checkpoint_name(lse, "attention_lse")
    return out, (qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, out, lse)


_BACKWARD_ROWS = 384  # query rows per backward tile: (rows × block_kv) float32 tiles that stay in cache on CPU


def _split_rows(x: jax.Array, parts: int) -> jax.Array:
    """(nq, B, KV, R, ...) -> (nq·parts, B, KV, R/parts, ...): each query block's rows cut into `parts` tiles."""
    nq, b, kv, rows = x.shape[:4]
    x = x.reshape(nq, b, kv, parts, rows // parts, *x.shape[4:])
    return jnp.moveaxis(x, 3, 1).reshape(nq * parts, b, kv, rows // parts, *x.shape[5:])


def _blocked_attention_bwd(window, residuals, d_out):
    """Flash-attention backward: probabilities recomputed per tile from the saved log-sum-exp.

    Differentiating the online softmax instead would recompute every tile's forward (max, rescales) and carry
    gradients through them; here each tile costs one exp and four matmuls. Tiles are keys-major (bk × rows), so
    three of the four products are plain matmuls (a contraction over the leading axis of both operands costs XLA
    CPU a transpose), and rows are cut to ~`_BACKWARD_ROWS` so a tile's working set stays in cache: together
    ~30% faster than the query-major 1536 × 512 tiles of the forward. dK/dV accumulate over query tiles.
    """
    qb_all, kb_all, vb_all, qpos_all, kpos_all, branches, out, lse = residuals
    nq, rows = qb_all.shape[0], qb_all.shape[3]
    parts = max((n for n in range(1, rows + 1) if rows % n == 0 and rows // n >= _BACKWARD_ROWS), default=1)
    delta = jnp.sum(d_out * out, axis=-1)  # (nq, B, KV, R): rowsum(dO ⊙ O)
    tiles = (_split_rows(qb_all, parts), _split_rows(qpos_all[:, :, None], parts)[:, :, 0],
             jnp.repeat(branches, parts, axis=0), _split_rows(d_out.astype(vb_all.dtype), parts),
             _split_rows(lse, parts), _split_rows(delta, parts))

    def one_query_tile(dkv, xs):
        qb, qpos, branch_row, dob, lse_b, delta_b = xs

        def grads(masked):
            def fn(dq, kb, vb, kpos):  # tiles (B, KV, bk, rows)
                s = jnp.einsum("bksd,bkqd->bksq", kb, qb, preferred_element_type=jnp.float32)
                p = _exp(s - lse_b[..., None, :])
                if masked:
                    p = jnp.where(jnp.swapaxes(_allowed(qpos, kpos, window), 1, 2)[:, None], p, 0.0)
                dp = jnp.einsum("bksd,bkqd->bksq", vb, dob, preferred_element_type=jnp.float32)
                ds = (p * (dp - delta_b[..., None, :])).astype(qb.dtype)
                dq = dq + jnp.einsum("bksq,bksd->bkqd", ds, kb, preferred_element_type=jnp.float32)
                dk = jnp.einsum("bksq,bkqd->bksd", ds, qb, preferred_element_type=jnp.float32)
                dv = jnp.einsum("bksq,bkqd->bksd", p.astype(dob.dtype), dob, preferred_element_type=jnp.float32)
                return dq, (dk, dv)
            return fn

        def skip(dq, kb, vb, kpos):
            zeros = jnp.zeros(kb.shape, jnp.float32)
            return dq, (zeros, zeros)

        def step(dq, xs):
            *kv, branch = xs
            return _branch(branch, skip, grads(False), grads(True), dq, *kv)

        dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(qb.shape, jnp.float32), (kb_all, vb_all, kpos_all, branch_row))
        return (dkv[0] + dk, dkv[1] + dv), dq

    zeros = jnp.zeros(kb_all.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(one_query_tile, (zeros, zeros), tiles)
    dq = jnp.moveaxis(dq.reshape(nq, parts, *dq.shape[1:]), 1, 3).reshape(qb_all.shape)  # undo _split_rows
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
    b, lq, h, d = q.shape
    lk, num_kv = k.shape[1], k.shape[2]
    block_q, block_kv = min(block_q, lq), min(block_kv, lk)
    big = jnp.iinfo(jnp.int32).max // 2
    # Padded queries get position -big (attend nowhere, dropped at the end); padded keys +big (never attended).
    qp = _pad_to(q_positions.astype(jnp.int32), 1, block_q, -big)
    kp = _pad_to(kv_positions.astype(jnp.int32), 1, block_kv, big)
    q = (q.astype(jnp.float32) * (d ** -0.5)).astype(q.dtype)  # softmax scale folded into q (exact for d = 4^n)
    qg = _pad_to(_group(q, num_kv), 1, block_q, 0)
    k, v = _pad_to(k, 1, block_kv, 0), _pad_to(v, 1, block_kv, 0)
    nq, nk = qg.shape[1] // block_q, k.shape[1] // block_kv
    group = h // num_kv

    def blocks(x, n, size):  # (B, n·size, ...) -> (n, B, size, ...)
        return jnp.moveaxis(x.reshape(x.shape[0], n, size, *x.shape[2:]), 1, 0)

    # Heads-major layouts, so every block product is a plain batched matmul over (B, KV):
    # queries (nq, B, KV, G·bq, D), keys/values (nk, B, KV, bk, D).
    q_blocks = jnp.transpose(blocks(qg, nq, block_q), (0, 1, 3, 4, 2, 5)).reshape(nq, b, num_kv, group * block_q, d)
    qp_blocks = blocks(qp, nq, block_q)
    kv_blocks = (jnp.swapaxes(blocks(k, nk, block_kv), 2, 3), jnp.swapaxes(blocks(v, nk, block_kv), 2, 3),
                 blocks(kp, nk, block_kv))

    # Branch per (query block, KV block), from positions only: 0 skip, 1 full (no mask work), 2 masked.
    k_min, k_max = jnp.min(kv_blocks[2], axis=(1, 2)), jnp.max(kv_blocks[2], axis=(1, 2))  # (nk,)
    q_max = jnp.max(qp_blocks, axis=(1, 2))[:, None]  # (nq, 1)
    q_min = jnp.min(jnp.where(qp_blocks > -big, qp_blocks, big), axis=(1, 2))[:, None]
    skip, full = k_min > q_max, k_max <= q_min
    if sliding_window is not None:
        skip |= k_max <= q_min - sliding_window
        full &= q_max - k_min < sliding_window
    branches = jnp.where(skip, 0, jnp.where(full, 1, 2)).astype(jnp.int32)  # (nq, nk)

    qpos_rows = jnp.tile(qp_blocks, (1, 1, group))  # row r of G·bq is query r % bq
    k_blocks, v_blocks, kpos_blocks = kv_blocks
    out = _blocked_attention(q_blocks, k_blocks, v_blocks, qpos_rows, kpos_blocks, branches, sliding_window)
    out = jnp.transpose(out.reshape(nq, b, num_kv, group, block_q, d), (1, 0, 4, 2, 3, 5))  # (B, nq, bq, KV, G, D)
    return out.reshape(b, nq * block_q, h, d)[:, :lq].astype(q.dtype)


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
