"""RULER-lite and passkey results of several evaluation runs (one model each) side by side.

`collect_runs({label: workdir})` reads each `experiments.evaluate` workdir's results.json and keeps its RULER-lite
table, the sample count behind each cell and its passkey accuracies; `ruler_markdown` turns that into one table
(rows: model and method; columns: task averages per length, then every task); `plot_runs` draws the heatmap with
one panel per model and method (`ruler_eval.plot_ruler`). `experiments.ruler_report` is the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from longrope_jax.errors import ConfigError
from longrope_jax.eval.ruler_eval import plot_ruler


def collect_runs(runs: Mapping[str, str | Path]) -> dict:
    """{"models": {label: {"workdir", "ruler" {method: {task: {length: score}}}, "samples" (same shape, the
    decoded samples behind each score), "passkey" {method: {length: accuracy}}, "passkey_trials"}}}."""
    models = {}
    for label, workdir in runs.items():
        path = Path(workdir) / "results.json"
        if not path.exists():
            raise ConfigError(f"{path} does not exist; pass label=WORKDIR of a finished experiments.evaluate run")
        results = json.loads(path.read_text())
        table = results.get("ruler", {})
        if not table:
            raise ConfigError(f"{path} holds no RULER-lite scores; run experiments.evaluate with "
                              f"--config.eval.ruler_tasks=... there first")
        records = results.get("ruler_records", {})
        samples = {m: {t: {n: len(records.get(m, {}).get(t, {}).get(n, [])) for n in by_len}
                       for t, by_len in by_task.items()} for m, by_task in table.items()}
        passkey_records = results.get("passkey_records", {})
        models[label] = {"workdir": str(workdir), "ruler": table, "samples": samples,
                         "passkey": results.get("passkey", {}),
                         "passkey_trials": {m: {n: len(v) for n, v in by_len.items()}
                                            for m, by_len in passkey_records.items()}}
    return {"models": models}


def _rows(collected: dict):
    for label, run in collected["models"].items():
        for method, by_task in run["ruler"].items():
            yield f"{label} ({method})", by_task, run["samples"][method]


def ruler_markdown(collected: dict) -> str:
    """One markdown table: a row per model and method, the task average at each length, then each task × length
    cell; the sample counts behind the row in its last column."""
    rows = list(_rows(collected))
    tasks = sorted({t for _, by_task, _ in rows for t in by_task})
    lengths = sorted({int(n) for _, by_task, _ in rows for by_len in by_task.values() for n in by_len})
    header = ["model (method)"] + [f"average {n}" for n in lengths] + [f"{t} {n}" for t in tasks for n in lengths]
    lines = ["| " + " | ".join(header + ["samples per cell"]) + " |", "|" + "---|" * (len(header) + 1)]
    for name, by_task, samples in rows:
        averages = []
        for n in lengths:
            scores = [by_task[t][str(n)] for t in tasks if str(n) in by_task.get(t, {})]
            averages.append(f"{np.mean(scores):.1f}" if scores else "")
        cells = [f"{by_task[t][str(n)]:.0f}" if str(n) in by_task.get(t, {}) else "" for t in tasks for n in lengths]
        counts = sorted({c for by_len in samples.values() for c in by_len.values()})
        lines.append("| " + " | ".join([name] + averages + cells + ["/".join(map(str, counts))]) + " |")
    return "\n".join(lines)


def passkey_markdown(collected: dict) -> str:
    """Passkey accuracy per model and method at each length, with the trials behind each cell ("" if none)."""
    lengths = sorted({int(n) for run in collected["models"].values() for by_len in run["passkey"].values()
                      for n in by_len})
    if not lengths:
        return ""
    lines = ["| model (method) | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for label, run in collected["models"].items():
        for method, by_len in run["passkey"].items():
            trials = run["passkey_trials"].get(method, {})
            cells = [f"{by_len[str(n)]:.1f} ({trials.get(str(n), '?')})" if str(n) in by_len else ""
                     for n in lengths]
            lines.append(f"| {label} ({method}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_runs(collected: dict, path: str | Path) -> Path:
    """The RULER-lite heatmap, one panel per model and method."""
    return plot_ruler({name: by_task for name, by_task, _ in _rows(collected)}, path)
