"""Context-parallel attention on 8 fake CPU devices: ring / all-gather == reference attention (values, gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from longrope_jax.errors import ConfigError
from longrope_jax.model.attention import reference_attention
from longrope_jax.model.ring_attention import (allgather_attention, load_balance_inverse, load_balance_order,
                                               ring_attention)
from longrope_jax.sharding import make_mesh

H, KV, D = 4, 2, 16  # GQA with 2 query heads per KV head; small so 8192 tokens stay fast on 2 cores
KERNELS = {"ring": ring_attention, "allgather": allgather_attention}


def _qkv(length: int, batch: int = 1, seed: int = 0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (batch, length, H, D)), jax.random.normal(kk, (batch, length, KV, D)),
            jax.random.normal(kv, (batch, length, KV, D)))


@functools.partial(jax.jit, static_argnames=("window", "chunk"))
def _reference(q, k, v, pos, window=None, chunk=1024):
    """reference_attention per query chunk, against only the keys its mask can allow (positions = 0..L-1).

    Dropped keys would get probability exactly 0, so this is the reference result without an L×L matrix.
    """
    outs = []
    for s in range(0, q.shape[1], chunk):
        e = s + chunk
        lo = 0 if window is None else max(0, s - window + 1)
        outs.append(reference_attention(q[:, s:e], k[:, lo:e], v[:, lo:e], pos[:, s:e], pos[:, lo:e], window))
    return jnp.concatenate(outs, axis=1)


def _balanced(kernel, q, k, v, pos, mesh, window=None, **blocks):
    """Run `kernel` on load-balanced token order (positions travel with tokens) and restore the original order."""
    n = mesh.shape["context"]
    perm, inv = load_balance_order(q.shape[1], n), load_balance_inverse(q.shape[1], n)
    out = kernel(q[:, perm], k[:, perm], v[:, perm], pos[:, perm], pos[:, perm], mesh, sliding_window=window,
                 **blocks)
    return out[:, inv]


def test_load_balance_order_equalises_causal_work():
    length, n = 64, 4
    perm, inv = load_balance_order(length, n), load_balance_inverse(length, n)
    assert sorted(perm.tolist()) == list(range(length))
    np.testing.assert_array_equal(perm[inv], np.arange(length))
    chunk = length // (2 * n)
    np.testing.assert_array_equal(perm[:2 * chunk], np.r_[0:chunk, length - chunk:length])  # shard 0: first + last
    # Causal work of a shard = number of allowed (query, key) pairs = sum over its queries of (position + 1).
    work = [(perm[i * length // n:(i + 1) * length // n] + 1).sum() for i in range(n)]
    assert len(set(work)) == 1
    contiguous = [(np.arange(length)[i * length // n:(i + 1) * length // n] + 1).sum() for i in range(n)]
    assert len(set(contiguous)) == n  # without balancing the last shard does the most work
    with pytest.raises(ConfigError, match="multiple of 2"):
        load_balance_order(60, 4)


@pytest.fixture(scope="module")
def long_inputs():
    length = 8192
    q, k, v = _qkv(length)
    pos = jnp.arange(length, dtype=jnp.int32)[None]
    return q, k, v, pos, _reference(q, k, v, pos)  # causal reference shared by the window=None cases


@pytest.mark.parametrize("kernel,window", [("ring", None), ("ring", 1500), ("allgather", None)])
def test_context_parallel_matches_reference_8192(long_inputs, kernel, window):
    q, k, v, pos, causal_ref = long_inputs
    mesh = make_mesh(context=8)
    out = _balanced(KERNELS[kernel], q, k, v, pos, mesh, window)
    ref = causal_ref if window is None else _reference(q, k, v, pos, window)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel,window", [("ring", None), ("ring", 200), ("allgather", None)])
def test_gradients_match_reference(kernel, window):
    length = 1024
    q, k, v = _qkv(length, seed=1)
    pos = jnp.arange(length, dtype=jnp.int32)[None]
    mesh = make_mesh(context=8)
    w = jax.random.normal(jax.random.key(2), q.shape)
    blocks = dict(block_q=32, block_kv=32)  # several tiles per shard, so per-tile skipping is exercised

    def loss(attn):
        return lambda q, k, v: jnp.sum(attn(q, k, v) * w)

    ref = jax.grad(loss(lambda q, k, v: reference_attention(q, k, v, pos, pos, window)), argnums=(0, 1, 2))(q, k, v)
    got = jax.jit(jax.grad(loss(lambda q, k, v: _balanced(KERNELS[kernel], q, k, v, pos, mesh, window, **blocks)),
                           argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-5, rtol=0)  # dq
    np.testing.assert_allclose(got[1], ref[1], atol=5e-5, rtol=0)  # dk, dv sum over more terms (fp32 reassociation)
    np.testing.assert_allclose(got[2], ref[2], atol=5e-5, rtol=0)


def test_ring_keeps_batch_sharding_and_pads_ragged_blocks():
    # data=2 × context=4; batch sharded over data by the caller; local shards of 250 tokens are not a multiple of
    # the tiles, so padding is exercised; per-row position offsets (e.g. a continuation) shift the masks.
    batch, length = 2, 1000
    q, k, v = _qkv(length, batch=batch, seed=3)
    pos = jnp.arange(length, dtype=jnp.int32)[None] + jnp.array([[0], [37]], jnp.int32)
    mesh = make_mesh(data=2, context=4)
    qs = jax.device_put(q, NamedSharding(mesh, P("data", "context")))
    out = jax.jit(lambda q, k, v, p: ring_attention(q, k, v, p, p, mesh, sliding_window=300, block_q=64,
                                                    block_kv=96))(qs, k, v, pos)
    assert out.sharding.spec[:2] == ("data", "context")
    np.testing.assert_allclose(out, reference_attention(q, k, v, pos, pos, 300), atol=1e-5, rtol=0)


def test_any_token_order():
    # Masks follow the positions that travel with the K/V blocks, so a random layout is as exact as any other.
    length = 256
    q, k, v = _qkv(length, seed=4)
    pos = jnp.arange(length, dtype=jnp.int32)[None]
    perm = np.random.default_rng(0).permutation(length)
    out = ring_attention(q[:, perm], k[:, perm], v[:, perm], pos[:, perm], pos[:, perm], make_mesh(context=8),
                         sliding_window=50, block_q=16, block_kv=16)
    np.testing.assert_allclose(out[:, np.argsort(perm)], reference_attention(q, k, v, pos, pos, 50), atol=1e-5,
                               rtol=0)


def test_length_must_divide_context_axis():
    q, k, v = _qkv(100)
    pos = jnp.arange(100, dtype=jnp.int32)[None]
    with pytest.raises(ConfigError, match="multiples of the 'context' mesh axis size 8"):
        ring_attention(q, k, v, pos, pos, make_mesh(context=8))


@pytest.mark.parametrize("kernel", ["ring", "allgather"])
def test_gradient_memory_stays_linear_inside_a_layer_scan(kernel, layer_scan_gradient_temp_bytes):
    """Layers stacked with `lax.scan`: reverse mode must not hoist per-tile masks (computed from the constant
    positions) out of the loop. Compiled temporary memory grows ~2x when L doubles (ring was 3.8x before)."""
    mesh = make_mesh(context=8)
    attention = lambda q, k, v, pos: KERNELS[kernel](q, k, v, pos, pos, mesh, block_q=64, block_kv=64)
    small, large = (layer_scan_gradient_temp_bytes(attention, length) for length in (2048, 4096))
    assert large < 2.6 * small, (small, large)
