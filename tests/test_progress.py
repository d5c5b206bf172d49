"""Progress off a terminal: plain lines (no carriage returns or cursor moves) with counts and rates."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_search_piped_to_a_file_reports_progress_as_plain_lines(tmp_path):
    env = {**os.environ, "LONGROPE_JAX_PROGRESS_SECONDS": "0"}
    done = subprocess.run([sys.executable, "-m", "experiments.search", "--config", "configs/tiny.py",
                           "--workdir", str(tmp_path / "w"), f"--config.search.cache={tmp_path / 'c.sqlite'}",
                           "--config.search.verdict_documents=0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("search:")]
    assert len(lines) >= 3 and "best_ppl=" in lines[-1] and "gen/s" in lines[-1]
    assert any("cand·doc/s" in line for line in done.stderr.splitlines())


def test_a_long_step_shows_how_long_it_has_run_and_how_long_is_left():
    import io
    import re
    import time

    from longrope_jax.progress import StepClock, tqdm

    log = io.StringIO()
    bar = tqdm(total=3, desc="finetune", file=log, mininterval=0)
    with StepClock(bar, None, interval=0.05) as first:
        time.sleep(0.3)
    bar.update(1)
    with StepClock(bar, first.seconds + 10.0, interval=0.05):
        time.sleep(0.3)
    bar.update(1)
    text = log.getvalue()
    assert "finetune [step 1/3 running 0 s (the first step includes compilation)]" in text
    assert re.search(r"finetune \[step 2/3 running 0 s, about 1[01] s left in it\]", text)
    assert bar.desc == "finetune" and 0.3 <= first.seconds < 1.0
    disabled = tqdm(total=3, disable=True)
    with StepClock(disabled, 1.0, interval=0.01) as clock:  # other hosts of a pod: no bar, still timed
        time.sleep(0.05)
    assert clock.seconds >= 0.05
