"""Fuzz: random illegal settings and random broken factor files, fed to the CLIs, each end in exit status 1 with
one `error:` line and no traceback, and write nothing to the workdir."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from longrope_jax.search.settings import RANGES as SEARCH_RANGES
from longrope_jax.train.job import FINETUNE_RANGES

ROOT = Path(__file__).resolve().parents[1]
CLI = {"search": "search", "finetune": "finetune"}


def illegal_values(kind, low, high, rng):
    """Values outside [low, high] or of the wrong type for an int/float setting."""
    values = [low - 1 if kind is int else low - 0.5, -7, "abc"]
    if high is not None:
        values.append(high + 1)
    if kind is int:
        values.append(low + 0.5)
    return rng.choice(values)


def cases(seed: int, count: int):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        section, ranges = rng.choice([("search", SEARCH_RANGES), ("finetune", FINETUNE_RANGES)])
        field = rng.choice(sorted(ranges))
        kind, low, high, _ = ranges[field]
        if field == "upper":  # 0 means "default", anything >= 1 is legal: only a negative is illegal
            value = -3.0
        else:
            value = illegal_values(kind, low, high, rng)
        out.append((section, field, value))
    return out


BROKEN_FACTOR_FILES = [
    {"long_factor": 5},
    {"long_factor": ["a", "b"]},
    [1.0, 2.0, 3.0],
    {"rope_type": "xpos", "long_factor": [1.0, 1.0, 1.0, 1.0], "short_factor": [1.0] * 4},
    {"long_factor": [4.0, 3.0, 2.0, 1.0]},
    {"long_factor": [1.0, 2.0]},
    {"long_factor": [1.0, 2.0, float("nan"), 4.0]},
]


def assert_one_error_line(done, workdir: Path):
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not workdir.exists() or not any(p.is_file() and p.stat().st_size for p in workdir.rglob("*")), \
        sorted(workdir.rglob("*"))


@pytest.mark.parametrize("section, field, value", cases(seed=2026, count=8))
def test_random_illegal_settings_give_one_error_line(tmp_path, section, field, value):
    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, "-m", f"experiments.{CLI[section]}", "--config", "configs/tiny.py",
                           f"--config.{section}.{field}={value}", "--workdir", str(workdir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode == 1 and "Flags parsing error" in done.stderr:  # absl rejected the type itself
        assert "Traceback" not in done.stderr and field in done.stderr, done.stderr[-2000:]
        assert not workdir.exists()
        return
    assert_one_error_line(done, workdir)
    assert f"{section}.{field}" in done.stderr


@pytest.mark.parametrize("index", range(len(BROKEN_FACTOR_FILES)))
def test_broken_factor_files_give_one_error_line(tmp_path, index):
    path = tmp_path / "factors.json"
    path.write_text(json.dumps(BROKEN_FACTOR_FILES[index]))
    cli, flag = [("evaluate", "eval.factors"), ("finetune", "finetune.factors")][index % 2]
    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, "-m", f"experiments.{cli}", "--config", "configs/tiny.py",
                           f"--config.{flag}={path}", "--workdir", str(workdir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_one_error_line(done, workdir)
