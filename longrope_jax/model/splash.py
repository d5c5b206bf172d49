"""Pallas splash attention (TPU), GQA by running the MQA kernel once per KV head group.

Assumes the standard causal layout (positions = offset + arange, no cache), like the cuDNN path. With
`interpret=True` the same kernel runs (slowly) on CPU, which is how the tests check it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks


@functools.lru_cache(maxsize=32)
def _kernel(q_len: int, group: int, sliding_window: int | None, block_q: int, block_kv: int, interpret: bool):
    mask = masks.CausalMask(shape=(q_len, q_len))
    if sliding_window is not None:
        mask = masks.LogicalAnd(mask, masks.LocalMask(shape=(q_len, q_len), window_size=(sliding_window - 1, 0),
                                                      offset=0))
    block_q, block_kv = min(block_q, q_len), min(block_kv, q_len)
    sizes = splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                              block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
                              block_q_dq=block_q, block_kv_dq=block_kv)
    return splash.make_splash_mqa(masks.MultiHeadMask([mask] * group), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, sliding_window: int | None = None,
                     block_q: int = 512, block_kv: int = 512, interpret: bool = False) -> jax.Array:
    """Causal GQA attention. q (B, L, H, D); k, v (B, L, KV, D) -> (B, L, H, D).

    L is padded at the end to a multiple of the blocks: under the causal mask padded keys are seen only by padded
    queries, which are dropped.
    """
    b, real_length, h, d = q.shape
    block_q, block_kv = min(block_q, _round_up(real_length, 128)), min(block_kv, _round_up(real_length, 128))
    length = _round_up(real_length, max(block_q, block_kv))
    pad = [(0, 0), (0, length - real_length), (0, 0), (0, 0)]
    q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
    num_kv = k.shape[2]
    group = h // num_kv
    kernel = _kernel(length, group, sliding_window, block_q, block_kv, interpret)
    # (B, L, KV·G, D) -> (B, KV, G, L, D); the kernel does not scale logits itself.
    qg = jnp.transpose(q.reshape(b, length, num_kv, group, d), (0, 2, 3, 1, 4)) * (d ** -0.5)
    kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, KV, L, D)
    per_group = jax.vmap(kernel, in_axes=(0, 0, 0))  # over KV groups: MQA within the group
    out = jax.vmap(per_group, in_axes=(0, 0, 0))(qg.astype(q.dtype), kt, vt)  # (B, KV, G, L, D)
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, length, h, d)[:, :real_length].astype(q.dtype)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
