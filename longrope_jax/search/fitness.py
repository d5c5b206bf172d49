"""Fitness of factor candidates: perplexity at the target length, batched, raced, and cached on disk.

Work is (candidate, document) items. Round r scores document r for every candidate still in the race, C items
per call of one compiled function (mapped over rope inputs and documents, `model.vmap_width` of them vectorised
at once; a short last chunk is padded by repetition, so the shapes never change and nothing recompiles). After
each round a candidate whose optimistic final score — its NLL so far plus, on the remaining documents, the best
NLL any fully scored candidate reached there — is worse than the current k-th best is dropped (racing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longrope_jax.errors import CheckpointError, ConfigError
from longrope_jax.eval.perplexity import map_candidates, resolve_vmap_width
from longrope_jax.model.context import ContextParallel, context_parallel
from longrope_jax.model.loss import scored_nll
from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import longrope_inputs
from longrope_jax.search.space import Candidate, SearchSpace


@functools.partial(jax.jit, static_argnames=("graphdef", "context", "vmap_width", "span"))
def _items_mean_nll(graphdef, state, tokens: jax.Array, weights: jax.Array, factors: jax.Array, n_hat: jax.Array,
                    original_inv_freq: jax.Array, attention_scale: jax.Array,
                    context: ContextParallel | None = None, vmap_width: int | None = None,
                    span: int | None = None) -> jax.Array:
    """(C,) weighted mean NLL of C (document, factors, n̂) items (`model.loss.scored_nll`).

    tokens (C, 1, L); weights (C, 1, L-1) per predicted token (all ones for perplexity, the answer tokens for
    needle-driven perplexity, whose last `span` targets alone go through the LM head); factors (C, d/2);
    n_hat (C,).
    """
    def one(params, item):
        doc, weight, lam, start = item
        rope = longrope_inputs(original_inv_freq, lam, attention_scale, start)
        return scored_nll(nnx.merge(graphdef, params), doc, rope, weight, span, context)[0]

    return map_candidates(one, state, (tokens, weights, factors, n_hat), vmap_width)


class FitnessCache:
    """Persistent {key: per-document NLLs} (sqlite), so no candidate is ever scored twice, across runs too."""

    def __init__(self, path: str | Path, namespace: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        try:
            with sqlite3.connect(self.path) as db:
                db.execute("CREATE TABLE IF NOT EXISTS fitness (key TEXT PRIMARY KEY, nll TEXT NOT NULL)")
                db.execute("SELECT COUNT(*) FROM fitness").fetchone()
        except sqlite3.DatabaseError as err:
            raise CheckpointError(f"fitness cache {self.path} is unreadable ({err}); delete it (scores are "
                                  f"recomputed) or point search.cache elsewhere") from None

    def _key(self, candidate_key: str) -> str:
        return hashlib.sha256(f"{self.namespace}|{candidate_key}".encode()).hexdigest()

    def get(self, candidate_key: str) -> list[float]:
        with sqlite3.connect(self.path) as db:
            row = db.execute("SELECT nll FROM fitness WHERE key = ?", (self._key(candidate_key),)).fetchone()
        return json.loads(row[0]) if row else []

    def put(self, candidate_key: str, nll: Sequence[float]) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute("INSERT OR REPLACE INTO fitness (key, nll) VALUES (?, ?)",
                       (self._key(candidate_key), json.dumps([float(v) for v in nll])))


# Bumped whenever what a cached score means changes (model identity, loss, rope formula): older cache rows and
# search states then never match a new key, and a resumed search is refused with a message instead of misread.
FITNESS_KEY_VERSION = 2


def model_identity(model: Transformer) -> str:
    """A digest of the model's config (without speed-only settings) and every byte of every parameter.

    Two models that differ anywhere (a width, one zeroed projection) never share fitness-cache rows; hashing
    135M float32 parameters takes about a second, next to minutes for one evaluation.
    """
    from longrope_jax.model.config import config_to_dict, without_speed_settings
    from longrope_jax.model.state import model_params

    digest = hashlib.sha256(repr(sorted(without_speed_settings(config_to_dict(model.cfg)).items())).encode())
    for name, value in sorted(model_params(model).items()):
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"|{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return digest.hexdigest()[:24]


class FitnessEvaluator:
    """Scores candidates on fixed documents (D, L) at one attention scale; fitness = exp(mean NLL over docs)."""

    def __init__(self, model: Transformer, documents: np.ndarray, space: SearchSpace, attention_scale: float,
                 original_inv_freq: np.ndarray, batch_size: int, cache: FitnessCache | None = None,
                 racing: bool = True, loss_mask: np.ndarray | None = None, mesh: jax.sharding.Mesh | None = None,
                 context_impl: str | None = None, vmap_width: int | str | None = "model",
                 base_factors: np.ndarray | None = None):
        """mesh: candidates split over its "data" axis, each document over its "context" axis (ring attention).

        base_factors: λ1 of a progressive stage; a candidate λ2 is scored as the λ2 ⊙ λ1 that is exported, with
        `original_inv_freq` the model's own frequencies (so the first n̂ positions use θ, as served).

        vmap_width: candidates vectorised at once inside a batch (`longrope_jax.eval.perplexity`); all of them when
        the batch is split over a data axis, whose devices each need their share at once. It and `context_impl`
        default to the model's `execution` settings.
        """
        self.graphdef, self.state = nnx.split(model)
        self.item_sharding = None
        self.context = context_parallel(mesh, context_impl or model.cfg.execution.context_attention)
        if mesh is not None:
            self.state = jax.device_put(self.state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        if mesh is not None and mesh.shape["data"] > 1:
            if int(batch_size) % mesh.shape["data"]:
                raise ConfigError(f"search.batch_size={batch_size} must be a multiple of the mesh's data axis "
                                  f"({mesh.shape['data']}) so every device scores the same number of candidates")
            self.item_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        self.vmap_width = resolve_vmap_width(vmap_width, model)  # checked even where the mesh overrides it
        if self.item_sharding is not None:
            self.vmap_width = None
        self.documents = np.asarray(documents, np.int32)
        # loss_mask (D, L) marks the tokens that count (needle answers); the target of position t is token t + 1.
        mask = np.ones(self.documents.shape, bool) if loss_mask is None else np.asarray(loss_mask, bool)
        self.weights = mask[:, 1:].astype(np.float32)
        # Needle documents: only targets from the earliest answer token on can count, so only they need logits.
        self.span = None if loss_mask is None else int(self.weights.shape[1] - self.weights.any(axis=0).argmax())
        self.space, self.cache, self.racing = space, cache, racing
        self.batch_size = max(1, int(batch_size))
        self.scale = jnp.float32(attention_scale)
        self.original_inv_freq = jnp.asarray(original_inv_freq, jnp.float32)
        self.base_factors = np.ones(len(original_inv_freq)) if base_factors is None else np.asarray(base_factors,
                                                                                                      np.float64)
        self.stats = {"evaluations": 0, "cache_hits": 0, "doc_evals": 0, "doc_evals_saved": 0}
        self.on_items: Callable[[int], None] | None = None  # progress hook: called with items scored per call

    @property
    def num_documents(self) -> int:
        return len(self.documents)

    def _score_items(self, items: list[tuple[Candidate, int]]) -> list[float]:
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            padded = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
            items_in = (self.documents[[d for _, d in padded]][:, None],
                        self.weights[[d for _, d in padded]][:, None],
                        np.stack([c.array * self.base_factors for c, _ in padded]).astype(np.float32),
                        np.asarray([c.n_hat for c, _ in padded], np.int32))
            # With a mesh, the candidate axis is split over its "data" axis: each device scores its own items.
            items_in = [jax.device_put(x, self.item_sharding) if self.item_sharding else jnp.asarray(x)
                        for x in items_in]
            nll = _items_mean_nll(self.graphdef, self.state, *items_in, self.original_inv_freq, self.scale,
                                  self.context, self.vmap_width, self.span)
            out += [float(v) for v in np.asarray(nll)[:len(chunk)]]
            self.stats["doc_evals"] += len(chunk)
            if self.on_items is not None:
                self.on_items(len(chunk))
        return out

    def evaluate(self, candidates: Sequence[Candidate], threshold: float | None = None,
                 best_per_doc: np.ndarray | None = None,
                 on_progress: Callable[[dict[str, list[float]]], None] | None = None,
                 max_documents: int | None = None) -> dict[str, list[float]]:
        """{candidate key: per-document NLLs} — complete lists, or shorter ones for candidates raced out.

        threshold: mean NLL of the current k-th best (a candidate provably-optimistically worse stops).
        best_per_doc: (D,) best NLL of any fully scored candidate per document (the optimistic completion).
        on_progress: called with the partial results after every round (for atomic state saves).
        max_documents: score only the first this many documents (a cheaper fidelity); a later call completes them.
        """
        space, d_total = self.space, self.num_documents
        results: dict[str, list[float]] = {}
        for candidate in candidates:
            key = space.key(candidate)
            results[key] = self.cache.get(key) if self.cache else []
            if results[key]:
                self.stats["cache_hits"] += 1
        by_key = {space.key(c): c for c in candidates}
        alive = set(by_key)
        for doc in range(min(d_total, max_documents or d_total)):
            if self.racing and threshold is not None and best_per_doc is not None and doc > 0:
                for key in sorted(alive):
                    nll = results[key]
                    if len(nll) == d_total:
                        continue
                    optimistic = (sum(nll[:doc]) + float(np.sum(best_per_doc[doc:]))) / d_total
                    if optimistic > threshold:
                        alive.discard(key)
                        self.stats["doc_evals_saved"] += d_total - len(nll)
            todo = [key for key in sorted(alive) if len(results[key]) == doc]
            # One compiled batch at a time, each cached as it ends: a run killed mid-round (a 32k batch can take
            # half an hour on CPU) loses at most the batch in flight.
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start:start + self.batch_size]
                for key, value in zip(batch, self._score_items([(by_key[k], doc) for k in batch])):
                    results[key].append(value)
                    if self.cache:
                        self.cache.put(key, results[key])
            if on_progress is not None:
                on_progress(results)
        self.stats["evaluations"] += len(candidates)
        return results


def perplexity_of(nll: Sequence[float], num_documents: int) -> float:
    """Fitness (perplexity) of complete per-document NLLs; inf for a candidate raced out early."""
    return float(np.exp(np.mean(nll))) if len(nll) == num_documents else float("inf")
