"""Search strategies: how each generation's candidates are chosen and scored. `search.strategy` picks one.

  reference      LongRoPE's genetic algorithm as published: population 64, 16 mutants + 16 crossovers of the top
                 32 per generation (`operators`).
  surrogate      the same operators make a large pool (`pool_size`) from the best `elite`; a Gaussian process
                 fitted on every evaluation so far (`surrogate`) ranks the pool by mean − κ·std, and only the
                 best `per_generation` are scored.
  cmaes          CMA-ES over the (knots + 1)-dimensional monotone curve family (`curves`), started at the best
                 seed; each sample is projected onto the space's grid and constraints. `cma_population` samples
                 per generation (0: CMA-ES's default 4 + 3 ln n).
  multifidelity  a pool of `screen_size` mutants and crossovers is scored on the first search document only (the
                 cheap fidelity); the best `per_generation` of them are scored on every document.

Every strategy draws randomness only from the key the runner passes in and keeps its own state in
`state["strategy"]` (JSON), so the runner's exact resume holds for all of them; racing and the fitness cache
are the runner's and the evaluator's and work the same for each.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from longrope_jax.errors import ConfigError
from longrope_jax.search import operators
from longrope_jax.search.cma import cma_ask, cma_init, cma_tell
from longrope_jax.search.curves import fit_knots, knot_curve
from longrope_jax.search.fitness import FitnessEvaluator
from longrope_jax.search.space import Candidate, SearchSpace
from longrope_jax.search.surrogate import features, fit_gp

Results = dict[str, list[float]]


def estimated_mean_nll(nll: list[float], doc_means: np.ndarray) -> float:
    """Mean NLL over all documents, estimated for a candidate scored on only the first len(nll) of them: its
    own mean plus how much harder the remaining documents are for the fully scored candidates (`doc_means`)."""
    if not nll:
        return float("inf")
    k = len(nll)
    if k >= len(doc_means):
        return float(np.mean(nll))
    return float(np.mean(nll) - np.mean(doc_means[:k]) + np.mean(doc_means))


def document_means(archive: list[dict], num_docs: int) -> np.ndarray:
    """(D,) mean NLL per document over the fully scored candidates of the archive (zeros when there are none)."""
    full = [e["nll"] for e in archive if len(e["nll"]) == num_docs]
    return np.mean(np.asarray(full), axis=0) if full else np.zeros(num_docs)


class Strategy:
    """The reference genetic algorithm; the other strategies override what differs."""

    name = "reference"

    def __init__(self, space: SearchSpace, search_cfg: Any, num_docs: int):
        self.space, self.cfg, self.num_docs = space, search_cfg, int(num_docs)
        self.p = float(search_cfg.mutation_p)

    def initial(self, key: jax.Array, seeds: list[np.ndarray], state: dict) -> list[Candidate]:
        return operators.initial_population(key, seeds, self.space, int(self.cfg.population), self.p)

    def propose(self, key: jax.Array, ranked: list[Candidate], seen: set[str], state: dict) -> list[Candidate]:
        return operators.next_candidates(key, ranked, self.space, seen, int(self.cfg.parents),
                                         int(self.cfg.mutants), int(self.cfg.crossovers), self.p)

    def score(self, evaluator: FitnessEvaluator, pending: list[Candidate], threshold: float | None,
              best_per_doc: np.ndarray | None, state: dict) -> Results:
        return evaluator.evaluate(pending, threshold, best_per_doc)

    def observe(self, pending: list[Candidate], results: Results, state: dict) -> None:
        """Updates state["strategy"] after a generation has been scored."""


class SurrogateStrategy(Strategy):
    name = "surrogate"

    def initial(self, key, seeds, state):
        return operators.initial_population(key, seeds, self.space, int(self.cfg.initial_size), self.p)

    def propose(self, key, ranked, seen, state):
        half = int(self.cfg.pool_size) // 2
        pool = operators.next_candidates(key, ranked, self.space, set(seen), int(self.cfg.elite), half,
                                         int(self.cfg.pool_size) - half, self.p)
        count = int(self.cfg.per_generation)
        archive = state.get("archive", [])
        doc_means = document_means(archive, self.num_docs)
        known = [(e, estimated_mean_nll(e["nll"], doc_means)) for e in archive]
        known = [(e, y) for e, y in known if np.isfinite(y)]
        if len(pool) <= count or len(known) < 2:
            return pool[:count]
        space = self.space
        max_n_hat = float(max(space.n_hat_choices)) if len(space.n_hat_choices) > 1 else 0.0

        def x_of(candidates: list[Candidate]) -> np.ndarray:
            return features(np.stack([c.array for c in candidates]), np.asarray([c.n_hat for c in candidates]),
                            space.upper, max_n_hat)

        model = fit_gp(x_of([Candidate.from_dict(e["candidate"]) for e, _ in known]),
                       np.asarray([y for _, y in known]))
        mean, std = model.predict(x_of(pool))
        order = np.argsort(mean - float(self.cfg.ucb_kappa) * std, kind="stable")
        return [pool[i] for i in order[:count]]


class MultiFidelityStrategy(SurrogateStrategy):
    name = "multifidelity"

    def propose(self, key, ranked, seen, state):
        half = int(self.cfg.screen_size) // 2
        return operators.next_candidates(key, ranked, self.space, set(seen), int(self.cfg.elite), half,
                                         int(self.cfg.screen_size) - half, self.p)

    def score(self, evaluator, pending, threshold, best_per_doc, state):
        if state["generation"] == 0:
            return evaluator.evaluate(pending, threshold, best_per_doc)
        cheap = evaluator.evaluate(pending, max_documents=1)
        keys = [self.space.key(c) for c in pending]
        order = sorted(range(len(pending)), key=lambda i: (cheap[keys[i]][0] if cheap[keys[i]] else np.inf, keys[i]))
        chosen = [pending[i] for i in order[:int(self.cfg.per_generation)]]
        full = evaluator.evaluate(chosen, threshold, best_per_doc)
        return {**cheap, **full}

    def observe(self, pending, results, state):
        # How well the cheap fidelity ranks: Spearman correlation of first-document NLL and the mean NLL over
        # every fully scored candidate so far.
        full = [e["nll"] for e in state.get("archive", []) if len(e["nll"]) == self.num_docs]
        if len(full) >= 3 and self.num_docs > 1:
            first = np.argsort(np.argsort([n[0] for n in full]))
            mean = np.argsort(np.argsort([np.mean(n) for n in full]))
            state.setdefault("strategy", {})["rank_agreement"] = float(np.corrcoef(first, mean)[0, 1])


class CMAStrategy(Strategy):
    name = "cmaes"

    def __init__(self, space: SearchSpace, search_cfg: Any, num_docs: int):
        super().__init__(space, search_cfg, num_docs)
        # A curve has at most one knot per frequency pair (a tiny test model has 4 pairs).
        self.knots = min(int(search_cfg.knots), space.half_dim)
        if int(search_cfg.get("cma_population", 0)) == 1:
            raise ConfigError("search.cma_population=1 leaves CMA-ES nothing to rank; use 0 (its default) or >= 2")

    def _n_hat_of(self, u: float) -> int:
        choices = self.space.n_hat_choices
        return choices[int(np.clip(np.round(u * (len(choices) - 1)), 0, len(choices) - 1))]

    def _candidate(self, z: np.ndarray) -> Candidate:
        knots = self.knots
        curve = knot_curve(z[:knots + 1], self.space.half_dim, self.space.lower, self.space.upper)
        n_hat = self._n_hat_of(float(z[knots + 1])) if len(z) > knots + 1 else 0
        return self.space.project(curve, n_hat)

    def initial(self, key, seeds, state):
        return operators.unique_new([self.space.project(s) for s in seeds], self.space, set())

    def propose(self, key, ranked, seen, state):
        strategy = state.setdefault("strategy", {})
        if "cma" not in strategy:
            best = ranked[0]
            z = fit_knots(best.array, self.knots, self.space.lower, self.space.upper)
            if len(self.space.n_hat_choices) > 1:
                z = np.concatenate([z, [self.space.n_hat_choices.index(best.n_hat) /
                                        (len(self.space.n_hat_choices) - 1)]])
            strategy["cma"] = cma_init(z, float(self.cfg.cma_sigma), int(self.cfg.get("cma_population", 0)))
        samples = cma_ask(strategy["cma"], operators.numpy_rng(key))
        strategy["samples"] = samples.tolist()
        return [self._candidate(z) for z in samples]

    def observe(self, pending, results, state):
        strategy = state.get("strategy", {})
        if "samples" not in strategy:
            return
        doc_means = document_means(state.get("archive", []), self.num_docs)
        fitness = [estimated_mean_nll(results[self.space.key(c)], doc_means) for c in pending]
        strategy["cma"] = cma_tell(strategy["cma"], np.asarray(strategy.pop("samples")), np.asarray(fitness))


STRATEGIES: dict[str, Callable[[SearchSpace, Any, int], Strategy]] = {
    s.name: s for s in (Strategy, SurrogateStrategy, CMAStrategy, MultiFidelityStrategy)}


def make_strategy(search_cfg: Any, space: SearchSpace, num_docs: int) -> Strategy:
    """The configured strategy for a search scoring each candidate on `num_docs` documents."""
    name = search_cfg.get("strategy", "reference")
    if name not in STRATEGIES:
        raise ConfigError(f"search.strategy={name!r}: use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, search_cfg, num_docs)
