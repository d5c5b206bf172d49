"""LM head + cross-entropy in sequence chunks: full (L × vocab) logits never exist when only the loss is needed."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from longrope_jax.model.context import ContextParallel, context_nll
from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeInputs, rope_inputs


def chunked_token_nll(hidden: jax.Array, output_kernel: jax.Array, targets: jax.Array, chunk: int) -> jax.Array:
    """Per-token negative log-likelihood.

    Args:
      hidden: (B, L, E) final hidden states.
      output_kernel: (E, V) projection to the vocabulary.
      targets: int (B, L) next-token ids.
      chunk: tokens per chunk; peak logits memory is B·chunk·V float32.

    Returns:
      float32 (B, L) NLL.
    """
    b, l, e = hidden.shape
    chunk = min(chunk, l)
    pad = (-l) % chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = hidden.shape[1] // chunk
    h_chunks = jnp.moveaxis(hidden.reshape(b, n, chunk, e), 1, 0)
    t_chunks = jnp.moveaxis(targets.reshape(b, n, chunk), 1, 0)

    @jax.checkpoint  # the backward pass recomputes a chunk's logits instead of storing all of them
    def one_chunk(args):
        h, t = args
        logits = jnp.einsum("bce,ev->bcv", h, output_kernel.astype(h.dtype), preferred_element_type=jnp.float32)
        target_logit = jnp.take_along_axis(logits, t[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target_logit

    nll = jax.lax.map(one_chunk, (h_chunks, t_chunks))  # (n, B, chunk)
    return jnp.moveaxis(nll, 0, 1).reshape(b, n * chunk)[:, :l]


def sequence_nll(model: Transformer, tokens: jax.Array, positions: jax.Array | None = None,
                 rope: RopeInputs | None = None, context: ContextParallel | None = None) -> jax.Array:
    """NLL of tokens[:, 1:] given their prefixes, float32 (B, L-1); memory linear in L.

    rope defaults to the model's spec at length L (as HF computes it for a forward over all L tokens).
    context: split the sequence over a mesh's context axis (ring attention, load-balanced); same result.
    """
    rope = rope if rope is not None else rope_inputs(model.cfg.rope, tokens.shape[1])
    if context is not None:
        return context_nll(model, tokens, rope, context, positions)
    hidden, _ = model.hidden(tokens[:, :-1], None if positions is None else positions[:, :-1], rope)
    return chunked_token_nll(hidden, model.output_kernel(), tokens[:, 1:], model.cfg.execution.loss_chunk)


def scored_nll(model: Transformer, tokens: jax.Array, rope: RopeInputs, weights: jax.Array | None = None,
               span: int | None = None, context: ContextParallel | None = None) -> jax.Array:
    """Mean NLL per row (B,) of tokens[:, 1:] given their prefixes: the one scoring rule of the search's fitness
    and of evaluation (perplexity, needle-driven perplexity).

    weights (B, L-1): how much each target counts (None: all alike; the answer tokens for LongRoPE2's
    needle-driven perplexity). span (static): only the last `span` targets carry weight, so the LM head runs over
    those alone (the haystack's hidden states are needed, its logits are not); None: every target. Under context
    parallelism every target is scored (the head is split with the sequence).
    """
    if span is None or context is not None:
        nll = sequence_nll(model, tokens, rope=rope, context=context)
    else:
        hidden, _ = model.hidden(tokens[:, :-1], rope=rope)
        nll = chunked_token_nll(hidden[:, -span:], model.output_kernel(), tokens[:, -span:],
                                model.cfg.execution.loss_chunk)
        weights = None if weights is None else weights[:, -span:]
    if weights is None:
        return nll.mean(axis=-1)
    return jnp.sum(nll * weights, axis=-1) / jnp.sum(weights, axis=-1)

