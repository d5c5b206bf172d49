"""KV-cache decoding: one prefill of the prompt, then one token per step inside a compiled `lax.while_loop`
that ends early once every sequence has emitted the stop token.

Short/long factor policy: the rope factors are fixed per sequence from its planned total length
(prompt + max_new_tokens), chosen once before prefill. A cache is therefore never rotated two ways, and a
generation that will cross original_max_position_embeddings uses the long factors from its first token — unlike
HF's Phi-3, which re-prefills the whole sequence when it crosses. Pass `rope` to override.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeInputs, rope_inputs


def decode(graphdef: nnx.GraphDef, state: nnx.State, prompt: jax.Array, rope: RopeInputs, rng: jax.Array,
           temperature: jax.Array, max_new_tokens: int, greedy: bool, stop_token: int = -1) -> jax.Array:
    """The traceable body of `generate` (prompt (B, P) -> (B, P + max_new_tokens)); stop_token -1 means none.
    Pure in (state, prompt, rope, rng), so callers may vmap it over ropes."""
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    cache = model.init_cache(b, p + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    # Prefill: only the last position's logits are needed; full (P × vocab) logits would be 6.4 GB at 32k.
    hidden, cache = model.hidden(prompt, positions, rope, cache)
    logits = jnp.einsum("be,ev->bv", hidden[:, -1], model.output_kernel().astype(hidden.dtype),
                        preferred_element_type=jnp.float32)

    def pick(logits, key):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)

    keys = jax.random.split(rng, max_new_tokens)  # one key per new token, whether or not decoding stops early
    first = pick(logits, keys[0])
    out = jnp.full((b, max_new_tokens), max(stop_token, 0), jnp.int32).at[:, 0].set(first)
    done = first == stop_token

    def unfinished(carry):
        i, _, _, _, done = carry
        return (i < max_new_tokens - 1) & ~jnp.all(done)

    def step(carry):
        # NNX variables must not cross trace levels, so the parameters ride in the carry (unchanged) and the
        # model is rebuilt inside the loop body instead of being closed over.
        i, out, cache, params, done = carry
        step_model = nnx.merge(graphdef, params)
        token = jax.lax.dynamic_slice_in_dim(out, i, 1, axis=1)
        logits, cache = step_model(token, jnp.full((b, 1), p + i, jnp.int32), rope, cache)
        nxt = pick(logits[:, -1], keys[i + 1])
        # A sequence that has stopped keeps emitting the stop token, so a batch ends as its slowest member does.
        nxt = jnp.where(done, jnp.int32(max(stop_token, 0)), nxt)
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i + 1, axis=1)
        return i + 1, out, cache, params, done | (nxt == stop_token)

    _, out, _, _, _ = jax.lax.while_loop(unfinished, step, (jnp.int32(0), out, cache, state, done))
    return jnp.concatenate([prompt, out], axis=1)


_generate = jax.jit(decode, static_argnames=("graphdef", "max_new_tokens", "greedy", "stop_token"))


def generate(model: Transformer, prompt: jax.Array, max_new_tokens: int, temperature: float = 0.0,
             rng: jax.Array | None = None, rope: RopeInputs | None = None,
             stop_token: int | None = None) -> jax.Array:
    """Prompt followed by `max_new_tokens` sampled tokens, int32 (B, P + max_new_tokens).

    temperature 0 means greedy. rope defaults to the model's spec at length P + max_new_tokens (see module doc).
    stop_token (e.g. the EOS id): decoding ends once every sequence has emitted it, and each sequence's tokens
    after its first stop token are the stop token; the tokens up to it are those a full-length decode gives.
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    total = prompt.shape[1] + max_new_tokens
    rope = rope if rope is not None else rope_inputs(model.cfg.rope, total)
    graphdef, state = nnx.split(model)
    rng = rng if rng is not None else jax.random.key(0)
    return _generate(graphdef, state, prompt, rope, rng, jnp.float32(max(temperature, 1e-6)),
                     max_new_tokens, temperature <= 0, -1 if stop_token is None else int(stop_token))
