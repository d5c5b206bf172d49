"""The benchmark scripts' own logic (they are run for real by hand; here: small sizes, CPU)."""

import json

import pytest

from benchmarks import mfu
from longrope_jax.model.config import ModelConfig
from conftest import MINI_LLAMA

# The SmolLM2-sized runs are the benchmarks' own (by hand); here the same code paths run on the 4-layer fixture.
FIXTURE = str(MINI_LLAMA)


def test_forward_flops_by_hand():
    cfg = ModelConfig.from_hf_config(mfu.PRESETS["smollm2_135m"])
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536  # q+o, k+v, MLP
    length = 32768
    expected = 2 * per_layer * 30 * length + 2 * length * 576 * 49152 + 2 * length ** 2 * 64 * 9 * 30
    assert mfu.forward_flops(cfg, length) == expected
    assert mfu.peak_flops("NVIDIA H200") == 989e12 and mfu.peak_flops("TPU v5 lite") == 197e12
    assert mfu.peak_flops("cpu") is None


def test_mfu_script_runs_and_writes_json(tmp_path, capsys):
    rows = mfu.main(["--presets", "tiny", "--length", "64", "--dtype", "float32", "--repeats", "1",
                     "--out", str(tmp_path / "mfu.json")])
    saved = json.loads((tmp_path / "mfu.json").read_text())["rows"]
    assert saved == json.loads(json.dumps(rows))
    row = rows[0]
    assert row["backend"] == "cpu" and row["mfu"] is None and row["tokens_per_s"] > 0
    assert row["loss"] == pytest.approx(5.545, abs=1.0)  # a random tiny model: near ln(256)
    assert "tiny" in capsys.readouterr().out


def test_train_benchmark_runs_both_sides_with_matching_losses(tmp_path):
    from benchmarks import train

    rows = train.main(["--lengths", "64", "--repeats", "1", "--model", FIXTURE,
                       "--out", str(tmp_path / "train.json")])
    row = rows[0]
    assert row["ours_seconds"] > 0 and row["torch_seconds"] > 0 and row["speed_ratio_torch_over_ours"] > 0
    # Same weights, same text, same AdamW: after one identical update both report the same second-step loss.
    assert abs(row["ours_loss"] - row["torch_loss"]) < 1e-3
    assert json.loads((tmp_path / "train.json").read_text())["rows"][0]["length"] == 64


def test_search_benchmark_scores_one_generation_five_ways(tmp_path):
    from benchmarks import search

    rows = search.main(["--length", "96", "--candidates", "3", "--documents", "2", "--batch", "2",
                        "--model", FIXTURE, "--out", str(tmp_path / "search.json")])
    by_name = {row["variant"]: row for row in rows}
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    scored = saved["candidates"] * 2
    assert list(by_name) == ["one_at_a_time", "batched", "batched_vmap_all", "batched_raced", "resumed_cached"]
    assert by_name["batched_vmap_all"]["vmap_width"] == 2 and by_name["batched"]["vmap_width"] == 1  # CPU: auto
    assert saved["candidates"] >= 2 and by_name["one_at_a_time"]["doc_evals"] == scored
    raced = by_name["batched_raced"]
    assert raced["doc_evals"] + raced["doc_evals_saved"] == scored
    assert by_name["resumed_cached"]["doc_evals"] == 0
    assert by_name["resumed_cached"]["cache_hits"] == saved["candidates"]
    for row in rows:  # batching, racing and the cache change the cost, never the scores
        assert row["max_abs_nll_diff_vs_one_at_a_time"] < 1e-5


def test_batched_eval_benchmark_times_three_ways_with_equal_scores(tmp_path):
    from benchmarks import batched_eval

    rows = batched_eval.main(["--length", "64", "--candidates", "3", "--model", FIXTURE,
                              "--out", str(tmp_path / "b.json")])
    assert [r["variant"] for r in rows] == ["separate", "batched (auto)", "batched (vmap all)"]
    assert [r["vmap_width"] for r in rows] == [1, 1, 3]  # CPU: "auto" is one at a time
    assert all(r["seconds"] > 0 and r["max_abs_nll_diff_vs_separate"] < 1e-5 for r in rows)
    assert json.loads((tmp_path / "b.json").read_text())["rows"] == json.loads(json.dumps(rows))


def test_search_efficiency_measures_evaluations_against_the_committed_reference(tmp_path, capsys):
    from benchmarks import search_efficiency

    out = tmp_path / "search_efficiency.json"
    search_efficiency.main(["--ratios", "4", "--seeds", "0", "--strategies", "reference,cmaes",
                            "--budget_fraction", "0.015", "--workdir", str(tmp_path / "runs"), "--out", str(out)])
    saved = json.loads(out.read_text())
    from configs.common import base_config
    assert saved["default_strategy"] == base_config().search.strategy
    reference, cmaes = saved["rows"]
    for row in saved["rows"]:
        assert {"strategy", "ratio", "seed", "evaluations_to_target", "reference_evaluations", "held_out_ppl",
                "reference_held_out_ppl"} <= set(row)
    committed = json.loads(open("experiments/results/mini_4x/summary.json").read())
    # the reference's cost worked out by hand from its committed history: full evaluations (doc_evals over the 3
    # windows, racing having cut some) up to the first generation within 0.5% of its final best
    history, stats = committed["history"], committed["stats"]
    per_candidate = stats["doc_evals"] / stats["evaluations"] / len(committed["search_documents"])
    target = history[-1]["best"] * 1.005
    first = next(g for g, h in enumerate(history) if h["best"] <= target)
    expected = sum(h["evaluated"] for h in history[:first + 1]) * per_candidate
    assert reference["evaluations_to_target"] == pytest.approx(expected)
    assert reference["evaluations_spent"] == pytest.approx(stats["doc_evals"] / 3)
    assert 0 < expected < reference["evaluations_spent"]  # it got there before its last generation
    assert cmaes["reference_evaluations"] == pytest.approx(expected)
    assert 20 <= cmaes["evaluations_spent"] <= 20 + 12  # 0.015 x 1,344 plus at most one generation
    cost, best = cmaes["trace"]["cost"], cmaes["trace"]["best"]
    assert cost[-1] == cmaes["evaluations_spent"] and best == sorted(best, reverse=True)
    reached = [c for c, b in zip(cost, best) if b <= target]
    assert cmaes["evaluations_to_target"] == (reached[0] if reached else None)
    assert cmaes["search_ppl"] < committed["search_perplexity"]["best_seed"]  # it moved off its seeds
    assert (tmp_path / "search_efficiency.png").exists()
    assert "| cmaes | 4x | 1 |" in capsys.readouterr().out
    search_efficiency.main(["--ratios", "4", "--seeds", "0", "--strategies", "reference,cmaes",  # nothing reruns
                            "--budget_fraction", "0.015", "--workdir", str(tmp_path / "none"), "--out", str(out)])
    assert not (tmp_path / "none").exists()
