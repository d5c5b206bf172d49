"""Context (sequence) parallelism for whole models: the token axis split over the mesh's "context" axis.

`ContextParallel` names the mesh, the axis and the attention (ring or all-gather K/V). `context_order` pads a
sequence to a multiple of 2·n with extra *future* tokens (positions L, L+1, …: no real token attends to them, and
their outputs are dropped) and applies causal load balancing, so each device holds chunks i and 2n−1−i and does
equal work. Positions travel with the tokens, so RoPE stays exact under the reordering. `context_nll` and
`context_hidden` run a model in that order and hand results back in the original order.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from longrope_jax.errors import ConfigError
from longrope_jax.model.execution import CONTEXT_IMPLS


@dataclasses.dataclass(frozen=True)
class ContextParallel:
    """Static description of context parallelism (hashable: usable as a jit static argument)."""

    mesh: Mesh
    axis: str = "context"
    impl: str = "ring"

    def __post_init__(self) -> None:
        if self.axis not in self.mesh.shape:
            raise ConfigError(f"mesh has no axis {self.axis!r}; its axes are {tuple(self.mesh.shape)}")
        if self.impl not in CONTEXT_IMPLS:
            raise ConfigError(f"unknown context attention {self.impl!r}; use one of {CONTEXT_IMPLS}")

    @property
    def size(self) -> int:
        return int(self.mesh.shape[self.axis])

    def attention(self, q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                  sliding_window: int | None, block_q: int, block_kv: int) -> jax.Array:
        from longrope_jax.model.ring_attention import allgather_attention, ring_attention

        fn = ring_attention if self.impl == "ring" else allgather_attention
        return fn(q, k, v, q_positions, kv_positions, self.mesh, self.axis, sliding_window, block_kv=block_kv,
                  block_q=block_q)

    def constrain(self, x: jax.Array) -> jax.Array:
        """Pin axis 1 (tokens) of a (B, L, ...) activation to the context axis; other axes stay free."""
        spec = P(P.UNCONSTRAINED, self.axis, *([P.UNCONSTRAINED] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def context_parallel(mesh: Mesh | None, impl: str = "ring", axis: str = "context") -> ContextParallel | None:
    """A ContextParallel when `mesh` has an `axis` of size > 1, else None (plain single-sequence attention)."""
    if mesh is None or mesh.shape.get(axis, 1) <= 1:
        return None
    return ContextParallel(mesh, axis, impl)


def context_order(length: int, num_shards: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(order, inverse, padded_length) for a sequence of `length` tokens on `num_shards` context shards.

    `order` (padded_length,) indexes the padded sequence (indices >= length are pad tokens at positions >= length)
    into load-balanced order; `x_padded[:, order][:, inverse] == x_padded`.
    """
    from longrope_jax.model.ring_attention import load_balance_inverse, load_balance_order

    padded = -(-length // (2 * num_shards)) * (2 * num_shards)
    return load_balance_order(padded, num_shards), load_balance_inverse(padded, num_shards), padded


def _reorder(x: jax.Array, order: np.ndarray, padded: int, fill) -> jax.Array:
    pad = padded - x.shape[1]
    if pad:
        x = jnp.concatenate([x, jnp.full((x.shape[0], pad, *x.shape[2:]), fill, x.dtype)], axis=1)
    return x[:, order]


def _positions(tokens: jax.Array, positions: jax.Array | None, padded: int) -> jax.Array:
    """Positions of the padded sequence: the real ones, then max + 1, max + 2, … for the pad tokens."""
    b, l = tokens.shape
    if positions is None:
        return jnp.broadcast_to(jnp.arange(padded, dtype=jnp.int32), (b, padded))
    positions = positions.astype(jnp.int32)
    extra = jnp.max(positions, axis=1, keepdims=True) + 1 + jnp.arange(padded - l, dtype=jnp.int32)
    return jnp.concatenate([positions, extra], axis=1)


def _balanced_hidden(model, tokens: jax.Array, positions: jax.Array | None, rope, context: ContextParallel):
    """Hidden states of the padded, load-balanced sequence, with the (order, inverse, padded) that made it."""
    order, inverse, padded = context_order(tokens.shape[1], context.size)
    pos = _positions(tokens, positions, padded)[:, order]
    hidden, _ = model.hidden(_reorder(tokens, order, padded, 0), pos, rope, context=context)
    return hidden, order, inverse, padded


def context_hidden(model, tokens: jax.Array, rope, context: ContextParallel,
                   positions: jax.Array | None = None) -> jax.Array:
    """`model.hidden(tokens)` (B, L, E) computed context-parallel, returned in the original token order."""
    hidden, _, inverse, _ = _balanced_hidden(model, tokens, positions, rope, context)
    return hidden[:, inverse][:, :tokens.shape[1]]


def context_nll(model, tokens: jax.Array, rope, context: ContextParallel,
                positions: jax.Array | None = None) -> jax.Array:
    """Per-token NLL (B, L-1) of tokens[:, 1:], computed context-parallel (loss too, in the balanced order)."""
    from longrope_jax.model.loss import chunked_token_nll

    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    hidden, order, inverse, padded = _balanced_hidden(model, inputs, None if positions is None else positions[:, :-1],
                                                      rope, context)
    chunk, axis = model.cfg.execution.loss_chunk, context.axis

    def local_nll(h, kernel, t):  # each device scores its own tokens: the (L, E) hidden is never gathered
        return chunked_token_nll(h, kernel, t, chunk)

    # Manual over the context axis only (vocab/embed sharding of the kernel stays automatic); jit because a
    # partially manual shard_map cannot run eagerly.
    nll = jax.jit(jax.shard_map(local_nll, mesh=context.mesh, in_specs=(P(None, axis, None), P(), P(None, axis)),
                                out_specs=P(None, axis), axis_names=frozenset({axis}), check_vma=False))(
        hidden, model.output_kernel(), _reorder(targets, order, padded, 0))
    return nll[:, inverse][:, :inputs.shape[1]]
