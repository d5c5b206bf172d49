"""Context-parallel attention: the sequence axis is sharded over a mesh axis ("context").

`ring_attention` keeps each device's queries in place and passes K/V blocks (with their positions) around the
ring with `ppermute`, folding each block into an online softmax; its custom VJP runs a second ring pass in which
dK/dV accumulators travel with the K/V blocks, so neither pass stores more than the local shard's residuals.
`allgather_attention` gathers all K/V onto every device instead (simpler, O(L) K/V memory per device).

Masks come from the positions that travel with the blocks, so any token order works; `load_balance_order` gives
the standard causal load balancing (device i holds chunks i and 2n-1-i) and permutes positions with the tokens,
which keeps RoPE exact. Shapes: q (B, L, H, D); k, v (B, L, KV, D), H a multiple of KV; positions int (B, L).
Only the sequence axis is sharded by these functions; batch/head axes are left to the caller (the mesh axes
other than `axis` are automatic inside the shard_map, so the partitioner keeps whatever sharding they have).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from longrope_jax.errors import ConfigError
from longrope_jax.model.attention import NEG_INF, _allowed, _group, _pad_to, blockwise_attention

_BIG = jnp.iinfo(jnp.int32).max // 2  # padded queries sit at -_BIG (attend nowhere), padded keys at +_BIG


def load_balance_order(length: int, num_shards: int) -> np.ndarray:
    """Permutation `perm` (length,) such that `x[:, perm]` puts chunks i and 2n-1-i on shard i.

    The sequence is cut into 2·num_shards equal chunks; pairing an early chunk with its mirror late chunk gives
    every shard the same causal work. Apply it to tokens and positions alike (positions = perm itself for a
    plain 0..L-1 sequence), and undo it on outputs with `load_balance_inverse`.
    """
    if length % (2 * num_shards):
        raise ConfigError(f"length {length} must be a multiple of 2·num_shards = {2 * num_shards} for causal "
                          f"load balancing; pad the sequence")
    chunks = np.arange(length).reshape(2 * num_shards, -1)
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * num_shards - 1 - i]])
                           for i in range(num_shards)])


def load_balance_inverse(length: int, num_shards: int) -> np.ndarray:
    """Inverse permutation of `load_balance_order`: `y[:, inverse]` restores the original token order."""
    return np.argsort(load_balance_order(length, num_shards))


# ---------------------------------------------------------------------------------------------- block layouts
class _Blocks(NamedTuple):
    """Heads-major blocked layout so every block product is a batched matmul over (B, KV)."""

    x: jax.Array    # queries (nq, B, KV, G·bq, D) or keys/values (nk, B, KV, bk, D)
    pos: jax.Array  # (n, B, G·bq) query positions, row r of G·bq is query r % bq; or (n, B, bk) key positions


def _split(x: jax.Array, size: int) -> jax.Array:  # (B, n·size, ...) -> (n, B, size, ...)
    return jnp.moveaxis(x.reshape(x.shape[0], x.shape[1] // size, size, *x.shape[2:]), 1, 0)


def _q_blocks(x: jax.Array, num_kv: int, block: int) -> jax.Array:
    """(B, L, H, D) (L a multiple of block) -> (nq, B, KV, G·bq, D)."""
    g = _split(_group(x, num_kv), block)  # (nq, B, bq, KV, G, D)
    n, b, bq, kv, grp, d = g.shape
    return jnp.transpose(g, (0, 1, 3, 4, 2, 5)).reshape(n, b, kv, grp * bq, d)


def _q_unblock(x: jax.Array, block: int) -> jax.Array:
    """Inverse of `_q_blocks`: (nq, B, KV, G·bq, D) -> (B, nq·bq, H, D)."""
    n, b, kv, rows, d = x.shape
    x = jnp.transpose(x.reshape(n, b, kv, rows // block, block, d), (1, 0, 4, 2, 3, 5))
    return x.reshape(b, n * block, kv * (rows // block), d)


def _kv_unblock(x: jax.Array) -> jax.Array:  # (nk, B, KV, bk, D) -> (B, nk·bk, KV, D)
    n, b, kv, bk, d = x.shape
    return jnp.transpose(x, (1, 0, 3, 2, 4)).reshape(b, n * bk, kv, d)


def _skip(qpos: jax.Array, kpos: jax.Array, window: int | None) -> jax.Array:
    """True when no (query, key) pair is allowed: keys all in the future, or all outside the window.

    Depends on positions only, so it stays a cheap scalar predicate for `lax.cond`.
    """
    skip = jnp.min(kpos) > jnp.max(qpos)
    if window is not None:
        q_min = jnp.min(jnp.where(qpos > -_BIG, qpos, _BIG))
        k_max = jnp.max(jnp.where(kpos < _BIG, kpos, -_BIG))
        skip |= k_max <= q_min - window
    return skip


def _scores(qb, qpos, kb, kpos, window, scale):
    """Masked float32 scores (B, KV, G·bq, bk) and the mask (B, 1, G·bq, bk)."""
    s = jnp.einsum("bkqd,bksd->bkqs", qb, kb, preferred_element_type=jnp.float32) * scale
    mask = _allowed(qpos, kpos, window)[:, None]
    return jnp.where(mask, s, NEG_INF), mask


# ------------------------------------------------------------------------------------------- forward / backward
def _forward_block(state, q: _Blocks, kv: tuple[jax.Array, jax.Array, jax.Array], window, scale):
    """Folds one device-sized K/V shard into the online-softmax state (m, l, acc) of every local query block."""
    kb, vb, kpos = kv

    def one_q_block(args):
        qb, qpos, m, l, acc = args

        def step(carry, blk):
            k1, v1, kp1 = blk

            def update(c):
                m, l, acc = c
                s, mask = _scores(qb, qpos, k1, kp1, window, scale)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(v1.dtype), v1, preferred_element_type=jnp.float32)
                return m_new, l * corr + jnp.sum(p, -1), acc * corr[..., None] + pv

            return jax.lax.cond(_skip(qpos, kp1, window), lambda c: c, update, carry), None

        return jax.lax.scan(step, (m, l, acc), (kb, vb, kpos))[0]

    return jax.lax.map(one_q_block, (q.x, q.pos, *state))


def _backward_block(dq, dkv, q: _Blocks, do, lse, delta, kv, window, scale):
    """Adds one K/V shard's contribution to the local dQ and to the dK/dV accumulators travelling with it."""
    kb, vb, kpos = kv

    def one_q_block(dkv_all, xs):
        qb, qpos, dob, lse_b, delta_b, dq_b = xs

        def step(dq_b, blk):
            k1, v1, kp1, dk1, dv1 = blk

            def grads(c):
                dq_b, dk1, dv1 = c
                s, mask = _scores(qb, qpos, k1, kp1, window, scale)
                p = jnp.where(mask, jnp.exp(s - lse_b[..., None]), 0.0)  # exact probabilities from the saved lse
                dp = jnp.einsum("bkqd,bksd->bkqs", dob, v1, preferred_element_type=jnp.float32)
                ds = (p * (dp - delta_b[..., None])).astype(qb.dtype)
                dq_b += jnp.einsum("bkqs,bksd->bkqd", ds, k1, preferred_element_type=jnp.float32) * scale
                dk1 += jnp.einsum("bkqs,bkqd->bksd", ds, qb, preferred_element_type=jnp.float32) * scale
                dv1 += jnp.einsum("bkqs,bkqd->bksd", p.astype(dob.dtype), dob, preferred_element_type=jnp.float32)
                return dq_b, dk1, dv1

            dq_b, dk1, dv1 = jax.lax.cond(_skip(qpos, kp1, window), lambda c: c, grads, (dq_b, dk1, dv1))
            return dq_b, (dk1, dv1)

        dq_b, dkv_all = jax.lax.scan(step, dq_b, (kb, vb, kpos, *dkv_all))
        return dkv_all, dq_b

    dkv, dq = jax.lax.scan(one_q_block, dkv, (q.x, q.pos, do, lse, delta, dq))
    return dq, dkv


def _make_ring(axis: str, n: int, window: int | None, block_q: int, block_kv: int):
    """The per-shard ring attention (inside shard_map) with its ring-pass custom VJP."""
    perm = [(j, (j + 1) % n) for j in range(n)]
    rotate = functools.partial(jax.lax.ppermute, axis_name=axis, perm=perm)

    def layouts(q, k, v, qpos, kpos):
        lq, lk, num_kv = q.shape[1], k.shape[1], k.shape[2]
        bq, bk = min(block_q, lq), min(block_kv, lk)
        qp = _pad_to(qpos.astype(jnp.int32), 1, bq, -_BIG)
        qx = _q_blocks(_pad_to(q, 1, bq, 0), num_kv, bq)
        group = q.shape[2] // num_kv
        qb = _Blocks(qx, jnp.tile(_split(qp, bq), (1, 1, group)))
        kp = _split(_pad_to(kpos.astype(jnp.int32), 1, bk, _BIG), bk)
        kv = (jnp.swapaxes(_split(_pad_to(k, 1, bk, 0), bk), 2, 3),
              jnp.swapaxes(_split(_pad_to(v, 1, bk, 0), bk), 2, 3), kp)
        return qb, kv, bq

    def ring_loop(body, carry, kv):
        """n-1 ring steps (K/V sent on before the compute that uses it, so transfer overlaps compute) + a last."""
        def step(_, c):
            kv, carry = c
            nxt = rotate(kv)
            return nxt, body(carry, kv)
        kv, carry = jax.lax.fori_loop(0, n - 1, step, (kv, carry))
        return body(carry, kv)

    def forward(q, k, v, qpos, kpos):
        scale = q.shape[-1] ** -0.5
        # Keep position-derived masks inside an enclosing layer scan (see attention._blocked_forward).
        q, qpos, kpos = jax.lax.optimization_barrier((q, qpos, kpos))
        qb, kv, bq = layouts(q, k, v, qpos, kpos)
        rows = qb.x.shape[:-1]
        state = (jnp.full(rows, NEG_INF, jnp.float32), jnp.zeros(rows, jnp.float32),
                 jnp.zeros(qb.x.shape, jnp.float32))

        def body(state, kv):
            # Whole-shard skip: a K/V shard entirely in the future of every local query costs nothing.
            return jax.lax.cond(_skip(qb.pos, kv[2], window), lambda s: s,
                                lambda s: _forward_block(s, qb, kv, window, scale), state)

        m, l, acc = ring_loop(body, state, kv)
        out = acc / jnp.where(l == 0, 1.0, l)[..., None]
        lse = jnp.where(l == 0, 0.0, m + jnp.log(jnp.where(l == 0, 1.0, l)))
        out = _q_unblock(out, bq)[:, :q.shape[1]].astype(q.dtype)
        return out, (q, k, v, qpos, kpos, out, lse)

    def backward(res, dout):
        q, k, v, qpos, kpos, out, lse = res
        scale = q.shape[-1] ** -0.5
        qb, kv, bq = layouts(q, k, v, qpos, kpos)
        num_kv = k.shape[2]
        do = _q_blocks(_pad_to(dout.astype(q.dtype), 1, bq, 0), num_kv, bq)
        o = _q_blocks(_pad_to(out, 1, bq, 0), num_kv, bq)
        delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # rowsum(dO ∘ O)
        dq = jnp.zeros(qb.x.shape, jnp.float32)
        dkv = (jnp.zeros(kv[0].shape, jnp.float32), jnp.zeros(kv[1].shape, jnp.float32))

        def body(carry, kv):
            dq, dkv = carry
            return jax.lax.cond(_skip(qb.pos, kv[2], window), lambda c: c,
                                lambda c: _backward_block(*c, qb, do, lse, delta, kv, window, scale), (dq, dkv))

        def step(_, c):
            kv, dq, dkv = c
            nxt = rotate(kv)
            dq, dkv = body((dq, dkv), kv)
            return nxt, dq, rotate(dkv)  # the accumulators follow their K/V shard

        kv, dq, dkv = jax.lax.fori_loop(0, n - 1, step, (kv, dq, dkv))
        dq, dkv = body((dq, dkv), kv)
        dk, dv = rotate(dkv) if n > 1 else dkv  # one more hop brings each shard's dK/dV home
        dq = _q_unblock(dq, bq)[:, :q.shape[1]].astype(q.dtype)
        lk = k.shape[1]
        return (dq, _kv_unblock(dk)[:, :lk].astype(k.dtype), _kv_unblock(dv)[:, :lk].astype(v.dtype), None, None)

    @jax.custom_vjp
    def ring(q, k, v, qpos, kpos):
        return forward(q, k, v, qpos, kpos)[0]

    ring.defvjp(forward, backward)
    return ring


@functools.lru_cache(maxsize=64)
def _sharded(kind: str, mesh: Mesh, axis: str, window: int | None, block_q: int, block_kv: int):
    """Jitted shard_map of the per-shard function, cached so repeated eager calls reuse one compilation."""
    if kind == "ring":
        fn = _make_ring(axis, mesh.shape[axis], window, block_q, block_kv)
    else:
        def fn(q, k, v, qpos, kpos):
            gather = functools.partial(jax.lax.all_gather, axis_name=axis, axis=1, tiled=True)
            return blockwise_attention(q, gather(k), gather(v), qpos, gather(kpos), window, block_q, block_kv)
    seq, pos = P(None, axis, None, None), P(None, axis)
    # Manual over `axis` only: batch/head sharding on the other mesh axes stays with the automatic partitioner.
    # jit: a partially manual shard_map cannot run eagerly in jax 0.10 (it rejects its own out_specs there).
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(seq, seq, seq, pos, pos), out_specs=seq,
                                 axis_names=frozenset({axis}), check_vma=False))


def _check(mesh: Mesh, axis: str, q: jax.Array, k: jax.Array) -> None:
    if axis not in mesh.shape:
        raise ConfigError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.shape)}")
    n = mesh.shape[axis]
    if q.shape[1] % n or k.shape[1] % n:
        raise ConfigError(f"sequence lengths {q.shape[1]}, {k.shape[1]} must be multiples of the {axis!r} mesh "
                          f"axis size {n}; pad the sequence")


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                   mesh: Mesh, axis: str = "context", sliding_window: int | None = None, block_kv: int = 512,
                   block_q: int = 512) -> jax.Array:
    """Causal (optionally sliding-window) GQA attention with the sequence sharded over `axis`, by a K/V ring.

    Args:
      q: (B, L, H, D); k, v: (B, L, KV, D); q_positions, kv_positions: int (B, L) — axis 1 of each is split
        into `mesh.shape[axis]` contiguous shards (use `load_balance_order` first for balanced causal work).
      block_q, block_kv: local tile sizes; peak scratch is O(B·H·block_q·block_kv) float32 per device.

    Returns:
      (B, L, H, D) in q's dtype, sharded like q. Differentiable (ring-pass custom VJP).
    """
    _check(mesh, axis, q, k)
    return _sharded("ring", mesh, axis, sliding_window, block_q, block_kv)(q, k, v, q_positions, kv_positions)


def allgather_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array,
                        kv_positions: jax.Array, mesh: Mesh, axis: str = "context",
                        sliding_window: int | None = None, block_kv: int = 512, block_q: int = 512) -> jax.Array:
    """Same contract as `ring_attention`, but each device all-gathers K/V (+ positions) and runs
    `blockwise_attention` for its local queries: one collective, O(L·KV·D) K/V memory per device."""

    _check(mesh, axis, q, k)
    return _sharded("allgather", mesh, axis, sliding_window, block_q, block_kv)(q, k, v, q_positions, kv_positions)
