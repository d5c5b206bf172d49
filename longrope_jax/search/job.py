"""`experiments.search`: everything around the loop — model, data splits, seeds, cache, outputs and the verdict.

Outputs in the workdir: factors.json, factors.csv (one λ per line, the reference format), rope_scaling.json
(HF longrope block), factors.png (best λ vs PI/NTK/YaRN), fitness.png (best/median per generation) and
summary.json (target, budget, search and held-out documents, per-method perplexity on the held-out documents).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from longrope_jax.cache import cache_dir
from longrope_jax.data.documents import first_documents, random_windows
from longrope_jax.errors import ConfigError
from longrope_jax.data.sources import check_splits_apart, load_token_documents, text_source
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval import plots
from longrope_jax.eval.perplexity import perplexity_table
from longrope_jax.settings import as_list
from longrope_jax.io import write_json_atomic, write_text_atomic
from longrope_jax.data.settings import DataSettings
from longrope_jax.loading import ModelSection, load_from_config
from longrope_jax.rope import RopeSpec, longrope_spec
from longrope_jax.rope.factors import method_factors_table
from longrope_jax.rope.registry import classic_methods
from longrope_jax.sharding import make_mesh
from longrope_jax.search.fitness import (FITNESS_KEY_VERSION, FitnessCache, FitnessEvaluator, fingerprint,
                                         model_identity, perplexity_of)
from longrope_jax.search.runner import best_candidate, run_generations
from longrope_jax.search.settings import SearchSettings
from longrope_jax.search.space import space_from_config, space_is_monotone

SEED_METHODS = ("pi", "ntk", "yarn")
# The verdict row for n̂ > 0 factors as transformers, vLLM and llama.cpp serve them (they ignore n̂).
SERVED_WITHOUT_N_HAT = "searched, served without n_hat (hf, gguf)"
SEEDABLE = tuple(classic_methods())


def seed_factors(seed_base: RopeSpec, target: int, methods=SEED_METHODS, scales=(1.0,)) -> dict[str, np.ndarray]:
    """λ of the seed methods sized for each length `target · scale` ("yarn" at the target itself, "yarn@40960"
    otherwise): classic methods sized for a longer context than the target are often better at the target, and
    the search space's upper bound (1.25·s by default) admits them (larger factors are clipped to it)."""
    methods, scales = list(methods), [float(x) for x in scales]
    unknown = [m for m in methods if m not in SEEDABLE]
    if unknown or not methods or not scales or min(scales) <= 0:
        raise ConfigError(f"search.seed_methods={methods} / search.seed_scales={scales} give no valid seeds; use "
                          f"methods from {', '.join(SEEDABLE)} and positive scales, e.g. "
                          "--config.search.seed_methods=pi,ntk,yarn --config.search.seed_scales=1.0,1.25")
    seeds: dict[str, np.ndarray] = {}
    for length in dict.fromkeys(int(round(target * scale)) for scale in scales):
        suffix = "" if length == target else f"@{length}"
        for name, factors in method_factors_table(seed_base, length, tuple(methods)).items():
            seeds[name + suffix] = np.asarray(factors)
    return seeds


def scaled_budget(search_cfg: Any) -> dict[str, int]:
    """Population / generations / parents / mutants / crossovers after `evo_scale` (small budgets keep ratios)."""
    scale = float(search_cfg.evo_scale)
    size = {k: max(1, int(round(int(search_cfg[k]) * scale)))
            for k in ("population", "parents", "mutants", "crossovers")}
    size["population"] = max(size["population"], 4)
    size["parents"] = min(max(size["parents"], 2), size["population"])
    size["generations"] = max(0, int(round(int(search_cfg.generations) * scale)))
    return size


STRATEGY_FIELDS = ("strategy", "max_evaluations", "initial_size", "per_generation", "pool_size", "screen_size",
                   "elite", "knots", "cma_sigma", "ucb_kappa")


def strategy_settings(search_cfg: Any) -> dict:
    """The settings a non-reference strategy (or an evaluation budget) depends on: part of the state's identity
    (cma_population only when set, so states written before it existed still resume)."""
    settings = {name: search_cfg.get(name) for name in STRATEGY_FIELDS}
    if search_cfg.get("cma_population"):
        settings["cma_population"] = int(search_cfg.cma_population)
    return settings


def windows_seed(search_cfg: Any) -> int:
    """Seed of the search windows: search.windows_seed, or search.seed when it is negative (the default), so
    searches with different RNG seeds can be scored on the same windows."""
    seed = int(search_cfg.get("windows_seed", -1))
    return int(search_cfg.seed) if seed < 0 else seed


def search_mesh(search_cfg: Any) -> Mesh | None:
    """(data, context) mesh: candidates over `search.data_parallel` devices, each document's tokens over
    `search.context_parallel` (ring attention, for targets one device cannot hold); None on one device."""
    data, context = int(search_cfg.data_parallel), int(search_cfg.get("context_parallel", 1))
    return make_mesh(data=data, context=context) if data * context > 1 else None


@dataclasses.dataclass(frozen=True)
class SearchTarget:
    """What a search extends the model to: decided by its caller, not read from config.search inside the search.

    `experiments.search` takes it from the search section (`from_settings`); the pipeline decides it per stage.
    length: the length the fitness is measured at; scale_target: the final long context whose attention scale
    every stage uses (0: `length`); base_factors: a factor file with λ1 of a progressive stage ("" for none),
    searched for base_length tokens (0: the native length); verdict_documents: held-out documents the result is
    judged on (0: no verdict).
    """

    length: Any
    scale_target: int = 0
    base_factors: str = ""
    base_length: int = 0
    verdict_documents: int = 0

    @classmethod
    def from_settings(cls, search: Any) -> "SearchTarget":
        return cls(search.get("target_length"), int(search.get("scale_target", 0) or 0),
                   str(search.get("base_factors", "") or ""), int(search.get("base_length", 0) or 0),
                   int(search.get("verdict_documents", 0) or 0))

    def check(self, original_length: int) -> None:
        target = self.length
        if not isinstance(target, int) or isinstance(target, bool) or target < original_length:
            raise ConfigError(f"search.target_length={target!r} must be an integer of at least the model's native "
                              f"length {original_length} (above it for long factors, equal for short ones); e.g. "
                              f"--config.search.target_length={2 * original_length}")

    def settings(self) -> dict[str, Any]:
        """As search-section fields (what a stage fingerprint records)."""
        return {"target_length": self.length, "scale_target": self.scale_target, "base_factors": self.base_factors,
                "base_length": self.base_length, "verdict_documents": self.verdict_documents}


def run_search(config: Any, workdir: str | Path, model_bundle=None, goal: SearchTarget | None = None) -> dict:
    """Searches LongRoPE factors for `goal` (default: the one config.search names); returns summary.json's content.

    config: the `JobSettings` a CLI parsed (`parse_job`), or any config with model (unless `model_bundle` is
    given), data and search sections, parsed here; the search section's target fields are ignored when `goal` is
    given. Everything below takes the typed sections it uses.
    """
    from longrope_jax.rope import default_inv_freq

    workdir = Path(workdir)
    search = SearchSettings.parse(config.search)  # checked before a model is read or the workdir touched
    data, model_section = DataSettings.parse(config.data), ModelSection.parse(config.model)
    goal = goal or SearchTarget.from_settings(search)
    search_cfg = search.replace(**scaled_budget(search))
    model, cfg, tokenizer = model_bundle or load_from_config(model_section)
    base = cfg.rope
    original = base.original_length
    goal.check(original)
    target = int(goal.length)
    mscale = _attention_scale(base, goal.scale_target or target)
    base_factors, base_length = _base_factors(goal, base)
    space = space_from_config(search_cfg, base.half_dim, max(target / base_length, 1.0), base.rotary_dim,
                              base.theta, original)
    documents, loss_mask, used = _search_documents(data, search_cfg, cfg, tokenizer, target)
    seed_base = RopeSpec(head_dim=base.head_dim, theta=base.theta, partial_rotary_factor=base.partial_rotary_factor,
                         max_position_embeddings=base_length)
    seed_table = seed_factors(seed_base, target, as_list(search_cfg.seed_methods), as_list(search_cfg.seed_scales))
    # longrope2's own starting family, as much of it as the population leaves room for (8 at most, as LongRoPE2)
    seed_table.update(space.critical_seeds(min(8, int(search_cfg.population) - len(seed_table))))
    seeds = list(seed_table.values())
    if len(seeds) > int(search_cfg.population):
        raise ConfigError(f"{len(seeds)} seeds (search.seed_methods × search.seed_scales) do not fit in a population "
                          f"of {search_cfg.population}; raise search.population or use fewer seeds")
    baselines, held_out = _verdict_inputs(model_section, data, search_cfg, goal, cfg, tokenizer, model_bundle)
    # Everything a score depends on: the whole model (config incl. compute dtype, every parameter), the documents
    # and what counts in them, the target, the attention scale, the space's fixed parts and λ1 of a second stage.
    namespace = fingerprint(FITNESS_KEY_VERSION, model_identity(model), documents, target, round(mscale, 9),
                            space.kind, space.critical_dim, base_factors,
                            loss_mask if loss_mask is not None else "perplexity")
    cache = FitnessCache(search_cfg.cache or cache_dir("search") / "fitness.sqlite", namespace)
    evaluator = FitnessEvaluator(model, documents, space, mscale,
                                 default_inv_freq(base.theta, base.rotary_dim),
                                 int(search_cfg.batch_size), cache, bool(search_cfg.racing), loss_mask,
                                 search_mesh(search_cfg), base_factors=base_factors)
    state_fingerprint = {"version": FITNESS_KEY_VERSION, "namespace": namespace, "seed": int(search_cfg.seed),
                         "budget": scaled_budget(search), "space": space.identity()}
    if search_cfg.get("strategy", "reference") != "reference" or search_cfg.get("max_evaluations"):
        state_fingerprint["strategy"] = strategy_settings(search_cfg)
    state = run_generations(evaluator, space, seeds, search_cfg, workdir, state_fingerprint)
    best, best_ppl = best_candidate(state)
    reference = list(seed_factors(seed_base, target).values())
    summary = _write_outputs(search, workdir, cfg, best, best_ppl, state, mscale, target, reference, used,
                             base_factors)
    summary["seeds"] = _seed_fitness(evaluator, space, seed_table, base_factors)
    write_json_atomic(workdir / "summary.json", summary)
    if goal.verdict_documents:
        summary["verdict"] = _verdict(search, model, cfg, held_out, workdir / "rope_scaling.json", target,
                                      baselines)
        write_json_atomic(workdir / "summary.json", summary)
    return summary


def _attention_scale(base: RopeSpec, scale_target: int) -> float:
    """The cos/sin scale of the final long context (Phi-3 rule: one scale for short and long factors)."""
    from longrope_jax.rope import attention_scale

    original = base.original_length
    return attention_scale(longrope_spec(base, [1.0] * base.half_dim,
                                         max_position_embeddings=max(scale_target, original + 1)))


def _base_factors(goal: SearchTarget, base: RopeSpec) -> tuple[np.ndarray, int]:
    """(λ1, the length it was searched for): a second, progressive stage searches λ2 on top of a fixed λ1, the
    candidates divide the already-rescaled frequencies and the saved factors are λ2 ⊙ λ1. Ones otherwise."""
    if not goal.base_factors:
        return np.ones(base.half_dim), base.original_length
    factors = rope_methods.read_factors(goal.base_factors, base.half_dim)["long_factor"]
    return np.asarray(factors, np.float64), int(goal.base_length or base.original_length)


def _search_documents(data: DataSettings, search_cfg: SearchSettings, cfg, tokenizer, target: int
                      ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(tokens (D, target), loss mask or None, a name per document) that the fitness scores."""
    add_bos = bool(data.add_bos)
    if search_cfg.fitness == "needle":
        # LongRoPE2's needle-driven perplexity: loss only on a magic number's answer tokens at the end.
        from longrope_jax.eval.needle_ppl import needle_documents
        source = text_source(data, data.search_split)
        texts = [source[i]["text"] for i in range(len(source))]
        batch = needle_documents(tokenizer, texts, target, int(search_cfg.documents), seed=int(search_cfg.seed),
                                 bos_id=cfg.bos_token_id if add_bos else None)
        return batch.tokens, batch.loss_mask, [f"needle sample {i} (depth {d:.2f})" for i, d in
                                               enumerate(batch.depths)]
    if search_cfg.fitness != "perplexity":
        raise ConfigError(f"unknown search.fitness {search_cfg.fitness!r}; use 'perplexity' or 'needle'")
    search_docs = load_token_documents(text_source(data, data.search_split), tokenizer)
    if search_cfg.windows:
        documents, where = random_windows(search_docs, target, int(search_cfg.documents), windows_seed(search_cfg),
                                          add_bos, cfg.bos_token_id)
        return documents, None, [f"{name}@{start}" for name, start in where]
    documents, used = first_documents(search_docs, target, int(search_cfg.documents), add_bos, cfg.bos_token_id)
    return documents, None, used


def _verdict_inputs(model_section: ModelSection, data: DataSettings, search_cfg: SearchSettings,
                    goal: SearchTarget, cfg, tokenizer, model_bundle
                    ) -> tuple[dict[str, float], tuple[np.ndarray, list[str]] | None]:
    """(baselines measured before, held-out tokens) for the verdict, checked before hours of search, not after."""
    if not goal.verdict_documents:
        return {}, None
    target = int(goal.length)
    for method in as_list(search_cfg.verdict_methods):
        if method in ("longrope", "phi3") or method not in rope_methods.METHODS:
            raise ConfigError(f"search.verdict_methods: {method!r} is not a baseline; use some of none, pi, ntk, "
                              f"dynamic, yarn (the searched factors are always compared)")
    check_splits_apart(data, data.search_split, data.held_out_split)
    held_out = held_out_documents(data, cfg, tokenizer, target, goal.verdict_documents)  # tokenised once
    if not search_cfg.verdict_results:
        return {}, held_out
    if model_bundle is not None:
        raise ConfigError("search.verdict_results cannot be used with a model handed in by the pipeline (its "
                          "baselines were measured on config.model); leave it empty")
    return _measured_baselines(model_section, data, search_cfg.verdict_results, target, held_out[1]), held_out


def _write_outputs(search: SearchSettings, workdir, cfg, best, best_ppl, state, mscale, target, seeds, used,
                   base_factors) -> dict:
    factors = best.array * base_factors
    block = longrope_spec(cfg.rope, factors.tolist(), max_position_embeddings=target, attention_factor=mscale,
                          n_hat=best.n_hat, require_monotone=space_is_monotone(search.space)).to_hf()
    write_json_atomic(workdir / "rope_scaling.json", block)
    critical = {"critical_dim": best.critical_dim} if best.critical_dim >= 0 else {}
    write_json_atomic(workdir / "factors.json", {"long_factor": factors.tolist(), "n_hat": best.n_hat,
                                                 "perplexity": best_ppl, "target_length": target, **critical})
    write_text_atomic(workdir / "factors.csv", "".join(f"{v:.6g}\n" for v in factors))
    plots.plot_factors({"searched": factors, **dict(zip(SEED_METHODS, seeds))}, workdir / "factors.png",
                       title=f"Searched factors vs PI/NTK/YaRN at {target} tokens")
    history = state["history"]
    plots.plot_fitness(history, workdir / "fitness.png")
    summary = {"target_length": target, "original_length": cfg.rope.original_length,
               "budget": scaled_budget(search), "space": search.space,
               "search_documents": used, "best_perplexity": best_ppl, "best_n_hat": best.n_hat, **critical,
               "export_target": search.export_target,
               "attention_factor": mscale, "generations_done": state["generation"], "stats": state["stats"],
               "history": history}
    write_json_atomic(workdir / "summary.json", summary)
    return summary


def _seed_fitness(evaluator: FitnessEvaluator, space, seeds: dict[str, np.ndarray], base_factors: np.ndarray
                  ) -> dict[str, dict]:
    """{seed name: search-document perplexity and factors} of the seeds as the search scored them (projected onto
    its grid and bounds); generation 0 scored every seed in full, so these are fitness-cache hits."""
    projected = {name: space.project(factors) for name, factors in seeds.items()}
    scores = evaluator.evaluate(list({space.key(c): c for c in projected.values()}.values()))
    return {name: {"search_perplexity": perplexity_of(scores[space.key(c)], evaluator.num_documents),
                   "long_factor": (c.array * base_factors).tolist()} for name, c in projected.items()}


def held_out_documents(data: DataSettings, cfg, tokenizer, target: int, count: int) -> tuple[np.ndarray, list[str]]:
    """The first `count` held-out documents at `target` tokens (BOS first where data.add_bos says so)."""
    docs = load_token_documents(text_source(data, data.held_out_split), tokenizer)
    return first_documents(docs, target, count, bool(data.add_bos), cfg.bos_token_id)


def _verdict(search: SearchSettings, model, cfg, held_out: tuple[np.ndarray, list[str]], factors_path: Path, target: int,
             reused: dict[str, float]) -> dict:
    """Per-method perplexity on held-out documents the search never saw; `reused` holds baselines already
    measured by `experiments.evaluate` (`search.verdict_results`), which are not recomputed."""
    tokens, names = held_out
    methods = [m for m in as_list(search.verdict_methods)] + ["longrope"]
    todo = [m for m in methods if m == "longrope" or m not in reused]
    monotone = space_is_monotone(search.space)
    specs = rope_methods.with_served_spec(
        {m: rope_methods.method_spec(cfg.rope, m, target, factors_path, require_monotone=monotone) for m in todo},
        "longrope", SERVED_WITHOUT_N_HAT)
    ppl = perplexity_table(model, tokens, specs)
    table = {("searched" if m == "longrope" else m): float(ppl[m] if m in ppl else reused[m]) for m in methods}
    if SERVED_WITHOUT_N_HAT in ppl:
        table[SERVED_WITHOUT_N_HAT] = ppl[SERVED_WITHOUT_N_HAT]
    finite = {m: p for m, p in table.items() if math.isfinite(p) and m != SERVED_WITHOUT_N_HAT}
    return {"held_out_documents": names, "length": target, "perplexity": table,
            "best_method": min(finite, key=finite.get) if finite else None,
            "reused_from_evaluation": sorted(m for m in methods if m in reused and m != "longrope"),
            "verdict_results": str(search.verdict_results or "")}


def _measured_baselines(model_section: ModelSection, data: DataSettings, results_path: str, target: int,
                        names: list[str]) -> dict[str, float]:
    """{method: perplexity} from an `experiments.evaluate` results.json (or its workdir) made with the same model
    settings, data config and held-out documents at `target` (at 32k each baseline is minutes of CPU); a file
    that does not match is an error, never silently mixed in."""
    from longrope_jax.eval.runner import RESULTS
    from longrope_jax.settings import model_record
    from longrope_jax.model.config import without_speed_settings
    from longrope_jax.io import read_json
    path = Path(results_path)
    path = path / RESULTS if path.is_dir() else path
    hint = "point search.verdict_results at <evaluate workdir>/results.json or leave it empty"
    if not path.exists():
        raise ConfigError(f"search.verdict_results: {path} does not exist; {hint}")
    results = read_json(path, default=None)
    if not isinstance(results, dict) or "fingerprint" not in results:
        raise ConfigError(f"search.verdict_results: {path} is not an experiments.evaluate results.json; {hint}")
    measured = results["fingerprint"]
    expected = {"model": model_section.path, "data": json.loads(json.dumps(data.to_dict())),
                "split": data.held_out_split}
    for field, value in expected.items():
        if measured.get(field) != value:
            if isinstance(value, dict):
                diff = sorted(k for k in set(value) | set(measured.get(field) or {})
                              if value.get(k) != (measured.get(field) or {}).get(k))
                raise ConfigError(f"search.verdict_results: {path} was measured with different data settings "
                                  f"({', '.join(diff)}); use matching results or leave it empty")
            raise ConfigError(f"search.verdict_results: {path} was measured with a different {field} "
                              f"({measured.get(field)!r}, this search: {value!r}); use matching results or leave "
                              f"it empty")
    if "model" not in results:  # written before results recorded the model settings: only its path was checked
        print(f"warning: {path} does not record the model settings; reusing it on the model path alone",
              file=sys.stderr)
    elif without_speed_settings(results["model"]) != model_record(model_section):  # older files recorded some
        raise ConfigError(f"search.verdict_results: {path} was measured with different model settings (e.g. "
                          f"dtype); use matching results or leave it empty")
    available = results.get("documents", {}).get(str(target))
    if available is None or available[:len(names)] != names:
        has = (f"documents {available} at {target}" if available is not None else
               f"only lengths {', '.join(sorted(results.get('documents', {}), key=int))}")
        raise ConfigError(f"search.verdict_results: {path} has no {target}-token results on the held-out documents "
                          f"{names} (it has {has}); evaluate them at that length or leave search.verdict_results "
                          "empty")
    by_method = results.get("nll", {}).get(str(target), {})
    return {m: float(np.exp(np.mean(v[:len(names)]))) for m, v in by_method.items()
            if m != "longrope" and len(v) >= len(names)}
