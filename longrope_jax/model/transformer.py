"""The decoder (Llama / Mistral / Phi-3 / SmolLM2 / Qwen2) as small Flax NNX modules.

Parameters are stored as (in, out) kernels and carry logical axis names in the `logical_axes` metadata; the
sharding rules table maps those names to mesh axes. Layers are stacked (leading "layers" axis) and run with
`nnx.scan`, or unrolled with a Python loop when `scan_layers=False`. RoPE state is a runtime input.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from longrope_jax.model.attention import attention as attention_kernel
from longrope_jax.model.attention import reference_attention
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.context import ContextParallel
from longrope_jax.rope import RopeInputs, apply_rope, rope_cos_sin, rope_inputs


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, scale: float | None = None) -> nnx.Param:
    if scale is None:
        value = jnp.ones(shape, dtype)
    else:
        value = (jax.random.normal(rngs.params(), shape, jnp.float32) * scale).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs):
        self.weight = _param(rngs, (dim,), ("norm",), dtype)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # HF: normalise in float32, cast back, then multiply by the weight.
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


class KVCache(NamedTuple):
    """Per-layer cache slots: k, v (B, max_len, KV, D); positions (B, max_len) with -1 for empty slots."""

    k: jax.Array
    v: jax.Array
    positions: jax.Array


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        h, kv, d, e, dt = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.params_dtype
        std = e ** -0.5
        self.q_proj = _param(rngs, (e, h * d), ("embed", "q_heads"), dt, std)
        self.k_proj = _param(rngs, (e, kv * d), ("embed", "kv_heads"), dt, std)
        self.v_proj = _param(rngs, (e, kv * d), ("embed", "kv_heads"), dt, std)
        self.o_proj = _param(rngs, (h * d, e), ("q_heads", "embed"), dt, (h * d) ** -0.5)
        if cfg.qkv_bias:  # Qwen2
            self.q_bias = _param(rngs, (h * d,), ("q_heads",), dt, 0.02)
            self.k_bias = _param(rngs, (kv * d,), ("kv_heads",), dt, 0.02)
            self.v_bias = _param(rngs, (kv * d,), ("kv_heads",), dt, 0.02)
        self.cfg = cfg

    def _project(self, x: jax.Array, name: str, heads: int) -> jax.Array:
        b, l, _ = x.shape
        out = x @ getattr(self, f"{name}_proj")[...].astype(x.dtype)
        if self.cfg.qkv_bias:
            out = out + getattr(self, f"{name}_bias")[...].astype(x.dtype)
        return out.reshape(b, l, heads, self.cfg.head_dim)

    def __call__(self, x: jax.Array, positions: jax.Array, rope: RopeInputs, cache: KVCache | None = None,
                 context: ContextParallel | None = None) -> tuple[jax.Array, KVCache | None]:
        cfg = self.cfg
        b, l, _ = x.shape
        dt = x.dtype
        q = self._project(x, "q", cfg.num_heads)
        k = self._project(x, "k", cfg.num_kv_heads)
        v = self._project(x, "v", cfg.num_kv_heads)
        cos, sin = rope_cos_sin(positions, rope)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        run = cfg.execution
        if context is not None and cache is None:
            # Tokens sharded over the context axis: ring (or all-gather) attention across devices.
            out = context.attention(q, k, v, positions, positions, cfg.sliding_window, run.block_q, run.block_kv)
        elif cache is None or l > 1:
            # No cache, or a prompt prefilled in one call into an empty cache: memory-linear kernel over the
            # new tokens themselves (a cache-wide score matrix would be L × max_len).
            out = attention_kernel(q, k, v, positions, positions, impl=run.attention,
                                   sliding_window=cfg.sliding_window, block_q=run.block_q, block_kv=run.block_kv)
        if cache is not None:
            # Write the new keys at their positions' slots; a single new token then attends over the whole cache.
            slots = positions % cache.k.shape[1]
            batch = jnp.arange(b)[:, None]
            cache = KVCache(cache.k.at[batch, slots].set(k.astype(cache.k.dtype)),
                            cache.v.at[batch, slots].set(v.astype(cache.v.dtype)),
                            cache.positions.at[batch, slots].set(positions.astype(jnp.int32)))
        if cache is not None and l == 1:
            out = reference_attention(q, cache.k.astype(dt), cache.v.astype(dt), positions, cache.positions,
                                      cfg.sliding_window, kv_valid=cache.positions >= 0)
        out = out.reshape(b, l, cfg.num_heads * cfg.head_dim) @ self.o_proj[...].astype(dt)
        return out, cache


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, i, dt = cfg.hidden_size, cfg.intermediate_size, cfg.params_dtype
        self.gate_proj = _param(rngs, (e, i), ("embed", "mlp"), dt, e ** -0.5)
        self.up_proj = _param(rngs, (e, i), ("embed", "mlp"), dt, e ** -0.5)
        self.down_proj = _param(rngs, (i, e), ("mlp", "embed"), dt, i ** -0.5)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        gate = jax.nn.silu(x @ self.gate_proj[...].astype(dt))
        return (gate * (x @ self.up_proj[...].astype(dt))) @ self.down_proj[...].astype(dt)


class DecoderBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.params_dtype, rngs)
        self.self_attn = Attention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.params_dtype, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, rope: RopeInputs, cache: KVCache | None = None,
                 context: ContextParallel | None = None) -> tuple[jax.Array, KVCache | None]:
        attn_out, cache = self.self_attn(self.input_layernorm(x), positions, rope, cache, context)
        x = x + attn_out
        return x + self.mlp(self.post_attention_layernorm(x)), cache


_REMAT = {
    "full": None,
    # Recompute the layer but keep the blockwise kernel's output and log-sum-exp, so the backward does not run the
    # attention forward a second time (~20% of a layer's attention work; + L·H·(D+1) float32 per layer). Kernels
    # that name nothing (splash, cuDNN, ring) make this "full".
    "save_attention": jax.checkpoint_policies.save_only_these_names("attention_out", "attention_lse"),
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


class Transformer(nnx.Module):
    """Decoder-only LM. `model(tokens)` -> logits (B, L, vocab); `model.hidden(...)` -> final hidden states."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.params_dtype
        self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt, 1.0)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None, "logical_axes": "layers"})
        def make_layers(layer_rngs: nnx.Rngs) -> DecoderBlock:
            return DecoderBlock(cfg, layer_rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dt, rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt,
                                  cfg.hidden_size ** -0.5)

    def output_kernel(self) -> jax.Array:
        """(hidden, vocab) projection: the tied embedding transposed, or lm_head."""
        if self.cfg.tie_word_embeddings:
            return self.embed_tokens[...].T
        return self.lm_head[...]

    def hidden(self, tokens: jax.Array, positions: jax.Array | None = None, rope: RopeInputs | None = None,
               cache: KVCache | None = None, context: ContextParallel | None = None
               ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states (B, L, hidden) and the updated cache (stacked over layers) if one was given.

        Args:
          tokens: int32 (B, L).
          positions: int32 (B, L); default arange(L).
          rope: RopeInputs; default the model's own spec at length L (or the cache length when decoding).
          cache: KVCache with a leading layer axis, from `init_cache`.
          context: split the tokens over a mesh's context axis (ring attention); tokens and positions must
            already be in the layout `model.context.context_order` gives (see `context_nll`).
        """
        cfg = self.cfg
        b, l = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        if rope is None:
            rope = rope_inputs(cfg.rope, l if cache is None else cache.k.shape[2])
        # Per-layer rope: broadcast shared (d/2,) frequencies to (n_layers, d/2) so the scan slices them.
        inv_freq = jnp.broadcast_to(rope.inv_freq, (cfg.num_layers, rope.inv_freq.shape[-1]))
        x = jnp.take(self.embed_tokens[...], tokens, axis=0).astype(cfg.compute_dtype)
        if context is not None:
            if cache is not None:
                raise ValueError("context parallelism is for full-sequence forwards, not KV-cache decoding")
            x = context.constrain(x)

        def body(block: DecoderBlock, x, layer_inv_freq, layer_cache):
            x, layer_cache = block(x, positions, rope._replace(inv_freq=layer_inv_freq), layer_cache, context)
            return (x if context is None else context.constrain(x)), layer_cache

        if cfg.execution.remat != "none":
            body = nnx.remat(body, policy=_REMAT[cfg.execution.remat])

        if cfg.execution.scan_layers:
            @nnx.scan(in_axes=(0, nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
            def run(block, x, layer_inv_freq, layer_cache):
                return body(block, x, layer_inv_freq, layer_cache)

            x, cache = run(self.layers, x, inv_freq, cache)
        else:
            new_caches = []
            for i in range(cfg.num_layers):
                block = nnx.merge(*_layer_slice(self.layers, i))
                layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
                x, layer_cache = body(block, x, inv_freq[i], layer_cache)
                new_caches.append(layer_cache)
            if cache is not None:
                cache = jax.tree.map(lambda *cs: jnp.stack(cs), *new_caches)
        return self.norm(x), cache

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, rope: RopeInputs | None = None,
                 cache: KVCache | None = None):
        """Logits float32 (B, L, vocab); with a cache, (logits, new_cache)."""
        h, new_cache = self.hidden(tokens, positions, rope, cache)
        logits = jnp.einsum("ble,ev->blv", h, self.output_kernel().astype(h.dtype),
                            preferred_element_type=jnp.float32)
        return logits if cache is None else (logits, new_cache)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """Empty KV cache for `max_len` tokens (stacked over layers)."""
        cfg = self.cfg
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or cfg.compute_dtype
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.full((cfg.num_layers, batch, max_len), -1, jnp.int32))


def _layer_slice(layers: nnx.Module, index: int):
    graphdef, state = nnx.split(layers)
    return graphdef, jax.tree.map(lambda p: p[index], state)


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (tests, tiny configs)."""
    return Transformer(cfg, nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> Transformer:
    """A model with ShapeDtypeStruct leaves: allocate nothing, then fill from a checkpoint."""
    return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(params=0)))
