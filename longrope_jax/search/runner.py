"""The search loop: seeds -> generations of candidates (chosen by `search.strategy`) -> best factors, resumable.

State (`<workdir>/search_state.json`, rewritten atomically after every round of scoring) holds the generation,
the scored population, the history and the candidates of the generation in flight. Per-document scores live in
the fitness cache, so a run killed at any point resumes where it stopped and, with the same seed, ends with the
same best factors as an uninterrupted run; the resumed run continues the remaining budget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from longrope_jax.progress import tqdm

from longrope_jax.errors import ConfigError
from longrope_jax.resume import JobState
from longrope_jax.search.fitness import FitnessEvaluator, perplexity_of
from longrope_jax.search.space import Candidate, SearchSpace
from longrope_jax.search.strategies import make_strategy

STATE = "search_state.json"


def evaluation_budget(search_cfg: Any) -> float:
    """Full-evaluation equivalents a search may spend (0: no limit but the generations): search.max_evaluations,
    or for a strategy other than the reference the reference's own count at these settings (population +
    generations × (mutants + crossovers)), so that switching strategy never spends more."""
    if search_cfg.get("max_evaluations"):
        return float(search_cfg.max_evaluations)
    if search_cfg.get("strategy", "reference") == "reference":
        return 0.0
    return float(int(search_cfg.population) + int(search_cfg.generations) *
                 (int(search_cfg.mutants) + int(search_cfg.crossovers)))


def _ranked(population: list[dict]) -> list[dict]:
    return sorted(population, key=lambda entry: (entry["fitness"], entry["key"]))


def run_generations(evaluator: FitnessEvaluator, space: SearchSpace, seeds: list[np.ndarray], search_cfg: Any,
                    workdir: Path, fingerprint: dict) -> dict:
    """Runs (or resumes) the search; returns the final state (population ranked best first, history, stats)."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = JobState(workdir / STATE, fingerprint, fix="use a new --workdir or remove it", version_of="search state")
    seed_keys = [space.key(space.project(np.asarray(s))) for s in seeds]
    state = job.load(lambda: {"generation": 0, "population": [], "history": [], "pending": None, "stats": {},
                              "seeds": seed_keys})
    if state.get("seeds", seed_keys) != seed_keys:
        raise ConfigError(f"{workdir / STATE} was seeded differently (search.seed_methods / search.seed_scales); use "
                          f"a new --workdir or restore the seed settings")
    base_key = jax.random.key(int(search_cfg.seed))
    generations = int(search_cfg.generations)
    budget = evaluation_budget(search_cfg)
    num_docs = evaluator.num_documents
    strategy = make_strategy(search_cfg, space, num_docs)
    bar = tqdm(total=generations + 1, initial=state["generation"], desc="search", unit="gen")

    def save() -> None:
        job.save(state)

    def spent() -> float:
        """Full-evaluation equivalents so far: the documents known for every distinct candidate / documents per
        candidate. In a fresh run this is documents scored / D; documents a warm cache serves count the same, so
        a rerun over a filled cache takes the same path and stops at the same point."""
        return sum(len(e["nll"]) for e in state.get("archive", [])) / num_docs

    while state["generation"] <= generations and not (budget and spent() >= budget):
        generation = state["generation"]
        key = jax.random.fold_in(base_key, generation)
        ranked = [Candidate.from_dict(e["candidate"]) for e in _ranked(state["population"])]
        if state["pending"] is None:
            if generation == 0:
                new = strategy.initial(key, seeds, state)
            else:
                # Every candidate ever scored is in the archive (states written before it existed list them
                # in "seen").
                seen = set(state.get("seen", [])) | {e["key"] for e in state.get("archive", [])} | \
                    {e["key"] for e in state["population"]}
                new = strategy.propose(key, ranked, seen, state)
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
        started = time.perf_counter()
        with tqdm(total=len(pending) * num_docs, desc=f"generation {generation}", unit="cand·doc",
                  leave=False) as items:
            evaluator.on_items = items.update
            results = strategy.score(evaluator, pending, threshold, best_per_doc, state)
            evaluator.on_items = None
        delta = {k: evaluator.stats[k] - before.get(k, 0) for k in evaluator.stats}
        delta["seconds"] = time.perf_counter() - started
        in_population = {e["key"] for e in state["population"]}
        archived = {e["key"]: e for e in state.setdefault("archive", [])}
        for cand_key, candidate in {space.key(c): c for c in pending}.items():
            nll = results[cand_key]
            entry = {"key": cand_key, "candidate": candidate.to_dict(), "nll": nll,
                     "fitness": perplexity_of(nll, num_docs)}
            if cand_key not in in_population:  # a candidate proposed again keeps its first entry
                state["population"].append(entry)
            if cand_key not in archived:
                state["archive"].append({"key": cand_key, "candidate": entry["candidate"], "nll": nll})
            elif len(nll) > len(archived[cand_key]["nll"]):
                archived[cand_key]["nll"] = nll
        strategy.observe(pending, results, state)
        # Truncation selection with elitism: keep the best `population` candidates.
        state["population"] = _ranked(state["population"])[:int(search_cfg.population)]
        fitness = [e["fitness"] for e in state["population"] if np.isfinite(e["fitness"])]
        for name, value in delta.items():
            state["stats"][name] = state["stats"].get(name, 0) + value
        state["history"].append({"generation": generation, "best": min(fitness), "median": float(np.median(fitness)),
                                 "evaluated": len(pending), "cost": spent(),
                                 "seconds": state["stats"]["seconds"]})
        state["pending"] = None
        state["generation"] = generation + 1
        save()
        bar.update(1)
        bar.set_postfix(best_ppl=f"{min(fitness):.3f}", evals=state["stats"].get("evaluations", 0),
                        cost=f"{spent():.0f}", cache_hits=state["stats"].get("cache_hits", 0))
    bar.close()
    return state


def best_candidate(state: dict) -> tuple[Candidate, float]:
    best = _ranked(state["population"])[0]
    return Candidate.from_dict(best["candidate"]), best["fitness"]
