"""Search strategies: the pure pieces (monotone curve family, CMA-ES, GP surrogate) and, for every strategy, a
search that resumes exactly, keeps its budget and improves on its seeds."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longrope_jax.errors import ConfigError
from longrope_jax.search.cma import cma_ask, cma_init, cma_tell
from longrope_jax.search.curves import fit_knots, knot_curve, knot_positions
from longrope_jax.search.fitness import FitnessEvaluator
from longrope_jax.search.job import run_search
from longrope_jax.search.strategies import STRATEGIES, estimated_mean_nll
from longrope_jax.search.surrogate import fit_gp

ROOT = Path(__file__).resolve().parents[1]


def tiny(**search):
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config
    config = get_config()
    config.search.update(dict(verdict_documents=0, search_n_hat=False, windows_seed=0, **search))
    return config


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-6, 6), min_size=3, max_size=12), st.floats(1.0, 3.0), st.floats(1.5, 80.0))
def test_every_curve_is_monotone_and_inside_its_bounds(z, lower, span):
    upper = lower * span
    curve = knot_curve(np.asarray(z), 32, lower, upper)
    assert curve.shape == (32,)
    assert np.all(np.diff(curve) >= -1e-12)
    assert curve.min() >= lower * (1 - 1e-12) and curve.max() <= upper * (1 + 1e-12)


def test_fitted_knots_reproduce_a_curve_at_its_knots():
    rng = np.random.default_rng(0)
    for _ in range(10):
        z = rng.normal(size=9)
        curve = knot_curve(z, 32, 1.0, 10.0)
        again = knot_curve(fit_knots(curve, 8, 1.0, 10.0, floor=1e-12), 32, 1.0, 10.0)
        np.testing.assert_allclose(again, curve, rtol=1e-9)
    yarn_like = np.concatenate([np.ones(8), np.geomspace(1, 8, 8), np.full(16, 8.0)])
    at = np.round(knot_positions(32, 8)).astype(int)
    refit = knot_curve(fit_knots(yarn_like, 8, 1.0, 10.0), 32, 1.0, 10.0)
    np.testing.assert_allclose(refit[at], yarn_like[at], rtol=0.02)


def test_cma_es_minimises_an_ill_conditioned_quadratic():
    optimum = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
    scales = np.array([1.0, 10.0, 0.3, 3.0, 1.0])
    state = cma_init(np.zeros(5), 1.0)
    rng = np.random.default_rng(0)
    for _ in range(150):
        samples = cma_ask(state, rng)
        state = cma_tell(state, samples, np.sum(((samples - optimum) * scales) ** 2, axis=1))
    assert np.abs(np.asarray(state["mean"]) - optimum).max() < 1e-3
    assert json.loads(json.dumps(state)) == state  # the state is JSON, as the search state file holds it


def test_cma_tell_depends_on_ranks_not_on_sample_order():
    state = cma_init(np.zeros(4), 0.5)
    samples = cma_ask(state, np.random.default_rng(1))
    fitness = np.sum(samples ** 2, axis=1)
    order = np.random.default_rng(2).permutation(len(samples))
    a, b = cma_tell(state, samples, fitness), cma_tell(state, samples[order], fitness[order])
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-12)
    np.testing.assert_allclose(a["cov"], b["cov"], atol=1e-12)
    assert cma_tell(state, samples, np.exp(fitness))["mean"] == pytest.approx(a["mean"])  # rank-invariant


def test_gp_surrogate_ranks_unseen_points_of_a_smooth_function():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(80, 6))
    f = lambda x: np.sum((x - 0.3) ** 2, axis=1) + 0.5 * np.sin(3 * x[:, 0])  # noqa: E731
    model = fit_gp(x, f(x))
    test = rng.uniform(0, 1, size=(200, 6))
    mean, std = model.predict(test)
    assert np.corrcoef(np.argsort(np.argsort(mean)), np.argsort(np.argsort(f(test))))[0, 1] > 0.8
    seen_mean, seen_std = model.predict(x[:5])
    np.testing.assert_allclose(seen_mean, f(x[:5]), atol=0.02)
    assert seen_std.max() < std.mean()  # less uncertain where it has data


def test_partial_scores_are_completed_by_how_hard_the_rest_is():
    doc_means = np.array([2.0, 3.0, 4.0])
    assert estimated_mean_nll([2.5], doc_means) == pytest.approx(3.5)  # 0.5 worse than typical on doc 0
    assert estimated_mean_nll([1.0, 2.0, 6.0], doc_means) == pytest.approx(3.0)
    assert estimated_mean_nll([], doc_means) == float("inf")


@pytest.mark.parametrize("strategy", ["cmaes", "surrogate", "multifidelity"])
def test_every_strategy_keeps_its_budget_and_beats_its_seeds(tmp_path, strategy):
    config = tiny(strategy=strategy, max_evaluations=30, generations=1000, documents=2, initial_size=6,
                  per_generation=4, screen_size=8, elite=4, cache=str(tmp_path / "c.sqlite"))
    summary = run_search(config, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "search_state.json").read_text())
    spent = state["stats"]["doc_evals"] / 2
    assert 30 <= spent <= 30 + 8  # stops at the first generation past the budget
    assert state["history"][-1]["cost"] == pytest.approx(spent)
    seeds = min(s["search_perplexity"] for s in summary["seeds"].values())
    assert summary["best_perplexity"] < seeds
    assert len(state["archive"]) == len({e["key"] for e in state["archive"]})
    if strategy == "multifidelity":  # screened candidates cost a fraction: more candidates than evaluations
        assert len(state["archive"]) > spent
        from scipy.stats import spearmanr
        full = [e["nll"] for e in state["archive"] if len(e["nll"]) == 2]
        expected = spearmanr([n[0] for n in full], [np.mean(n) for n in full]).statistic
        assert state["strategy"]["rank_agreement"] == pytest.approx(expected)


@pytest.mark.parametrize("strategy", ["cmaes", "surrogate", "multifidelity"])
def test_every_strategy_resumes_a_killed_search_to_identical_factors(tmp_path, monkeypatch, strategy):
    def config(cache):
        return tiny(strategy=strategy, max_evaluations=24, generations=1000, documents=2, initial_size=6,
                    per_generation=4, screen_size=8, elite=4, racing=False, cache=str(cache))

    clean = run_search(config(tmp_path / "a.sqlite"), tmp_path / "clean")
    calls = {"n": 0}
    score = FitnessEvaluator._score_items

    def dies_after_some_calls(self, items):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return score(self, items)

    monkeypatch.setattr(FitnessEvaluator, "_score_items", dies_after_some_calls)
    with pytest.raises(KeyboardInterrupt):
        run_search(config(tmp_path / "b.sqlite"), tmp_path / "killed")
    monkeypatch.setattr(FitnessEvaluator, "_score_items", score)
    interrupted = json.loads((tmp_path / "killed" / "search_state.json").read_text())
    assert interrupted["generation"] < clean["generations_done"]
    resumed = run_search(config(tmp_path / "b.sqlite"), tmp_path / "killed")
    a = json.loads((tmp_path / "clean" / "factors.json").read_text())
    b = json.loads((tmp_path / "killed" / "factors.json").read_text())
    assert a["long_factor"] == b["long_factor"] and a["perplexity"] == b["perplexity"]
    assert [h["best"] for h in resumed["history"]] == [h["best"] for h in clean["history"]]


def test_a_state_of_another_strategy_is_refused(tmp_path):
    run_search(tiny(strategy="cmaes", max_evaluations=8, generations=1000, cache=str(tmp_path / "c.sqlite")),
               tmp_path / "run")
    with pytest.raises(ConfigError, match="different settings"):
        run_search(tiny(strategy="surrogate", max_evaluations=8, generations=1000,
                        cache=str(tmp_path / "c.sqlite")), tmp_path / "run")
    with pytest.raises(ConfigError, match="search.strategy"):
        run_search(tiny(strategy="bayes", cache=str(tmp_path / "c.sqlite")), tmp_path / "other")


def test_registry_names_every_strategy():
    assert set(STRATEGIES) == {"reference", "surrogate", "cmaes", "multifidelity"}


def test_a_strategy_without_a_budget_spends_no_more_than_the_reference_would(tmp_path):
    from longrope_jax.search.runner import evaluation_budget

    config = tiny(strategy="cmaes", cma_population=10, racing=False, cache=str(tmp_path / "c.sqlite"))
    summary = run_search(config, tmp_path / "run")
    reference = summary["budget"]["population"] + summary["budget"]["generations"] * (
        summary["budget"]["mutants"] + summary["budget"]["crossovers"])
    search = config.search.copy_and_resolve_references()
    search.update(summary["budget"])
    assert evaluation_budget(search) == reference
    spent = summary["stats"]["doc_evals"] / 2
    assert reference <= spent <= reference + 10  # one CMA generation past the budget at most
    assert summary["generations_done"] < summary["budget"]["generations"] + 1  # the budget stopped it
    search.strategy = "reference"
    assert evaluation_budget(search) == 0.0  # the reference keeps to its generations


@pytest.mark.parametrize("strategy", ["cmaes", "multifidelity"])
def test_a_rerun_over_a_warm_cache_takes_the_same_path_for_free(tmp_path, strategy):
    def config():
        return tiny(strategy=strategy, max_evaluations=20, generations=1000, documents=2, screen_size=8,
                    per_generation=4, elite=4, initial_size=6, cache=str(tmp_path / "shared.sqlite"))

    first = run_search(config(), tmp_path / "one")
    second = run_search(config(), tmp_path / "two")
    assert second["stats"]["doc_evals"] == 0
    assert [h["best"] for h in second["history"]] == [h["best"] for h in first["history"]]
    assert [h["cost"] for h in second["history"]] == [h["cost"] for h in first["history"]]
