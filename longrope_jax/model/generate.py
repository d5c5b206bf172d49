"""KV-cache decoding: one prefill of the prompt, then one token per step inside a compiled `lax.scan`.

Short/long factor policy: the rope factors are fixed per sequence from its planned total length
(prompt + max_new_tokens), chosen once before prefill. A cache is therefore never rotated two ways, and a
generation that will cross original_max_position_embeddings uses the long factors from its first token — unlike
HF's Phi-3, which re-prefills the whole sequence when it crosses. Pass `rope` to override.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeInputs, rope_inputs


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy"))
def _generate(graphdef, state, prompt, rope, rng, temperature, max_new_tokens: int, greedy: bool):
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    cache = model.init_cache(b, p + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    # Prefill: only the last position's logits are needed; full (P × vocab) logits would be 6.4 GB at 32k.
    hidden, cache = model.hidden(prompt, positions, rope, cache)
    logits = jnp.einsum("be,ev->bv", hidden[:, -1], model.output_kernel().astype(hidden.dtype),
                        preferred_element_type=jnp.float32)[:, None]

    def pick(logits, key):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)

    keys = jax.random.split(rng, max_new_tokens)
    first = pick(logits[:, -1], keys[0])

    def step(carry, key):
        # NNX variables must not cross trace levels, so the parameters ride in the carry (unchanged) and the
        # model is rebuilt inside the scan body instead of being closed over.
        token, position, cache, params = carry
        step_model = nnx.merge(graphdef, params)
        logits, cache = step_model(token[:, None], jnp.full((b, 1), position, jnp.int32), rope, cache)
        nxt = pick(logits[:, -1], key)
        return (nxt, position + 1, cache, params), token

    (last, _, _, _), tokens = jax.lax.scan(step, (first, jnp.int32(p), cache, state), keys[1:])
    generated = jnp.concatenate([tokens.T, last[:, None]], axis=1)
    return jnp.concatenate([prompt, generated], axis=1)


def generate(model: Transformer, prompt: jax.Array, max_new_tokens: int, temperature: float = 0.0,
             rng: jax.Array | None = None, rope: RopeInputs | None = None) -> jax.Array:
    """Prompt followed by `max_new_tokens` sampled tokens, int32 (B, P + max_new_tokens).

    temperature 0 means greedy. rope defaults to the model's spec at length P + max_new_tokens (see module doc).
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    total = prompt.shape[1] + max_new_tokens
    rope = rope if rope is not None else rope_inputs(model.cfg.rope, total)
    graphdef, state = nnx.split(model)
    rng = rng if rng is not None else jax.random.key(0)
    return _generate(graphdef, state, prompt, rope, rng, jnp.float32(max(temperature, 1e-6)),
                     max_new_tokens, temperature <= 0)
