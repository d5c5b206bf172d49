"""LongRoPE2's needle-driven perplexity: NLL of a hidden magic number's answer tokens after a long haystack.

Each sample is a window of real text with "The special magic number is {n}." inserted at some depth, ending in
"What is the special magic number? The special magic number is {n}"; only the answer's digit tokens are scored.
Unlike the reference implementation:
  * the question and answer are built first and the haystack is filled to exactly `length` tokens around them,
    so the answer is always the last tokens and is never truncated away;
  * samples rotate over all the given texts (not one book) and over the depths;
  * BOS is added at most once, explicitly (texts are encoded without it; stray BOS ids are removed).
Scoring runs `model.hidden` and the chunked LM head over only the answer span, batched over rope candidates.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from longrope_jax.errors import ConfigError, DataError
from longrope_jax.eval.perplexity import map_candidates, resolve_vmap_width, stack_ropes
from longrope_jax.model.loss import scored_nll
from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeInputs

NEEDLE = "The special magic number is {n}."
QUESTION = "What is the special magic number? The special magic number is"
NUMBER_RANGE = (1_000_000, 9_999_999)  # 7 digits, inclusive
_SNAP = 32  # tokens searched either side of the requested depth for a sentence end to insert the needle after


@dataclasses.dataclass(frozen=True)
class NeedleBatch:
    """Needle samples.

    tokens: int32 (count, length). loss_mask: bool (count, length), True exactly on the answer's tokens (the last
    ones). numbers: int64 (count,) magic numbers. depths: float64 (count,) requested depths. sources: (count, 2)
    int64 of (text index, first haystack token's offset in that text's token ids). needle_starts: int64 (count,)
    token index where the needle sentence begins.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    numbers: np.ndarray
    depths: np.ndarray
    sources: np.ndarray
    needle_starts: np.ndarray


def _answer_span(tokenizer: Tokenizer, tail: list[int], number: int) -> int:
    """How many final tokens of `tail` spell the number: the fewest whose decoding, stripped, is its digits.

    A lone leading-space token (tokenizers that split digits off the space) is therefore left out of the mask,
    while a space merged into the first digit's token cannot be and stays in.
    """
    for k in range(1, len(tail) + 1):
        if tokenizer.decode(tail[-k:]).strip() == str(number):
            return k
    raise DataError(f"the tokenizer does not round-trip the magic number {number}; cannot locate answer tokens")


def _snap_to_sentence(tokenizer: Tokenizer, haystack: np.ndarray, position: int) -> int:
    """The insertion point nearest `position` that follows a sentence end, or `position` if none is close."""
    lo, hi = max(1, position - _SNAP), min(len(haystack), position + _SNAP)
    ends = [i for i in range(lo, hi + 1) if tokenizer.decode([int(haystack[i - 1])]).rstrip(" ").endswith(
        (".", "!", "?", "\n"))]
    return min(ends, key=lambda i: abs(i - position)) if ends else position


def needle_documents(tokenizer: Tokenizer, texts: Sequence[str], length: int, count: int,
                     depths: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), seed: int = 0,
                     bos_id: int | None = None) -> NeedleBatch:
    """`count` needle samples of exactly `length` tokens each.

    Sample k takes text k % len(texts) and depth depths[(k // len(texts) + k % len(texts)) % len(depths)], so the
    first len(texts) · len(depths) samples cover every (text, depth) pair. The haystack is a seeded random window
    of the text's tokens; the needle goes in after the sentence end nearest depth · haystack length.
    """
    if not texts:
        raise ConfigError("needle_documents needs at least one text")
    if count < 1 or not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ConfigError(f"need count >= 1 and depths in [0, 1]; got count={count}, depths={list(depths)}")
    rng = np.random.default_rng(seed)
    encoded = []
    for text in texts:
        ids = np.asarray(tokenizer.encode(text).ids, np.int64)
        encoded.append(ids[ids != bos_id] if bos_id is not None else ids)  # a BOS inside a text is not a start
    bos = [] if bos_id is None else [int(bos_id)]
    question = tokenizer.encode(" " + QUESTION).ids
    tokens, masks, numbers, chosen_depths, sources, starts = [], [], [], [], [], []
    for k in range(count):
        t = k % len(texts)
        depth = float(depths[(k // len(texts) + t) % len(depths)])
        number = int(rng.integers(NUMBER_RANGE[0], NUMBER_RANGE[1] + 1))
        # Tail first: question + answer are fixed, so the haystack is what gets sized, never the answer.
        tail = question + tokenizer.encode(" " + str(number)).ids
        span = _answer_span(tokenizer, tail, number)
        needle = tokenizer.encode(" " + NEEDLE.format(n=number)).ids
        room = length - len(bos) - len(needle) - len(tail)
        if room < 1:
            raise DataError(f"length {length} leaves no room for a haystack (needle + question take "
                            f"{length - room} tokens); use a longer length")
        source = encoded[t]
        if len(source) < room:
            raise DataError(f"text {t} has {len(source)} tokens but a needle sample of length {length} needs "
                            f"{room} haystack tokens; lower the length or pass longer texts")
        start = int(rng.integers(0, len(source) - room + 1))
        haystack = source[start:start + room]
        cut = _snap_to_sentence(tokenizer, haystack, int(round(depth * room)))
        sample = np.concatenate([bos, haystack[:cut], needle, haystack[cut:], tail]).astype(np.int32)
        mask = np.zeros(length, bool)
        mask[length - span:] = True
        tokens.append(sample)
        masks.append(mask)
        numbers.append(number)
        chosen_depths.append(depth)
        sources.append((t, start))
        starts.append(len(bos) + cut)
    return NeedleBatch(np.stack(tokens), np.stack(masks), np.asarray(numbers, np.int64),
                       np.asarray(chosen_depths), np.asarray(sources, np.int64), np.asarray(starts, np.int64))


@functools.partial(jax.jit, static_argnames=("graphdef", "span", "vmap_width"))
def _candidates_needle_nll(graphdef, state, tokens: jax.Array, mask: jax.Array, ropes: RopeInputs,
                           span: int, vmap_width: int | None = None) -> jax.Array:
    def one(params, rope):
        # Only the last `span` targets can be answer tokens: the LM head never runs over the haystack.
        return scored_nll(nnx.merge(graphdef, params), tokens, rope, mask[:, 1:].astype(jnp.float32), span)  # (B,)

    return map_candidates(one, state, ropes, vmap_width)  # (C, B)


def needle_nll(model: Transformer, batch: NeedleBatch, ropes: RopeInputs, progress=None,
               vmap_width: int | str | None = "model") -> np.ndarray:
    """Mean NLL over each sample's answer tokens, float32 (C, count).

    ropes: RopeInputs with a leading candidate axis C (e.g. `spec_ropes(specs, length)`); an unstacked one is
    treated as C = 1. Samples run one at a time (memory is linear in length, times C) through one compiled
    function; `progress` (optional) is called after each. vmap_width: candidates vectorised at once
    (`longrope_jax.eval.perplexity`).
    """
    tokens = np.asarray(batch.tokens, np.int32)
    mask = np.asarray(batch.loss_mask, bool)
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ConfigError(f"tokens {tokens.shape} and loss_mask {mask.shape} must be the same (count, length)")
    if mask[:, 0].any() or not mask.any(axis=1).all():
        raise ConfigError("every loss_mask row needs answer tokens, and token 0 (no prefix) cannot be one")
    if np.ndim(ropes.attention_scale) == 0:
        ropes = stack_ropes([ropes])
    # Static span from the earliest answer token in the batch: one compile serves every sample.
    span = tokens.shape[1] - int(mask.argmax(axis=1).min())
    graphdef, state = nnx.split(model)
    vmap_width = resolve_vmap_width(vmap_width, model)
    out = []
    for row, row_mask in zip(tokens, mask):
        nll = _candidates_needle_nll(graphdef, state, jnp.asarray(row[None]), jnp.asarray(row_mask[None]),
                                     ropes, span, vmap_width)
        out.append(np.asarray(nll)[:, 0])
        if progress is not None:
            progress()
    return np.stack(out, axis=1)
