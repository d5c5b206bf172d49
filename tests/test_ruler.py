"""RULER-lite's task generators and metrics (`longrope_jax.eval.ruler`): formats, lengths, determinism per seed,
the answers really in the prompt, RULER's wording, and the metrics on hand-made predictions."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

import longrope_jax
from longrope_jax.errors import ConfigError
from longrope_jax.eval import ruler
from conftest import MINI_LLAMA

FIXTURE = MINI_LLAMA


@pytest.fixture(scope="module")
def tokenizer():
    return longrope_jax.load_tokenizer(FIXTURE)


def tokens(tokenizer, text):
    return len(tokenizer.encode(text).ids)


@pytest.mark.parametrize("task", sorted(ruler.TASKS))
def test_every_task_fits_its_length_holds_its_answers_and_repeats_per_seed(tokenizer, task):
    samples = ruler.generate(task, tokenizer, 2048, 3, seed=7, template="smollm2")
    assert len(samples) == 3
    for sample in samples:
        assert set(sample) >= {"input", "answer_prefix", "outputs", "max_new_tokens"}
        assert sample["max_new_tokens"] == ruler.TEMPLATES[ruler.TASKS[task]["kind"]][2]
        prompt = tokens(tokenizer, sample["input"] + sample["answer_prefix"])
        assert sample["length"] == prompt + sample["max_new_tokens"] <= 2048
        assert sample["length"] >= 0.6 * 2048  # the haystack was sized to the length, not left small
        assert sample["input"].startswith("<|im_start|>system") and sample["input"].endswith("<|im_start|>assistant\n")
        assert sample["answer_prefix"].startswith(" The special magic" if task.startswith("niah") else " Answer:")
        kind = ruler.TASKS[task]["kind"]
        body = sample["input"]
        if kind == "niah":
            for value in sample["outputs"]:
                assert f"is: {value}." in body
        elif kind == "variable_tracking":
            value = re.search(r"assigned the value (\d+)", sample["answer_prefix"]).group(1)
            first, *rest = sample["outputs"]
            assert f"VAR {first} = {value}" in body and len(rest) == 4
            for previous, name in zip(sample["outputs"], rest):
                assert f"VAR {name} = VAR {previous}" in body
        elif kind == "common_words_extraction":
            listed = Counter(re.findall(r"\d+\. (\S+)", body.split("<|im_start|>user\n")[-1]))
            assert len(sample["outputs"]) == 10 and all(listed[w] >= 6 for w in sample["outputs"])
        else:
            counts = Counter(body.split("Question:")[0].split())
            top = [w for w, _ in counts.most_common() if re.fullmatch(r"[a-z]{6}", w)][:3]
            assert top == sample["outputs"]
    again = ruler.generate(task, tokenizer, 2048, 3, seed=7, template="smollm2")
    assert again == samples
    assert ruler.generate(task, tokenizer, 2048, 3, seed=8, template="smollm2") != samples


def test_one_needle_value_is_worded_in_the_singular_as_ruler_rewrites_it(tokenizer):
    one = ruler.generate("niah_single_1", tokenizer, 512, 1)[0]
    assert one["input"].startswith("A special magic number is hidden within the following text.")
    assert "What is the special magic number for" in one["input"]
    assert one["answer_prefix"].endswith("mentioned in the provided text is")
    four = ruler.generate("niah_multivalue", tokenizer, 2048, 1)[0]
    assert four["input"].startswith("Some special magic numbers are hidden") and len(four["outputs"]) == 4
    assert four["answer_prefix"].endswith("mentioned in the provided text are")
    query = ruler.generate("niah_multiquery", tokenizer, 2048, 1)[0]["answer_prefix"]
    assert query.count(", ") == 3 and ", and " in query  # "a, b, c, and d"


def test_the_needle_haystack_is_other_needles_and_the_noise_haystack_is_rulers(tokenizer):
    sample = ruler.generate("niah_multikey_2", tokenizer, 1024, 1)[0]
    assert sample["input"].count("One of the special magic numbers for") > 10
    noise = ruler.generate("niah_single_1", tokenizer, 1024, 1, template="none")[0]
    assert "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again." in noise["input"]


def test_metrics_on_hand_made_predictions():
    refs = [["1234567"], ["alpha", "beta", "gamma", "delta"]]
    assert ruler.score("niah_multivalue", ["The number is 1234567.", "Alpha, BETA and nothing"], refs) == 75.0
    assert ruler.string_match_part(["x", "only DELTA here"], refs) == 50.0
    assert ruler.score("vt", ["\x00  ABCDE\nFGHIJ", ""], [["abcde", "FGHIJ"], ["KLMNO"]]) == 50.0
    assert ruler.score("cwe", ["nothing"], [["word"]]) == 0.0
    with pytest.raises(ValueError):
        ruler.score("fwe", ["one"], [["a"], ["b"]])


def test_bad_task_template_and_length_are_named(tokenizer):
    with pytest.raises(ConfigError, match="qa_1"):
        ruler.generate("qa_1", tokenizer, 1024, 1)
    with pytest.raises(ConfigError, match="chat template"):
        ruler.generate("vt", tokenizer, 1024, 1, template="chatml")
    with pytest.raises(ConfigError, match="length"):
        ruler.generate("vt", tokenizer, 100, 1)


def tiny_eval_config(tmp_path, **ruler_settings):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs.tiny import get_config
    config = get_config()
    config.eval.lengths = (64,)
    config.eval.methods = ("none",)
    config.eval.update(dict(ruler_tasks=("niah_single_1", "fwe"), ruler_lengths=(1024,), ruler_samples=2,
                            ruler_methods=("none", "yarn")))
    config.eval.update(ruler_settings)
    return config


def test_decoding_harness_scores_what_the_model_says(monkeypatch):
    """A model that answers with the reference scores 100, one that answers wrongly 0: the prompt, the EOS cut
    and the decode are wired to the metric."""
    import numpy as np
    from longrope_jax.eval import ruler_eval
    from longrope_jax.loading import load_model

    model, cfg = load_model(FIXTURE)
    tok = longrope_jax.load_tokenizer(FIXTURE)
    samples = ruler.generate("niah_single_1", tok, 512, 2)

    def answering(answer_of):
        def fake(graphdef, state, prompt, ropes, new_tokens, stop_token, vmap_width):
            text = tok.decode(np.asarray(prompt[0]).tolist())
            sample = next(s for s in samples if text.endswith(s["answer_prefix"]))
            ids = tok.encode(" " + answer_of(sample)).ids + [cfg.eos_token_id] + [5] * new_tokens
            return np.concatenate([np.asarray(prompt[0]), np.asarray(ids[:new_tokens])])[None, None]
        return fake

    monkeypatch.setattr(ruler_eval, "_greedy_per_rope", answering(lambda s: s["outputs"][0] + "."))
    right = ruler_eval.ruler_scores(model, tok, None, "niah_single_1", 512, 2)
    assert right["score"] == 100.0 and all(r["prediction"].strip().endswith(".") for r in right["records"])
    monkeypatch.setattr(ruler_eval, "_greedy_per_rope", answering(lambda s: "1234"))
    assert ruler_eval.ruler_scores(model, tok, None, "niah_single_1", 512, 2)["score"] == 0.0


@pytest.mark.parametrize("vmap_width", [None, 1])
def test_one_call_under_several_ropes_decodes_what_each_rope_decodes_alone(vmap_width):
    """ruler_cell decodes each prompt under every spec at once; each spec's predictions are those it gives alone
    (and the two specs really decode differently, so a mix-up of ropes would show)."""
    from longrope_jax.eval import methods as rope_methods
    from longrope_jax.eval import ruler_eval
    from longrope_jax.loading import load_model

    model, cfg = load_model(FIXTURE)
    tok = longrope_jax.load_tokenizer(FIXTURE)
    specs = {m: rope_methods.method_spec(cfg.rope, m, 2048) for m in ("none", "pi")}
    together = ruler_eval.ruler_cell(model, tok, specs, "niah_single_1", 2048, 2, vmap_width=vmap_width)
    for m, spec in specs.items():
        alone = ruler_eval.ruler_scores(model, tok, spec, "niah_single_1", 2048, 2)
        assert [r["prediction"] for r in together[m]["records"]] == [r["prediction"] for r in alone["records"]]
        assert together[m]["score"] == alone["score"]
    assert together["none"]["records"] != together["pi"]["records"]


def test_evaluate_runs_ruler_cells_resumes_and_plots(tmp_path):
    from longrope_jax.eval import ruler_eval
    from longrope_jax.eval.runner import run_evaluation

    results = run_evaluation(tiny_eval_config(tmp_path), tmp_path / "eval")
    assert set(results["ruler"]) == {"none", "yarn"}
    for method in ("none", "yarn"):
        for task in ("niah_single_1", "fwe"):
            records = results["ruler_records"][method][task]["1024"]
            assert len(records) == 2 and all(r["prompt_tokens"] <= 1024 for r in records)
            assert results["ruler"][method][task]["1024"] == ruler.score(
                task, [r["prediction"] for r in records], [r["outputs"] for r in records])
    assert (tmp_path / "eval" / "ruler.png").exists()
    # a third sample later: the two decoded ones are reused, only one new sample is decoded
    calls = []
    original = ruler_eval._greedy_per_rope
    try:
        ruler_eval._greedy_per_rope = lambda *a, **k: calls.append(a[3].inv_freq.shape[0]) or original(*a, **k)
        again = run_evaluation(tiny_eval_config(tmp_path, ruler_samples=3), tmp_path / "eval")
    finally:
        ruler_eval._greedy_per_rope = original
    assert calls == [2, 2]  # 2 tasks x 1 new sample, each decoded under both methods in one call
    assert again["ruler_records"]["none"]["fwe"]["1024"][:2] == results["ruler_records"]["none"]["fwe"]["1024"]


def test_unknown_ruler_task_fails_before_any_work(tmp_path):
    from longrope_jax.eval.runner import run_evaluation

    with pytest.raises(ConfigError, match="unknown RULER task"):
        run_evaluation(tiny_eval_config(tmp_path, ruler_tasks=("niah_single_9",)), tmp_path / "eval")
    assert not (tmp_path / "eval" / "results.json").exists()


def test_a_new_evaluation_task_plugs_in_without_editing_the_runner(tmp_path):
    """A task registered the way a module in eval/tasks/ does it is checked first, run, resumed and plotted."""
    from longrope_jax.eval import tasks
    from longrope_jax.eval.runner import run_evaluation

    calls = []

    @tasks.register_eval_task
    class CountTokens(tasks.EvalTask):
        name = "count_tokens_test"
        order = 50
        result_sections = ("count_tokens",)

        def enabled(self, eval_cfg):
            return True

        def check(self, run):
            calls.append("check")
            if run.eval_cfg.seed == 123:
                raise ConfigError("this task cannot run with seed 123")

        def run(self, run):
            calls.append("run")
            table = run.results.setdefault("count_tokens", {})
            for method in ("none", "yarn"):
                if method not in table:
                    table[method] = run.spec(method, 1024).max_position_embeddings
                    run.save()

        def plot(self, run):
            calls.append("plot")
            (run.workdir / "count_tokens.txt").write_text(json.dumps(run.results["count_tokens"]))

    try:
        config = tiny_eval_config(tmp_path, ruler_tasks=())
        results = run_evaluation(config, tmp_path / "eval")
        assert calls == ["check", "run", "plot"]
        assert results["count_tokens"]["none"] == 64 and results["count_tokens"]["yarn"] == 1024
        assert json.loads((tmp_path / "eval" / "results.json").read_text())["count_tokens"] == results["count_tokens"]
        assert (tmp_path / "eval" / "count_tokens.txt").exists()
        config.eval.seed = 123
        with pytest.raises(ConfigError, match="seed 123"):  # raised before the perplexity task runs
            run_evaluation(config, tmp_path / "eval2")
        assert not (tmp_path / "eval2" / "results.json").exists()
    finally:
        del tasks._TASKS["count_tokens_test"]


def test_a_resumed_run_counts_the_samples_it_reuses_and_none_of_another_seed():
    """The progress of a resumed RULER run starts at the decoded samples it will reuse: capped at the sample
    count, and zero once the seed (so every prompt) changed."""
    from types import SimpleNamespace

    from longrope_jax.eval.ruler_eval import decoded_samples

    cfg = SimpleNamespace(ruler_samples=2, ruler_template="none", ruler_seed=42, ruler_tasks=("vt", "cwe"),
                          ruler_lengths=(256,), ruler_methods=("none",), passkey_methods=())
    cfg.get = lambda name, default=None: getattr(cfg, name, default)
    settings = {"samples": 3, "template": "none", "seed": 42, "essay_haystack": "austen (train split)"}
    results = {"ruler": {"none": {"vt": {"256": 50.0}}}, "ruler_settings": settings,
               "ruler_records": {"none": {"vt": {"256": [{}, {}, {}]}, "cwe": {"256": [{}]}}}}
    assert decoded_samples(cfg, results) == 3  # vt: 3 decoded, 2 wanted; cwe: 1
    assert results["ruler"] == {}  # scores of 3 samples are stale at 2
    cfg.ruler_seed = 7
    assert decoded_samples(cfg, results) == 0 and results["ruler_records"] == {}


def test_the_report_puts_runs_side_by_side_with_their_sample_counts(tmp_path):
    """Two evaluation workdirs -> one table whose averages are the runs' task means, with the samples behind
    each cell; a missing workdir is one error before anything is written."""
    import subprocess
    import sys

    from longrope_jax.eval.ruler_report import collect_runs, passkey_markdown, ruler_markdown

    def workdir(name, scores, samples, passkey=None):
        path = tmp_path / name
        path.mkdir()
        records = {"none": {t: {"4096": [{}] * samples} for t in scores}}
        results = {"ruler": {"none": {t: {"4096": v} for t, v in scores.items()}}, "ruler_records": records}
        if passkey is not None:
            results["passkey"] = {"none": {"4096": passkey}}
            results["passkey_records"] = {"none": {"4096": [{}] * 10}}
        (path / "results.json").write_text(json.dumps(results))
        return path

    runs = {"base": workdir("a", {"niah_single_1": 100.0, "vt": 40.0}, 10, passkey=0.5),
            "yarn": workdir("b", {"niah_single_1": 60.0, "vt": 0.0}, 5)}
    collected = collect_runs(runs)
    table = ruler_markdown(collected)
    assert "| base (none) | 70.0 | 100 | 40 | 10 |" in table and "| yarn (none) | 30.0 | 60 | 0 | 5 |" in table
    assert "| base (none) | 0.5 (10) |" in passkey_markdown(collected)
    out = tmp_path / "report"
    ok = subprocess.run([sys.executable, "-m", "experiments.ruler_report", "--run", f"base={runs['base']}",
                         "--run", f"yarn={runs['yarn']}", "--out", str(out)], capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parents[1])
    assert ok.returncode == 0, ok.stderr
    assert json.loads((out / "results.json").read_text()) == collected and (out / "ruler.png").exists()
    bad = subprocess.run([sys.executable, "-m", "experiments.ruler_report", "--run", f"x={tmp_path / 'none'}",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: ") and "results.json" in bad.stderr
    assert not (tmp_path / "bad").exists()
