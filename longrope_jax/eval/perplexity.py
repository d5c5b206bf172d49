"""Perplexity at length L, batched over rope candidates: the search's fitness and the evaluation's main metric.

One compiled function takes the model state, one document (1, L) and a stack of C `RopeInputs` (leading axis C)
and returns the C mean NLLs. Memory is linear in L (blockwise attention and chunked loss) and grows with the
number of candidates vectorised at once.

`vmap_width` (config `model.vmap_width`) is that number: the C candidates go through `jax.vmap` in chunks of
`vmap_width`, one chunk after another in a `lax.scan` inside the same compiled function (`map_candidates`).
"auto" is all of them on GPU/TPU, where one candidate leaves the chip idle, and one at a time on CPU, where a
single candidate's forward already saturates every core and vmapping three of them measured 15% slower per
candidate (3x the activations through the same caches).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax.sharding import NamedSharding, PartitionSpec

from longrope_jax.model.context import ContextParallel
from longrope_jax.model.execution import Execution
from longrope_jax.model.loss import chunked_token_nll, scored_nll
from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeInputs, RopeSpec, rope_inputs


def stack_ropes(ropes: Sequence[RopeInputs]) -> RopeInputs:
    """C RopeInputs -> one RopeInputs whose leaves have a leading candidate axis C."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *ropes)


def spec_ropes(specs: Sequence[RopeSpec], length: int) -> RopeInputs:
    """Stacked RopeInputs of several specs at one evaluated length (any mix of rope types)."""
    return stack_ropes([rope_inputs(spec, length) for spec in specs])


def default_vmap_width(backend: str | None = None) -> int | None:
    """Candidates vectorised at once for "auto": 1 on CPU, all of them (None) on accelerators."""
    return 1 if (backend or jax.default_backend()) == "cpu" else None


def resolve_vmap_width(vmap_width: int | str | None, model: Transformer | None = None) -> int | None:
    """"auto" -> default_vmap_width(); None or 0 -> all candidates at once; n >= 1 -> n at a time; "model" (with
    `model`) -> the model's own `execution.vmap_width`."""
    if vmap_width == "model" and model is not None:
        vmap_width = model.cfg.execution.vmap_width
    if vmap_width == "auto":
        return default_vmap_width()
    if vmap_width is None:
        return None
    Execution(vmap_width=vmap_width)  # the one check of the setting's form
    return int(str(vmap_width).strip()) or None


def map_candidates(fn: Callable[[Any, Any], Any], shared: Any, xs: Any, vmap_width: int | None) -> Any:
    """fn(shared, x) over the leading (candidate) axis of the pytree xs: `vmap_width` at a time, all when None.

    `shared` (the model state) goes to every call unbatched: through vmap as an unmapped argument and through the
    scan over chunks as an unchanged carry, since NNX variables may not be closed over across trace levels. Every
    width gives the same values (to float rounding); only speed and memory differ.
    """
    count = jax.tree.leaves(xs)[0].shape[0]
    batched = jax.vmap(fn, in_axes=(None, 0))
    if vmap_width is None or vmap_width >= count:
        return batched(shared, xs)
    chunks = -(-count // vmap_width)
    pad = chunks * vmap_width - count  # a ragged last chunk repeats the last candidate: one compiled body only

    def chunked(x):
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
        return x.reshape(chunks, vmap_width, *x.shape[1:])

    _, out = jax.lax.scan(lambda carry, chunk: (carry, batched(carry, chunk)), shared, jax.tree.map(chunked, xs))
    return jax.tree.map(lambda y: y.reshape(chunks * vmap_width, *y.shape[2:])[:count], out)


def perplexity_table(model: Transformer, documents: np.ndarray, specs: Mapping[str, RopeSpec]) -> dict[str, float]:
    """{name: perplexity of `documents` (int32 (D, L)) under specs[name]}, every spec through one compiled call:
    the per-method comparison the search verdict, the bench and the pipeline report show."""
    values = PerplexityEvaluator(model).perplexity(np.asarray(documents), list(specs.values()))
    return {name: float(value) for name, value in zip(specs, values)}


@functools.partial(jax.jit, static_argnames=("graphdef", "context", "vmap_width"))
def _candidates_mean_nll(graphdef, state, tokens: jax.Array, ropes: RopeInputs,
                         context: ContextParallel | None = None, vmap_width: int | None = None) -> jax.Array:
    def one(params, rope):
        return scored_nll(nnx.merge(graphdef, params), tokens, rope, context=context)  # (B,)

    return map_candidates(one, state, ropes, vmap_width)  # (C, B)


class PerplexityEvaluator:
    """Mean NLL of documents under many rope candidates, compiled once per (document length, candidate count)."""

    def __init__(self, model: Transformer, context: ContextParallel | None = None,
                 vmap_width: int | str | None = "model"):
        """context: split each document over a mesh's context axis (ring attention) — for lengths one device
        cannot hold; the parameters are replicated over that mesh. vmap_width: see the module doc ("model": the
        model's `execution.vmap_width`)."""
        self.graphdef, self.state = nnx.split(model)
        self.cfg, self.context = model.cfg, context
        self.vmap_width = resolve_vmap_width(vmap_width, model)
        if context is not None:
            self.state = jax.device_put(self.state, NamedSharding(context.mesh, PartitionSpec()))

    def mean_nll(self, documents: np.ndarray, ropes: RopeInputs, progress=None) -> np.ndarray:
        """(C, D) mean NLL per candidate and document.

        documents: int32 (D, L); ropes: RopeInputs with leading axis C. Documents run one at a time (memory), every
        call reusing the same compiled function. `progress` (optional) is called after each document.
        """
        documents = np.asarray(documents, np.int32)
        out = []
        for document in documents:
            out.append(np.asarray(_candidates_mean_nll(self.graphdef, self.state, jnp.asarray(document[None]),
                                                       ropes, self.context, self.vmap_width))[:, 0])
            if progress is not None:
                progress()
        return np.stack(out, axis=1)

    def perplexity(self, documents: np.ndarray, specs: Sequence[RopeSpec]) -> np.ndarray:
        """(C,) perplexity exp(mean over documents of mean NLL) for rope specs evaluated at the documents' length."""
        nll = self.mean_nll(documents, spec_ropes(specs, documents.shape[1]))
        return np.exp(nll.mean(axis=1))


@functools.partial(jax.jit, static_argnames=("graphdef", "window"))
def _window_nll(graphdef, state, window_tokens: jax.Array, rope: RopeInputs, window: int) -> jax.Array:
    model = nnx.merge(graphdef, state)
    hidden, _ = model.hidden(window_tokens[:, :-1], rope=rope)
    return chunked_token_nll(hidden, model.output_kernel(), window_tokens[:, 1:], model.cfg.execution.loss_chunk)[0]


def sliding_window_nll(model: Transformer, tokens: np.ndarray, window: int, stride: int,
                       spec: RopeSpec | None = None) -> float:
    """Mean NLL of a long token sequence scored in windows of `window` tokens moved by `stride` (HF's recipe).

    Each window is a fresh sequence (positions from 0); only the tokens not scored by the previous window count,
    so every token after the first is scored once, with up to window − stride tokens of context.
    """
    tokens = np.asarray(tokens, np.int32)
    if stride < 1 or stride > window:
        raise ValueError(f"stride must be in [1, window]; got stride={stride}, window={window}")
    graphdef, state = nnx.split(model)
    rope = rope_inputs(spec or model.cfg.rope, window)
    total, count, scored_until = 0.0, 0, 0
    for start in range(0, max(len(tokens) - 1, 1), stride):
        end = min(start + window, len(tokens))
        if end - start < 2:
            break
        chunk = np.zeros(window, np.int32)
        chunk[: end - start] = tokens[start:end]
        nll = np.asarray(_window_nll(graphdef, state, jnp.asarray(chunk[None]), rope, window))
        first_new = max(scored_until, start + 1) - (start + 1)  # index into nll of the first unscored target
        valid = end - start - 1
        total += float(nll[first_new:valid].sum())
        count += valid - first_new
        scored_until = end
        if end == len(tokens):
            break
    return total / count
