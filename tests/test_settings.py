"""Typed model settings and the one resume mechanism.

What only changes speed (`Execution`) is left out of every fingerprint by type; what changes values (shape,
dtype, param_dtype) is in them. A job's state is refused, with the changed fields named, when its settings change.
"""

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from longrope_jax.errors import CheckpointError, ConfigError
from longrope_jax.loading import load_from_config, model_overrides
from longrope_jax.model.config import ModelConfig, config_from_dict, config_to_dict, without_speed_settings
from longrope_jax.model.execution import EXECUTION_FIELDS, Execution
from longrope_jax.resume import JobState, refuse_changed
from longrope_jax.rope import RopeSpec

ROOT = Path(__file__).resolve().parents[1]
BASE = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=32))


def record(cfg: ModelConfig) -> dict:
    return without_speed_settings(config_to_dict(cfg))


@pytest.mark.parametrize("change", [dict(attention="reference"), dict(block_q=16, block_kv=64), dict(remat="full"),
                                    dict(scan_layers=False), dict(loss_chunk=7), dict(vmap_width=3),
                                    dict(context_attention="allgather")])
def test_an_execution_setting_changes_no_model_record(change):
    changed = BASE.replace(**change)
    assert changed.execution != BASE.execution and changed.execution == Execution(**change)
    assert record(changed) == record(BASE)


@pytest.mark.parametrize("change", [dict(dtype="bfloat16"), dict(param_dtype="bfloat16"), dict(num_layers=3),
                                    dict(rms_norm_eps=1e-6)])
def test_a_value_setting_changes_the_model_record(change):
    assert record(BASE.replace(**change)) != record(BASE)


def test_every_execution_field_is_left_out_of_records_by_type():
    flat = {**config_to_dict(BASE), **{name: "x" for name in EXECUTION_FIELDS}}  # a record written before
    assert without_speed_settings(flat) == record(BASE)
    assert "execution" in config_to_dict(BASE) and "execution" not in record(BASE)


def test_model_records_written_before_execution_existed_still_load():
    legacy = {k: v for k, v in config_to_dict(BASE).items() if k != "execution"}
    legacy.update(attention="blockwise", block_q=16, block_kv=16, scan_layers=False, remat="none", loss_chunk=9)
    loaded = config_from_dict(json.loads(json.dumps(legacy)))
    assert loaded.execution == Execution(attention="blockwise", block_q=16, block_kv=16, scan_layers=False,
                                         loss_chunk=9)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(BASE)))) == BASE


@pytest.mark.parametrize("field, value, words", [("vmap_width", "many", "model.vmap_width"),
                                                 ("context_attention", "mesh", "context_attention"),
                                                 ("attention", "flash", "unknown attention"),
                                                 ("block_q", 0, "block_q"), ("remat", "some", "remat")])
def test_a_bad_execution_setting_is_one_error_before_any_model_is_read(field, value, words):
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config
    config = get_config()
    config.model.path = "/nonexistent/model"  # never reached
    config.model[field] = value
    with pytest.raises(ConfigError, match=words):
        model_overrides(config.model)


def test_param_dtype_is_a_model_setting_the_loader_applies():
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config
    config = get_config()
    config.model.param_dtype = "bfloat16"
    model, cfg, _ = load_from_config(config.model)
    assert cfg.param_dtype == "bfloat16" and model.embed_tokens[...].dtype == jnp.bfloat16
    from longrope_jax.eval.runner import _fingerprint
    from longrope_jax.settings import model_record
    assert _fingerprint(config.model, config.data, config.eval)["param_dtype"] == "bfloat16" and model_record(config.model)["param_dtype"] == "bfloat16"
    config.model.param_dtype = "float32"  # the default is not recorded, so older results still match
    assert "param_dtype" not in _fingerprint(config.model, config.data, config.eval) and "param_dtype" not in model_record(config.model)


def test_job_state_resumes_what_it_saved_and_refuses_other_settings(tmp_path):
    path = tmp_path / "state.json"
    job = JobState(path, {"version": 2, "seed": 1, "target": (4096,)}, version_of="demo state")
    state = job.load(lambda: {"done": []})
    assert state == {"done": [], "fingerprint": {"version": 2, "seed": 1, "target": [4096]}}
    state["done"].append("a")
    job.save(state)
    assert JobState(path, {"version": 2, "seed": 1, "target": [4096]}).load(lambda: {"done": []})["done"] == ["a"]
    with pytest.raises(ConfigError, match=r"state.json was written with different settings \(seed, target\); "
                                          r"use a new --workdir"):
        JobState(path, {"version": 2, "seed": 2, "target": [8192]}).load(dict)
    with pytest.raises(ConfigError, match=r"another longrope-jax version \(demo state version 2, this one reads 3\)"):
        JobState(path, {"version": 3, "seed": 1, "target": [4096]}, version_of="demo state").load(dict)
    assert json.loads(path.read_text())["done"] == ["a"]  # a refused resume leaves the state as it was


def test_a_refusal_names_each_changed_field_and_raises_the_jobs_error():
    with pytest.raises(CheckpointError, match=r"ckpt was made with different settings \(lr, steps\); fix it"):
        refuse_changed("ckpt was made", {"lr": 1, "steps": 2, "seed": 0}, {"lr": 2, "seed": 0}, "fix it",
                       error=CheckpointError)
    refuse_changed("same", {"a": np.int64(1).item()}, {"a": 1})  # equal: nothing raised


# ----------------------------------------------------------------------------- typed config sections

def _all_configs():
    import importlib.util

    for path in sorted((ROOT / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "get_config"):
            yield path.name, module.get_config()
            for variant in VARIANTS.get(path.name, ()):
                yield f"{path.name}:{variant}", module.get_config(variant)


VARIANTS = {"mini.py": ("bench", "recipe"), "smollm2_135m.py": ("full",)}


def test_every_shipped_config_parses_into_typed_sections_that_read_like_it():
    """The typed sections hold exactly the ConfigDict's values, so fingerprints made from either are equal."""
    from longrope_jax.job_settings import SECTIONS, parse_job
    from longrope_jax.resume import normalised

    for name, config in _all_configs():
        job = parse_job(config)
        for section in config.keys():
            if section == "name":
                continue
            assert isinstance(job[section], SECTIONS[section]), (name, section)
            assert normalised(job[section].to_dict()) == normalised(config[section].to_dict()), (name, section)
        assert job.name == config.name


def test_the_shipped_defaults_are_declared_once_in_the_typed_sections():
    from configs.common import base_config
    from longrope_jax.job_settings import JobSettings

    config, defaults = base_config(), JobSettings()
    for section in ("model", "data", "eval", "search", "finetune", "pipeline", "distributed"):
        assert config[section].to_dict() == defaults[section].to_dict(), section


@pytest.mark.parametrize("section, field, value, words", [
    ("search", "population", 1, "search.population=1 must be an integer >= 2"),
    ("search", "strategy", "annealing", "search.strategy='annealing' is not a strategy"),
    ("search", "populaton", 8, "search.populaton is not a search setting"),
    ("finetune", "long_ratio", 1.5, "finetune.long_ratio=1.5 must be a number in [0.0, 1.0]"),
    ("data", "source", "web", "unknown data.source 'web'"),
    ("eval", "documents", 0, "eval.documents=0 must be an integer >= 1"),
    ("model", "dtype", "float8", "model.dtype='float8' is not a dtype"),
    ("distributed", "initialize", "maybe", "distributed.initialize='maybe'"),
    ("pipeline", "short_upper", 0.5, "pipeline.short_upper=0.5 must be a number >= 1.0"),
])
def test_a_bad_field_in_any_section_is_one_error_naming_it(section, field, value, words):
    from configs.tiny import get_config
    from longrope_jax.job_settings import parse_job

    config = get_config()
    with config.unlocked():
        config[section][field] = value
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse_job(config)


def test_an_unknown_section_is_refused():
    from configs.tiny import get_config
    from longrope_jax.job_settings import parse_job

    config = get_config()
    with config.unlocked():
        config.serach = {"population": 8}
    with pytest.raises(ConfigError, match="config.serach is not a config section"):
        parse_job(config)


def test_sections_are_frozen_and_replace_checks_what_it_changes():
    import dataclasses

    from longrope_jax.search.settings import SearchSettings

    search = SearchSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        search.population = 8
    smaller = search.replace(population=8)
    assert smaller.population == 8 and search.population == 64 and smaller.get("population") == 8
    assert "population" in smaller and smaller["generations"] == 40 and smaller.get("nonexistent", 3) == 3
    with pytest.raises(ConfigError, match="search.population=0"):
        search.replace(population=0)


def test_a_search_runs_from_typed_settings_as_from_the_config(tmp_path):
    """The CLI hands the jobs `parse_job`'s typed settings; a script may hand a ConfigDict. Same search."""
    from configs.tiny import get_config
    from longrope_jax.job_settings import parse_job
    from longrope_jax.search.job import run_search

    config = get_config()
    config.search.update(dict(population=4, generations=1, parents=2, mutants=1, crossovers=1, documents=1,
                              windows=False, target_length=128, verdict_documents=0, strategy="reference"))
    config.search.cache = str(tmp_path / "a.sqlite")
    plain = run_search(config, tmp_path / "plain")
    job = parse_job(config)
    typed = run_search(job.replace(search=job.search.replace(cache=str(tmp_path / "b.sqlite"))), tmp_path / "typed")
    def scores(summary):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in summary["history"]]

    assert typed["best_perplexity"] == plain["best_perplexity"] and scores(typed) == scores(plain)
    assert typed["stats"]["cache_hits"] == 0  # scored afresh, not read from the first run's cache
    factors = [json.loads((tmp_path / run / "factors.json").read_text()) for run in ("plain", "typed")]
    assert factors[0] == factors[1]
