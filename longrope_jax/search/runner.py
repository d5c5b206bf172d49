"""The evolutionary search loop: seeds -> generations of mutants + crossovers -> best factors, resumable.

State (`<workdir>/search_state.json`, rewritten atomically after every round of scoring) holds the generation,
the scored population, the history and the candidates of the generation in flight. Per-document scores live in
the fitness cache, so a run killed at any point resumes where it stopped and, with the same seed, ends with the
same best factors as an uninterrupted run; the resumed run continues the remaining budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from longrope_jax.errors import ConfigError
from longrope_jax.io import read_json, write_json_atomic
from longrope_jax.search import operators
from longrope_jax.search.fitness import FitnessEvaluator, perplexity_of
from longrope_jax.search.space import Candidate, SearchSpace

STATE = "search_state.json"


def _ranked(population: list[dict]) -> list[dict]:
    return sorted(population, key=lambda entry: (entry["fitness"], entry["key"]))


def run_generations(evaluator: FitnessEvaluator, space: SearchSpace, seeds: list[np.ndarray], search_cfg: Any,
                    workdir: Path, fingerprint: dict) -> dict:
    """Runs (or resumes) the search; returns the final state (population ranked best first, history, stats)."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = read_json(workdir / STATE)
    if state is not None and state.get("fingerprint", {}).get("version") != fingerprint.get("version"):
        raise ConfigError(f"{workdir / STATE} was written by another longrope-jax version (search state version "
                          f"{state.get('fingerprint', {}).get('version', 1)}, this one reads "
                          f"{fingerprint.get('version')}); its scores cannot be reused: remove it or use a new "
                          f"--workdir")
    if state is not None and state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{workdir / STATE} belongs to a search with different settings (model, data, length or "
                          f"search space); use a new --workdir or remove it")
    seed_keys = [space.key(space.project(np.asarray(s))) for s in seeds]
    if state is not None and state.get("seeds", seed_keys) != seed_keys:
        raise ConfigError(f"{workdir / STATE} was seeded differently (search.seed_methods / search.seed_scales); use "
                          f"a new --workdir or restore the seed settings")
    if state is None:
        state = {"fingerprint": fingerprint, "generation": 0, "population": [], "history": [], "pending": None,
                 "stats": {}, "seeds": seed_keys}
    base_key = jax.random.key(int(search_cfg.seed))
    generations = int(search_cfg.generations)
    num_docs = evaluator.num_documents
    bar = tqdm(total=generations + 1, initial=state["generation"], desc="search", unit="gen")

    def save(stats_delta: dict | None = None) -> None:
        for name, value in (stats_delta or {}).items():
            state["stats"][name] = state["stats"].get(name, 0) + value
        write_json_atomic(workdir / STATE, state)

    while state["generation"] <= generations:
        generation = state["generation"]
        key = jax.random.fold_in(base_key, generation)
        ranked = [Candidate.from_dict(e["candidate"]) for e in _ranked(state["population"])]
        if state["pending"] is None:
            if generation == 0:
                new = operators.initial_population(key, seeds, space, int(search_cfg.population),
                                                   float(search_cfg.mutation_p))
            else:
                seen = set(state.get("seen", [])) | {e["key"] for e in state["population"]}
                new = operators.next_candidates(key, ranked, space, seen, int(search_cfg.parents),
                                                int(search_cfg.mutants), int(search_cfg.crossovers),
                                                float(search_cfg.mutation_p))
            state["pending"] = [c.to_dict() for c in new]
            save()
        pending = [Candidate.from_dict(c) for c in state["pending"]]
        complete = [e for e in state["population"] if len(e["nll"]) == num_docs]
        threshold, best_per_doc = None, None
        k = int(search_cfg.parents)
        if len(complete) >= k:
            threshold = float(np.mean(_ranked(complete)[k - 1]["nll"]))
            best_per_doc = np.min(np.asarray([e["nll"] for e in complete]), axis=0)
        before = dict(evaluator.stats)
        with tqdm(total=len(pending) * num_docs, desc=f"generation {generation}", unit="cand·doc",
                  leave=False) as items:
            evaluator.on_items = items.update
            results = evaluator.evaluate(pending, threshold, best_per_doc)
            evaluator.on_items = None
        delta = {k: evaluator.stats[k] - before.get(k, 0) for k in evaluator.stats}
        for candidate in pending:
            cand_key = space.key(candidate)
            nll = results[cand_key]
            state["population"].append({"key": cand_key, "candidate": candidate.to_dict(), "nll": nll,
                                        "fitness": perplexity_of(nll, num_docs)})
        state.setdefault("seen", [])
        state["seen"] = sorted(set(state["seen"]) | {space.key(c) for c in pending})
        # Truncation selection with elitism: keep the best `population` candidates.
        state["population"] = _ranked(state["population"])[:int(search_cfg.population)]
        fitness = [e["fitness"] for e in state["population"] if np.isfinite(e["fitness"])]
        state["history"].append({"generation": generation, "best": min(fitness), "median": float(np.median(fitness)),
                                 "evaluated": len(pending)})
        state["pending"] = None
        state["generation"] = generation + 1
        save(delta)
        bar.update(1)
        bar.set_postfix(best_ppl=f"{min(fitness):.3f}", evals=state["stats"].get("evaluations", 0),
                        cache_hits=state["stats"].get("cache_hits", 0))
    bar.close()
    return state


def best_candidate(state: dict) -> tuple[Candidate, float]:
    best = _ranked(state["population"])[0]
    return Candidate.from_dict(best["candidate"]), best["fitness"]
