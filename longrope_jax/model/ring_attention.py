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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from longrope_jax.errors import ConfigError
from longrope_jax.model.attention import blockwise_attention
from longrope_jax.model.blocked import (backward_tiles, blocked_layout, finish, fold, initial_state, kv_unblock,
                                       q_layout, q_unblock, tile_branches)


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


def _make_ring(axis: str, n: int, window: int | None, block_q: int, block_kv: int):
    """The per-shard ring attention (inside shard_map) with its ring-pass custom VJP; q arrives pre-scaled by 1/√D.

    Each device keeps its query blocks and folds every K/V shard into their online softmax as it passes by,
    through the blockwise kernel's own fold and flash backward (`blocked.fold`, `blocked.backward_tiles`).
    """
    perm = [(j, (j + 1) % n) for j in range(n)]
    rotate = functools.partial(jax.lax.ppermute, axis_name=axis, perm=perm)

    def layout(q, k, v, qpos, kpos):
        bq, bk = min(block_q, q.shape[1]), min(block_kv, k.shape[1])
        qb, qrows, kb, vb, kp = blocked_layout(q, k, v, qpos, kpos, bq, bk)
        return qb, qrows, (kb, vb, kp), bq

    def ring_loop(body, carry, kv):
        """n-1 ring steps (K/V sent on before the compute that uses it, so transfer overlaps compute) + a last."""
        def step(_, c):
            kv, carry = c
            nxt = rotate(kv)
            return nxt, body(carry, kv)
        kv, carry = jax.lax.fori_loop(0, n - 1, step, (kv, carry))
        return body(carry, kv)

    def unless_all_skipped(branches, compute, carry):
        # Whole-shard skip: a K/V shard entirely in the future of every local query costs nothing.
        return jax.lax.cond(jnp.all(branches == 0), lambda c: c, compute, carry)

    def forward(q, k, v, qpos, kpos):
        # Keep position-derived masks inside an enclosing layer scan (see blocked.fold).
        q, qpos, kpos = jax.lax.optimization_barrier((q, qpos, kpos))
        qb, qrows, kv, bq = layout(q, k, v, qpos, kpos)

        def body(state, kv):
            branches = tile_branches(qrows, kv[2], window)
            return unless_all_skipped(branches, lambda s: fold(s, qb, *kv[:2], qrows, kv[2], branches, window),
                                      state)

        out, lse = finish(ring_loop(body, initial_state(qb), kv))
        return q_unblock(out, bq, q.shape[1]).astype(q.dtype), (q, k, v, qpos, kpos, out, lse)

    def backward(res, d_out):
        q, k, v, qpos, kpos, out, lse = res
        qb, qrows, kv, bq = layout(q, k, v, qpos, kpos)
        do = q_layout(d_out, qpos, k.shape[2], bq)[0]  # dO in the queries' blocking

        def body(carry, kv):
            branches = tile_branches(qrows, kv[2], window)

            def add(c):
                dq, (dk, dv) = c
                ddq, ddk, ddv = backward_tiles(qb, *kv[:2], qrows, kv[2], branches, do, out, lse, window)
                return dq + ddq, (dk + ddk, dv + ddv)
            return unless_all_skipped(branches, add, carry)

        def step(_, c):
            kv, dq, dkv = c
            nxt = rotate(kv)
            dq, dkv = body((dq, dkv), kv)
            return nxt, dq, rotate(dkv)  # the accumulators follow their K/V shard

        zeros = jnp.zeros(kv[0].shape, jnp.float32)
        kv, dq, dkv = jax.lax.fori_loop(0, n - 1, step, (kv, jnp.zeros(qb.shape, jnp.float32), (zeros, zeros)))
        dq, dkv = body((dq, dkv), kv)
        dk, dv = rotate(dkv) if n > 1 else dkv  # one more hop brings each shard's dK/dV home
        lk = k.shape[1]
        return (q_unblock(dq, bq, q.shape[1]).astype(q.dtype), kv_unblock(dk, lk).astype(k.dtype),
                kv_unblock(dv, lk).astype(v.dtype), None, None)

    @jax.custom_vjp
    def ring(q, k, v, qpos, kpos):
        return forward(q, k, v, qpos, kpos)[0]

    ring.defvjp(forward, backward)

    def scaled_ring(q, k, v, qpos, kpos):
        scale = q.shape[-1] ** -0.5  # folded into q as in blockwise_attention (exact for D = 4^n)
        return ring((q.astype(jnp.float32) * scale).astype(q.dtype), k, v, qpos, kpos)

    return scaled_ring


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
