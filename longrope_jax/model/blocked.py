"""The blocked online-softmax core shared by `blockwise_attention` and `ring_attention`: heads-major block layout,
per-tile skip / full / masked branches from positions, the forward fold and the flash-attention backward.

Shapes: q (B, Lq, H, D); k, v (B, Lk, KV, D), H a multiple of KV; positions int (B, L). Blocked: queries
(nq, B, KV, R = G·bq, D) with row positions (nq, B, R); keys/values (nk, B, KV, bk, D) with positions (nk, B, bk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite, so fully masked rows give zeros instead of NaN


def allowed(q_pos: jax.Array, kv_pos: jax.Array, sliding_window: int | None) -> jax.Array:
    """(B, Lq, Lk) boolean mask from positions."""
    q_pos, kv_pos = q_pos[:, :, None], kv_pos[:, None, :]
    allowed = kv_pos <= q_pos
    if sliding_window is not None:
        allowed &= (q_pos - kv_pos) < sliding_window
    return allowed


def group_heads(q: jax.Array, num_kv_heads: int) -> jax.Array:
    b, l, h, d = q.shape
    return q.reshape(b, l, num_kv_heads, h // num_kv_heads, d)


def pad_to(x: jax.Array, axis: int, multiple: int, value) -> jax.Array:
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


# ------------------------------------------------------------------------------------ blocked layout (shared)
_BIG = jnp.iinfo(jnp.int32).max // 2  # padded queries sit at -_BIG (attend nowhere), padded keys at +_BIG


def _split(x: jax.Array, size: int) -> jax.Array:
    """(B, n·size, ...) -> (n, B, size, ...)."""
    return jnp.moveaxis(x.reshape(x.shape[0], x.shape[1] // size, size, *x.shape[2:]), 1, 0)


def q_layout(q: jax.Array, q_positions: jax.Array, num_kv: int, block_q: int) -> tuple[jax.Array, jax.Array]:
    """(B, Lq, H, D) -> queries (nq, B, KV, G·bq, D) and their row positions (nq, B, G·bq), row r of G·bq being
    query r % bq; padded to whole blocks, padded queries at position -_BIG (they attend nowhere)."""
    qg = _split(pad_to(group_heads(q, num_kv), 1, block_q, 0), block_q)  # (nq, B, bq, KV, G, D)
    nq, b, bq, kv, group, d = qg.shape
    qb = jnp.transpose(qg, (0, 1, 3, 4, 2, 5)).reshape(nq, b, kv, group * bq, d)
    qpos = jnp.tile(_split(pad_to(q_positions.astype(jnp.int32), 1, block_q, -_BIG), block_q), (1, 1, group))
    return qb, qpos


def blocked_layout(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                   block_q: int, block_kv: int) -> tuple[jax.Array, ...]:
    """Heads-major blocks, so every tile product is a plain batched matmul over (B, KV): (qb, qpos) from
    `q_layout`, keys/values (nk, B, KV, bk, D) and key positions (nk, B, bk), padded keys at +_BIG."""
    qb, qpos = q_layout(q, q_positions, k.shape[2], block_q)
    kb, vb = (jnp.swapaxes(_split(pad_to(x, 1, block_kv, 0), block_kv), 2, 3) for x in (k, v))
    kpos = _split(pad_to(kv_positions.astype(jnp.int32), 1, block_kv, _BIG), block_kv)
    return qb, qpos, kb, vb, kpos


def q_unblock(x: jax.Array, block_q: int, length: int) -> jax.Array:
    """Inverse of the query blocking: (nq, B, KV, G·bq, D) -> (B, length, H, D)."""
    n, b, kv, rows, d = x.shape
    x = jnp.transpose(x.reshape(n, b, kv, rows // block_q, block_q, d), (1, 0, 4, 2, 3, 5))
    return x.reshape(b, n * block_q, kv * (rows // block_q), d)[:, :length]


def kv_unblock(x: jax.Array, length: int) -> jax.Array:
    """(nk, B, KV, bk, D) -> (B, length, KV, D)."""
    n, b, kv, bk, d = x.shape
    return jnp.transpose(x, (1, 0, 3, 2, 4)).reshape(b, n * bk, kv, d)[:, :length]


def tile_branches(qpos: jax.Array, kpos: jax.Array, window: int | None) -> jax.Array:
    """(nq, nk) int32 per tile, from positions only: 0 skip (every key in the future or outside the window),
    1 full (every pair allowed: no mask work), 2 masked. qpos (nq, B, R), kpos (nk, B, bk)."""
    k_min, k_max = jnp.min(kpos, axis=(1, 2)), jnp.max(kpos, axis=(1, 2))  # (nk,)
    q_max = jnp.max(qpos, axis=(1, 2))[:, None]  # (nq, 1)
    q_min = jnp.min(jnp.where(qpos > -_BIG, qpos, _BIG), axis=(1, 2))[:, None]
    skip, full = k_min > q_max, k_max <= q_min
    if window is not None:
        skip |= k_max <= q_min - window
        full &= q_max - k_min < window
    return jnp.where(skip, 0, jnp.where(full, 1, 2)).astype(jnp.int32)


# ------------------------------------------------------------------------------------ blocked kernel (shared)
def initial_state(qb_all: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Online-softmax state (m, l, acc) of every query row before any key."""
    rows = qb_all.shape[:-1]
    return (jnp.full(rows, NEG_INF / 2, jnp.float32), jnp.zeros(rows, jnp.float32),
            jnp.zeros(qb_all.shape, jnp.float32))


def fold(state: tuple, qb_all: jax.Array, kb_all: jax.Array, vb_all: jax.Array, qpos_all: jax.Array,
         kpos_all: jax.Array, branches: jax.Array, window: int | None) -> tuple:
    """Folds K/V blocks into the online-softmax state of every query block (qb_all pre-scaled by 1/√D).

    The blockwise kernel folds all keys once; ring attention folds each K/V shard as it arrives.
    """
    # Positions (hence masks and branch choices) are usually constants of an enclosing layer `lax.scan`; its
    # reverse-mode partial evaluation hoists everything computed from constants out of the loop, which here would
    # materialise every tile's mask and masked-score fill: O(L²) memory. Tying them to q keeps them in the loop.
    qb_all, qpos_all, kpos_all, branches = jax.lax.optimization_barrier((qb_all, qpos_all, kpos_all, branches))

    def one_query_block(args):
        qb, qpos, branch_row, *carry = args

        def update(masked):
            def fn(carry, kb, vb, kpos):
                mask = allowed(qpos, kpos, window)[:, None] if masked else None
                return _online_update(carry, qb, kb, vb, mask)
            return fn

        def step(carry, xs):
            *kv, branch = xs
            return _branch(branch, lambda c, *_: c, update(False), update(True), carry, *kv), None

        return jax.lax.scan(step, tuple(carry), (kb_all, vb_all, kpos_all, branch_row))[0]

    return jax.lax.map(one_query_block, (qb_all, qpos_all, branches, *state))


def finish(state: tuple) -> tuple[jax.Array, jax.Array]:
    """(out float32 (..., R, D), lse (..., R)) from a folded state. A row with no allowed key gets out 0 and
    lse +1e30 (so the backward's exp(s - lse) is ~1e-38 for it, and its dO is 0 anyway: padded rows are dropped)."""
    m, l, acc = state
    seen = l >= 0.5  # a row that saw no allowed key has l ~ 0 (every p underflowed); one that did has l >= 1
    out = jnp.where(seen[..., None], acc / jnp.maximum(l, 0.5)[..., None], 0.0)
    return out, jnp.where(seen, m + jnp.log(jnp.maximum(l, 0.5)), -NEG_INF)


BACKWARD_ROWS = 384  # query rows per backward tile: (rows × block_kv) float32 tiles that stay in cache on CPU


def _split_rows(x: jax.Array, parts: int) -> jax.Array:
    """(nq, B, KV, R, ...) -> (nq·parts, B, KV, R/parts, ...): each query block's rows cut into `parts` tiles."""
    nq, b, kv, rows = x.shape[:4]
    x = x.reshape(nq, b, kv, parts, rows // parts, *x.shape[4:])
    return jnp.moveaxis(x, 3, 1).reshape(nq * parts, b, kv, rows // parts, *x.shape[5:])


def backward_tiles(qb_all: jax.Array, kb_all: jax.Array, vb_all: jax.Array, qpos_all: jax.Array,
                   kpos_all: jax.Array, branches: jax.Array, d_out: jax.Array, out: jax.Array, lse: jax.Array,
                   window: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Flash-attention backward over the given K/V blocks: float32 (dq, dk, dv), probabilities recomputed per tile
    from the saved log-sum-exp of the whole softmax (ring attention calls it once per K/V shard).

    Differentiating the online softmax instead would recompute every tile's forward (max, rescales) and carry
    gradients through them; here each tile costs one exp and four matmuls. Tiles are keys-major (bk × rows), so
    three of the four products are plain matmuls (a contraction over the leading axis of both operands costs XLA
    CPU a transpose), and rows are cut to ~`BACKWARD_ROWS` so a tile's working set stays in cache: together
    ~30% faster than the query-major 1536 × 512 tiles of the forward. dK/dV accumulate over query tiles.
    """
    nq, rows = qb_all.shape[0], qb_all.shape[3]
    parts = max((n for n in range(1, rows + 1) if rows % n == 0 and rows // n >= BACKWARD_ROWS), default=1)
    delta = jnp.sum(d_out.astype(jnp.float32) * out, axis=-1)  # (nq, B, KV, R): rowsum(dO ⊙ O)
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
                    p = jnp.where(jnp.swapaxes(allowed(qpos, kpos, window), 1, 2)[:, None], p, 0.0)
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
    return dq, dk, dv
