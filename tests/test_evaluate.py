"""Evaluation: batched candidates == separate runs, method parity with transformers, CLI, resume, errors."""

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import longrope_jax
from longrope_jax.assets import smollm2_gguf_path
from longrope_jax.data.corpus import austen_novels
from longrope_jax.errors import ConfigError, DataError
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval.perplexity import PerplexityEvaluator, sliding_window_nll, stack_ropes
from longrope_jax.eval.runner import run_evaluation
from longrope_jax.io import read_json
from longrope_jax.model.loss import sequence_nll
from longrope_jax.rope import longrope_inputs, rope_inputs
from conftest import MINI_LLAMA

ROOT = Path(__file__).resolve().parents[1]


def _loaded(path: Path):
    model, cfg = longrope_jax.load_model(path)
    tokens = longrope_jax.load_tokenizer(path).encode(austen_novels()["Emma"][:20000]).ids
    return path, model, cfg, np.asarray(tokens, np.int32)


@pytest.fixture(scope="module")
def smollm2():
    return _loaded(smollm2_gguf_path())


@pytest.fixture(scope="module")
def mini():
    """The search bench's fixture (HF directory, native 256 tokens): lengths past its native window are cheap."""
    return _loaded(MINI_LLAMA)


def test_batch_of_8_candidates_equals_8_separate_evaluations(mini):
    _, model, cfg, tokens = mini
    length = 256
    rng = np.random.default_rng(0)
    original = rope_inputs(cfg.rope, length).original_inv_freq
    ropes = [longrope_inputs(original, np.sort(rng.uniform(1, 4, 32)), 1.0 + 0.02 * i, n_hat=4 * (i % 2))
             for i in range(8)]
    documents = tokens[None, :length]
    separate, one = [], PerplexityEvaluator(model, vmap_width=0)
    # compiled once, the rope a runtime argument (eagerly, each rope would be a new program's constant)
    direct_nll = nnx.jit(lambda m, rope: sequence_nll(m, jnp.asarray(documents), rope=rope).mean())
    for rope in ropes:
        single = one.mean_nll(documents, stack_ropes([rope]))[0, 0]
        direct = float(direct_nll(model, rope))
        assert abs(single - direct) < 1e-5
        separate.append(single)
    # All 8 vmapped at once (accelerators), one at a time (CPU's "auto") and 3 at a time with a ragged last chunk.
    for width in (0, 1, 3):
        batched = PerplexityEvaluator(model, vmap_width=width).mean_nll(documents, stack_ropes(ropes))[:, 0]
        np.testing.assert_allclose(batched, separate, atol=1e-5, rtol=0)
    assert len(set(np.round(batched, 4))) == 8  # the candidates really differ


def test_vmap_width_setting():
    from longrope_jax.eval.perplexity import default_vmap_width, resolve_vmap_width

    assert default_vmap_width("cpu") == 1 and default_vmap_width("tpu") is None and default_vmap_width("gpu") is None
    assert resolve_vmap_width("auto") == default_vmap_width()
    assert resolve_vmap_width(0) is None and resolve_vmap_width(None) is None and resolve_vmap_width(4) == 4
    for bad in (-1, "fast", 2.5, True):
        with pytest.raises(ConfigError, match="model.vmap_width"):
            resolve_vmap_width(bad)


@pytest.fixture(scope="module")
def reference(mini):
    return transformers.AutoModelForCausalLM.from_pretrained(str(mini[0]), dtype=torch.float32).eval()


@pytest.mark.parametrize("method", ["pi", "dynamic", "yarn", "ntk"])
def test_method_perplexity_matches_transformers(mini, reference, method):
    """Each method at a 4x target on the fixture model, scored on 1,024 tokens of Emma: 4x past its native 256, so
    every position the extension adds is exercised (dynamic NTK included)."""
    import copy
    _, model, cfg, tokens = mini
    length, target = 1024, 1024
    spec = rope_methods.method_spec(cfg.rope, method, target)
    ours = PerplexityEvaluator(model).perplexity(tokens[None, :length], [spec])[0]
    hf_config = copy.deepcopy(reference.config)
    hf_config.rope_parameters = {**spec.to_hf(), "rope_theta": spec.to_hf()["rope_theta"]}
    if method in ("pi", "dynamic"):
        hf_config.max_position_embeddings = cfg.rope.max_position_embeddings
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    reference.model.rotary_emb = LlamaRotaryEmbedding(config=hf_config)
    with torch.no_grad():
        ids = torch.tensor(tokens[None, :length].astype(np.int64))
        theirs = float(torch.exp(reference(ids, labels=ids).loss))
    assert abs(ours / theirs - 1) < 1e-4, (method, ours, theirs)


def test_sliding_window_scores_every_token_once(smollm2, monkeypatch):
    _, model, cfg, tokens = smollm2
    doc = tokens[:300]
    full = float(sequence_nll(model, jnp.asarray(doc[None])).mean())
    # one window covering everything is the full pass; overlapping windows give every token less context
    assert abs(sliding_window_nll(model, doc, window=300, stride=300) - full) < 1e-5
    windowed = sliding_window_nll(model, doc, window=128, stride=64)
    assert np.isfinite(windowed) and abs(windowed - full) < 0.5
    # with each target's "NLL" set to its own token id, the mean is the targets' mean only if every target
    # (tokens 1..299) is counted exactly once: overlapped tokens counted twice, a skipped one or the ragged last
    # window's padding would all change it
    from longrope_jax.eval import perplexity
    monkeypatch.setattr(perplexity, "_window_nll",
                        lambda graphdef, state, chunk, rope, window: np.asarray(chunk[0, 1:], np.float64))
    for window, stride in [(128, 64), (128, 100), (100, 1), (300, 300)]:
        assert sliding_window_nll(model, doc, window, stride) == pytest.approx(doc[1:].astype(np.float64).mean())


def tiny_config(**eval_changes):
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config
    config = get_config()
    config.eval.update(eval_changes)
    return config


def test_evaluation_resumes_after_interruption(tmp_path, monkeypatch):
    clean = run_evaluation(tiny_config(), tmp_path / "clean")
    calls = {"n": 0}
    original = PerplexityEvaluator.mean_nll

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PerplexityEvaluator, "mean_nll", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_config(), tmp_path / "resumed")
    partial = read_json(tmp_path / "resumed" / "results.json")
    assert 0 < sum(len(v) for by in partial["nll"].values() for v in by.values()) < 10
    monkeypatch.setattr(PerplexityEvaluator, "mean_nll", original)
    resumed = run_evaluation(tiny_config(), tmp_path / "resumed")
    assert resumed["perplexity"] == clean["perplexity"]
    assert (tmp_path / "resumed" / "perplexity_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="different model/data/factors"):
        run_evaluation(tiny_config(documents=2), tmp_path / "resumed")
    bf16 = tiny_config()
    bf16.model.dtype = "bfloat16"  # other scores: never appended to float32 ones
    with pytest.raises(ConfigError, match="different model/data/factors"):
        run_evaluation(bf16, tmp_path / "resumed")
    # Results written before the fingerprint held the dtype (it was in their model record) still resume.
    results_file = tmp_path / "resumed" / "results.json"
    legacy = read_json(results_file)
    del legacy["fingerprint"]["dtype"]
    results_file.write_text(json.dumps(legacy))
    assert run_evaluation(tiny_config(), tmp_path / "resumed")["perplexity"] == clean["perplexity"]
    with pytest.raises(ConfigError, match="different model/data/factors"):
        run_evaluation(bf16, tmp_path / "resumed")


def test_evaluation_errors():
    with pytest.raises(ConfigError, match="unknown method 'rope9000'"):
        run_evaluation(tiny_config(methods=("none", "rope9000")), "/tmp/never-written")
    with pytest.raises(DataError, match="tokens for length"):
        run_evaluation(tiny_config(lengths=(10_000_000,)), "/tmp/never-written-2")


def test_bad_factor_files_name_the_file_and_the_problem(tmp_path):
    cases = {"broken.json": ('{"long_factor": [1.0,', "cannot be parsed"),
             "list.json": ("[1.0, 2.0]", "has no 'long_factor'"),
             "words.csv": ("1.0\nfast\n", "cannot be parsed"),
             "nan.csv": ("1.0\nnan\n2.0\n2.0\n", "NaN or inf"),
             "falling.json": ('{"long_factor": [1.0, 3.0, 2.0, 4.0]}', "not monotone"),
             "short.json": ('{"long_factor": [1.0, 2.0, 3.0, 4.0], "short_factor": [1, 1]}', "short_factor")}
    for name, (text, problem) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=rf"factor file {tmp_path / name}.*{problem}"):
            rope_methods.read_factors(tmp_path / name, half_dim=4)
    (tmp_path / "good.csv").write_text("1.0\n1.5\n2.0\n2.0\n")
    assert rope_methods.read_factors(tmp_path / "good.csv", half_dim=4) == {"long_factor": [1.0, 1.5, 2.0, 2.0]}


def test_cli_overrides_and_clear_errors(tmp_path):
    def evaluate(*args):
        return subprocess.run([sys.executable, "-m", "experiments.evaluate", "--config", "configs/tiny.py",
                               "--workdir", str(tmp_path / "w"), *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)

    result = evaluate("--config.eval.lengths=32,64", "--config.eval.methods=none,yarn")
    assert result.returncode == 0, result.stderr
    assert "| none |" in result.stdout and "| yarn |" in result.stdout
    assert set(read_json(tmp_path / "w" / "results.json")["perplexity"]["yarn"]) == {"32", "64"}
    result = evaluate("--config.eval.factors=/nonexistent/factors.json", "--config.eval.methods=none")
    assert result.returncode == 1 and "different model/data/factors" in result.stderr  # same workdir, new factors
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--config", "configs/tiny.py",
                             "--workdir", str(tmp_path / "w1"), "--config.eval.factors=/nonexistent/factors.json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "error: factor file /nonexistent/factors.json does not exist" in result.stderr
    (tmp_path / "bad.csv").write_text("1.0\n2.0\n")
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--config", "configs/tiny.py",
                             "--workdir", str(tmp_path / "w2"), f"--config.eval.factors={tmp_path / 'bad.csv'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "has 2 long factors but this model needs 4" in result.stderr


def test_evaluate_runs_passkey_and_plots_it(tmp_path):
    # The CLI's passkey path once passed an argument passkey_accuracy does not take; run it end to end.
    config = tiny_config(lengths=(64,), methods=("none", "yarn"), passkey_lengths=(320,), passkey_trials=2)
    results = run_evaluation(config, tmp_path / "passkey")
    assert set(results["passkey"]) == {"none", "yarn"}
    from longrope_jax.eval.passkey import score_continuation
    for method, by_length in results["passkey"].items():
        records = results["passkey_records"][method]["320"]
        assert len(records) == 2
        assert all(r["correct"] == score_continuation(r["continuation"], r["key"])[1] for r in records)
        assert by_length["320"] == sum(r["correct"] for r in records) / 2
    assert read_json(tmp_path / "passkey" / "results.json")["passkey"] == results["passkey"]
    assert (tmp_path / "passkey" / "passkey.png").exists()


def test_a_retrieval_only_run_with_no_perplexity_lengths_finishes_with_its_plots(tmp_path):
    # eval.lengths= (the RULER / passkey runs of long models): nothing for the perplexity task to draw.
    config = tiny_config(lengths=(), methods=("none",), passkey_lengths=(320,), passkey_methods=("yarn",),
                         passkey_trials=1)
    results = run_evaluation(config, tmp_path / "retrieval")
    assert set(results["passkey"]) == {"yarn"} and not results["perplexity"]
    assert (tmp_path / "retrieval" / "passkey.png").exists()
    assert not (tmp_path / "retrieval" / "perplexity_vs_length.png").exists()


def count_generate_calls(monkeypatch, kill_on: int | None = None) -> list:
    """Counts passkey decodes (the returned list grows by one per call); `kill_on`: the call that raises
    KeyboardInterrupt, as a kill mid-run would stop it."""
    from longrope_jax.eval import passkey

    calls, real_generate = [], passkey.generate

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_on:
            raise KeyboardInterrupt("killed")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(passkey, "generate", counted)
    return calls


def test_evaluate_passkey_resumes_mid_cell(tmp_path, monkeypatch):
    # Every passkey trial is saved as it ends; a run killed inside a cell re-runs only the missing trials.
    config = tiny_config(lengths=(64,), methods=("none",), passkey_lengths=(320,), passkey_methods=("none",),
                         passkey_trials=3)
    full = run_evaluation(config, tmp_path / "a")
    records = full["passkey_records"]["none"]["320"]
    assert len(records) == 3 and full["passkey"]["none"]["320"] == sum(r["correct"] for r in records) / 3
    count_generate_calls(monkeypatch, kill_on=2)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(config, tmp_path / "b")
    partial = read_json(tmp_path / "b" / "results.json")
    assert "none" not in partial["passkey"] and partial["passkey_records"]["none"]["320"] == records[:1]
    calls = count_generate_calls(monkeypatch)
    resumed = run_evaluation(config, tmp_path / "b")
    assert len(calls) == 2  # only the two trials the killed run had not finished
    assert resumed["passkey_records"]["none"]["320"] == records
    assert resumed["passkey"] == full["passkey"]


def test_evaluate_runs_the_needle_grid_resumably(tmp_path, monkeypatch):
    # eval.needle_lengths × eval.needle_depths per passkey method: a heatmap each, every cell saved as it ends.
    config = tiny_config(lengths=(64,), methods=("none",), passkey_methods=("none", "yarn"),
                         needle_lengths=(320, 400), needle_depths=(0.2, 0.8), needle_trials=1)
    full = run_evaluation(config, tmp_path / "a")
    for method in ("none", "yarn"):
        entry = full["needle"][method]
        assert entry["lengths"] == [320, 400] and entry["depths"] == [0.2, 0.8]
        assert all(value in (0.0, 1.0) for row in entry["accuracy"] for value in row)  # 1 trial per cell
        assert (tmp_path / "a" / f"needle_{method}.png").read_bytes()[:4] == b"\x89PNG"
    count_generate_calls(monkeypatch, kill_on=6)  # inside the sixth cell of eight
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(config, tmp_path / "b")
    assert read_json(tmp_path / "b" / "results.json")["needle"]["yarn"]["accuracy"][0][1] is None
    calls = count_generate_calls(monkeypatch)
    assert run_evaluation(config, tmp_path / "b")["needle"] == full["needle"]
    assert len(calls) == 3  # cells 6, 7 and 8 of 8
    config.eval.needle_depths = (0.5,)
    with pytest.raises(ConfigError, match="needle grid for none with other lengths"):
        run_evaluation(config, tmp_path / "b")
    config.eval.needle_depths = (0.5, 1.5)
    with pytest.raises(ConfigError, match="needle_depths"):  # before any perplexity is computed
        run_evaluation(config, tmp_path / "c")
    config.eval.needle_depths, config.eval.passkey_methods = (0.5,), ("none", "longrope")
    with pytest.raises(ConfigError, match="needs a factor file"):
        run_evaluation(config, tmp_path / "c")
    assert not (tmp_path / "c" / "results.json").exists()


def test_overwritten_factor_file_is_scored_again(tmp_path):
    """Resume keys on the factor values: a file rewritten in place gets new longrope scores, the rest stand."""
    factors = tmp_path / "rope_scaling.json"
    factors.write_text(json.dumps({"long_factor": [1.0, 1.0, 1.5, 2.0]}))
    config = tiny_config()
    config.eval.factors = str(factors)
    first = run_evaluation(config, tmp_path / "w")
    factors.write_text(json.dumps({"long_factor": [1.0, 2.0, 3.0, 4.0]}))
    second = run_evaluation(config, tmp_path / "w")
    fresh = run_evaluation(config, tmp_path / "fresh")
    assert second["perplexity"]["longrope"] == fresh["perplexity"]["longrope"] != first["perplexity"]["longrope"]
    assert second["perplexity"]["none"] == first["perplexity"]["none"]
    assert all(len(v) == 1 for by in second["nll"].values() for v in by.values())
