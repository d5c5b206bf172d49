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
