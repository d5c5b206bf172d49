"""`experiments.extend` on the tiny config: end to end, kills during stages 2 and 3, config changes, HF export."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import longrope_jax
from longrope_jax.eval.perplexity import PerplexityEvaluator

ROOT = Path(__file__).resolve().parents[1]
# More generations than the tiny default, so stage 3 runs long enough to be killed in the middle.
SETTINGS = ["--config.search.generations=64", "--config.finetune.async_checkpoints=False"]


def extend(workdir: Path, cache: Path, *extra: str, background: bool = False):
    command = [sys.executable, "-m", "experiments.extend", "--config", "configs/tiny.py", "--workdir", str(workdir),
               f"--config.search.cache={cache}", *SETTINGS, *extra]
    if background:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def manifest(workdir: Path) -> dict:
    try:
        return json.loads((workdir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"stages": {}}


def kill_when(process, condition, timeout=600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not condition():
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_pipeline_end_to_end_and_resume_after_kills(tmp_path):
    clean = extend(tmp_path / "clean", tmp_path / "clean.sqlite")
    assert clean.returncode == 0, clean.stderr
    assert "longrope (result)" in clean.stdout
    report = json.loads((tmp_path / "clean" / "report" / "perplexity.json").read_text())
    for length, base in report["base model (none)"].items():  # the closed forms run on the fine-tuned weights
        assert base != report["none"][length]
    done = manifest(tmp_path / "clean")["stages"]
    assert [s for s in done if done[s]["status"] == "done"] == \
        ["search_long", "finetune", "search_final", "search_short", "export", "report"]

    work, cache = tmp_path / "killed", tmp_path / "killed.sqlite"
    process = extend(work, cache, background=True)  # kill during stage 2 (fine-tuning), between checkpoints
    kill_when(process, lambda: manifest(work)["stages"].get("finetune", {}).get("status") == "running"
              and len((work / "finetune" / "metrics.jsonl").read_text().splitlines()) >= 5
              if (work / "finetune" / "metrics.jsonl").exists() else False)
    process = extend(work, cache, background=True)  # kill during stage 3 (search on the fine-tuned model)
    state = work / "search_final" / "search_state.json"
    kill_when(process, lambda: state.exists() and json.loads(state.read_text() or "{}").get("generation", 0) >= 2)
    assert manifest(work)["stages"]["search_final"]["status"] == "running"
    resumed = extend(work, cache)
    assert resumed.returncode == 0, resumed.stderr
    assert "[search_long] already done, skipping" in resumed.stdout
    for name in ("export/rope_scaling.json", "search_final/factors.json", "search_short/factors.json"):
        assert (work / name).read_text() == (tmp_path / "clean" / name).read_text(), name
    assert (work / "export/hf/model.safetensors").read_bytes() == \
        (tmp_path / "clean/export/hf/model.safetensors").read_bytes()

    # The export loads in transformers and gives our perplexity.
    hf_dir = work / "export" / "hf"
    block = json.loads((hf_dir / "config.json").read_text())["rope_scaling"]
    assert block["rope_type"] == "longrope" and len(block["long_factor"]) == len(block["short_factor"]) == 4
    ours, cfg = longrope_jax.load_model(hf_dir)
    tokens = np.random.default_rng(0).integers(0, 256, (1, 200)).astype(np.int32)
    our_ppl = PerplexityEvaluator(ours).perplexity(tokens, [cfg.rope])[0]
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor(tokens.astype(np.int64))
        their_ppl = float(torch.exp(reference(ids, labels=ids).loss))
    assert abs(our_ppl / their_ppl - 1) < 1e-4

    # A finished stage rerun with other settings is reported, not mixed.
    changed = extend(work, cache, "--config.search.seed=5")
    assert changed.returncode == 1 and "stage search_long already finished" in changed.stderr


def test_settings_added_later_keep_older_workdirs_matching(tmp_path):
    """A finished stage's fingerprint from before search.seed_* / verdict_results existed still matches while they
    sit at their defaults; changing them is a real settings change."""
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config
    from longrope_jax.pipeline import Pipeline

    config = get_config()
    current = Pipeline(config, tmp_path)._fingerprint("search_long", {})
    for key in ("seed_methods", "seed_scales", "verdict_results"):
        assert key not in current["search"]
    assert "vmap_width" not in current["model"]
    older = json.loads(json.dumps(current))  # what a workdir written before these settings holds
    config.search.verdict_results = "runs/eval/results.json"  # the pipeline never runs a verdict
    config.model.vmap_width = "0"  # speed and memory only
    config.model.remat = "save_attention"
    assert Pipeline(config, tmp_path)._fingerprint("search_long", {}) == older
    # A workdir written while remat / vmap_width were fingerprinted still matches after they change.
    from longrope_jax.pipeline import _comparable
    recorded = json.loads(json.dumps(older))
    recorded["model"].update(remat="full", vmap_width="auto")
    assert _comparable(recorded) == Pipeline(config, tmp_path)._fingerprint("search_long", {})
    config.search.seed_scales = (1.0, 1.25)
    assert Pipeline(config, tmp_path)._fingerprint("search_long", {})["search"]["seed_scales"] == [1.0, 1.25]


def test_a_stage_fingerprints_what_it_uses_and_nothing_else(tmp_path):
    """Changing a field a stage does not use (or one the pipeline sets for it) leaves the finished stage finished;
    changing one it uses is reported by name. Workdirs fingerprinted the older way still match."""
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config
    from longrope_jax.errors import ConfigError
    from longrope_jax.pipeline import Pipeline

    def fingerprints(config):
        return {stage: Pipeline(config, tmp_path / "fp")._fingerprint(stage, {}) for stage in
                ("search_long", "finetune", "search_final", "search_short", "export", "report")}

    base = fingerprints(get_config())
    changes = {  # setting -> the stages that use it
        ("search", "target_length", 12345): (),  # the pipeline sets each search's target itself
        ("search", "verdict_documents", 3): (),
        ("pipeline", "short_upper", 1.5): ("search_short",),
        ("pipeline", "first_target", 96): ("search_long",),
        ("finetune", "learning_rate", 0.5): ("finetune",),
        ("eval", "lengths", (32, 48)): ("report",),
        ("search", "seed", 7): ("search_long", "search_final", "search_short"),
    }
    for (section, key, value), users in changes.items():
        config = get_config()
        config[section][key] = value
        changed = {stage for stage, fp in fingerprints(config).items() if fp != base[stage]}
        assert changed == set(users), (section, key)

    def run_search_long(config, workdir):
        return Pipeline(config, workdir)._run_stage("search_long", {}, lambda d: {"best_perplexity": 1.0})

    work = tmp_path / "work"
    assert run_search_long(get_config(), work) == {"best_perplexity": 1.0}
    config = get_config()
    config.search.target_length = 12345
    assert run_search_long(config, work) == {"best_perplexity": 1.0}  # skipped: the stage never reads it
    config.search.seed = 7
    with pytest.raises(ConfigError, match=r"stage search_long already finished .*\(search\)"):
        run_search_long(config, work)

    # A workdir from before stage fingerprints held only what a stage uses.
    older = tmp_path / "older"
    pipeline = Pipeline(get_config(), older)
    pipeline.manifest["stages"]["search_long"] = {"status": "done", "outputs": {"best_perplexity": 2.0},
                                                  "fingerprint": pipeline._legacy_fingerprint("search_long", {})}
    (older / "manifest.json").write_text(json.dumps(pipeline.manifest))
    assert run_search_long(get_config(), older) == {"best_perplexity": 2.0}
    config = get_config()
    config.pipeline.short_upper = 1.5  # fingerprinted by the older scheme: reported, with what changed
    (older / "manifest.json").write_text(json.dumps(pipeline.manifest))
    with pytest.raises(ConfigError, match=r"\(pipeline\)"):
        run_search_long(config, older)


def test_report_shows_the_result_served_without_n_hat_beside_the_scored_one(tmp_path):
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config
    from longrope_jax.loading import load_from_config
    from longrope_jax.pipeline import _export, _report

    config = get_config()
    config.eval.lengths = (128,)
    config.pipeline.update(report_passkey_trials=1, report_ruler_samples=1)
    bundle = load_from_config(config.model)
    factors = tmp_path / "long.json"
    factors.write_text(json.dumps({"long_factor": [1.0, 1.5, 2.0, 2.0], "n_hat": 16}))
    export = _export(bundle, str(factors), None, 256, tmp_path / "export")
    manifest = {"stages": {"search_long": {"status": "done", "seconds": 12.0}, "report": {"status": "running"}}}
    report = _report(config, bundle, export, manifest, tmp_path / "report")
    table = report["perplexity"]
    # Retrieval beside perplexity, at the original (64: too short for either prompt) and the final length.
    passkey = report["retrieval"]["passkey"]
    assert passkey["64"] is None and passkey["256"] in (0.0, 1.0)  # one trial: found or not
    assert set(report["retrieval"]["ruler"]) == {"niah_single_1"}
    assert json.loads((tmp_path / "report" / "retrieval.json").read_text()) == report["retrieval"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Retrieval" in markdown
    assert "- search_long: done, 12 s" in markdown and "- report:" not in markdown  # not itself, half-done
    scored, served = table["longrope (result)"]["128"], table["longrope (result, served without n_hat)"]["128"]
    assert served != scored
    model, cfg, _ = bundle
    from longrope_jax.data.documents import first_documents
    from longrope_jax.data.sources import load_token_documents, text_source
    from longrope_jax.loading import load_model
    docs = load_token_documents(text_source(config.data, config.eval.split), bundle[2])
    tokens, _ = first_documents(docs, 128, int(config.eval.documents))
    exported, exported_cfg = load_model(export["orbax_dir"])
    assert exported_cfg.rope.n_hat == 16
    expected = PerplexityEvaluator(exported).perplexity(tokens, [exported_cfg.rope.replace(n_hat=0)])[0]
    assert served == pytest.approx(expected, rel=1e-6)
