"""Every CLI: a misspelt --config.* field and a missing config file each give one `error:` line and exit 1."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cli", ["search", "evaluate", "extend", "finetune", "pretrain", "search_bench"])
def test_unknown_config_field_is_one_line_naming_the_flag(cli, tmp_path):
    done = subprocess.run([sys.executable, "-m", f"experiments.{cli}", "--config", "configs/tiny.py",
                           "--config.search.populaton=8", "--workdir", str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --config.search.populaton: the config has no field 'populaton'; did you "
                                "mean 'population'?")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line():
    done = subprocess.run([sys.executable, "-m", "experiments.search", "--config", "configs/nothere.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr == "error: configs/nothere.py: no such file or directory; check the path\n"


def test_a_corrupt_fitness_cache_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "cache.sqlite"
    bad.write_bytes(bytes(range(256)) * 20)
    done = subprocess.run([sys.executable, "-m", "experiments.search", "--config", "configs/tiny.py",
                           f"--config.search.cache={bad}", "--workdir", str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: fitness cache {bad} is unreadable")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("flag, message", [
    ("--config.pipeline.first_target=0", "error: pipeline.first_target=0 must exceed the model's native length 64"),
    ("--config.search.population=0", "error: search.population=0 must be an integer >= 2"),
])
def test_pipeline_bad_settings_leave_no_stage_half_started(tmp_path, flag, message):
    done = subprocess.run([sys.executable, "-m", "experiments.extend", "--config", "configs/tiny.py", flag,
                           "--workdir", str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
    manifest = tmp_path / "w" / "manifest.json"
    if manifest.exists():  # a corrected command must not be refused for "different settings"
        import json
        assert all(e["status"] != "running" for e in json.loads(manifest.read_text())["stages"].values())


def test_ctrl_c_inside_a_long_compiled_step_stops_within_seconds(tmp_path):
    """A signal reaches Python only between bytecodes, so a minutes-long XLA step would keep Ctrl-C waiting; the
    CLI's helper thread ends the process after the grace time with the one resume line and status 130."""
    import signal
    import time

    script = tmp_path / "long_step.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from longrope_jax.cli import run_main\n\n"
        "def main():\n"
        "    import jax, jax.numpy as jnp\n"
        "    inner = lambda i, v: jax.lax.fori_loop(0, 100000, lambda j, w: w * 1.0000001 + 1e-9, v)\n"
        "    step = jax.jit(lambda x: jax.lax.fori_loop(0, 100000, inner, x))\n"
        "    print('started', flush=True)\n"
        "    step(jnp.float32(1.0)).block_until_ready()  # about a minute on a 2-core CPU\n"
        "    print('finished', flush=True)\n\n"
        "run_main(main)\n")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "started"
    time.sleep(1.0)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    waited = time.monotonic() - sent
    assert process.returncode == 130 and err == "interrupted; rerun the same command to resume\n", err
    assert "finished" not in out and waited < 15, waited
