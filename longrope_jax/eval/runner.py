"""`experiments.evaluate`: perplexity vs length for several rope methods, plus every other evaluation task its
settings enable (passkey, needle grid, RULER-lite; `eval/tasks/`), resumable, JSON + PNG.

Results go to `<workdir>/results.json`, rewritten atomically after every unit of work (a (length, document,
candidate batch) of perplexity, a passkey trial, a needle cell, a RULER sample), so a killed run resumes where it
stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval.tasks import RESULTS, TaskRun, eval_tasks
from longrope_jax.resume import JobState, normalised
from longrope_jax.data.settings import DataSettings
from longrope_jax.eval.settings import EvalSettings
from longrope_jax.loading import ModelSection, load_from_config
from longrope_jax.settings import model_record


def _fingerprint(model: ModelSection, data: DataSettings, evaluation: EvalSettings) -> dict:
    """What must not change between a run and its resumption."""
    recorded = model_record(model)  # param_dtype only once it is not the default
    return normalised({"model": model.path, "dtype": model.dtype,
                       **{k: recorded[k] for k in ("param_dtype",) if k in recorded},
                       "data": data.to_dict(), "split": evaluation.split,
                       "documents": evaluation.documents, "factors": evaluation.factors})


def _load_results(workdir: Path, fingerprint: dict, factors: str) -> dict:
    job = JobState(workdir / RESULTS, fingerprint, what="a different model/data/factors config",
                   fix="use a new --workdir or delete the old results")
    # Results written before the fingerprint held the compute dtype name it in their model record (else float32).
    results = job.load(
        lambda: {"perplexity": {}, "nll": {}, "passkey": {}, "factor_values": _factor_values_digest(factors)},
        lambda stored: {"dtype": stored.get("model", {}).get("dtype", "float32"), **stored.get("fingerprint", {})})
    digest = _factor_values_digest(factors)
    if results.get("factor_values", digest) != digest:
        # Same path, new contents: the file was overwritten (a newer search). Results of the other methods stand.
        print(f"note: {factors} changed since {workdir / RESULTS} was written; its longrope results "
              f"are recomputed", file=sys.stderr)
        for section in (name for task in eval_tasks() for name in task.result_sections):
            for by_method in ([results.get(section, {})] if section != "nll" else
                              list(results.get("nll", {}).values())):
                by_method.pop("longrope", None)
    results["factor_values"] = digest
    return results


def _factor_values_digest(path: str) -> str | None:
    """A digest of what a factor file says (factors, n̂, attention factor, ...), not of where it lies."""
    if not path:
        return None
    data = rope_methods.read_factors(path)
    fields = {k: data.get(k) for k in ("long_factor", "short_factor", "n_hat", "attention_factor", "critical_dim",
                                       "original_max_position_embeddings", "rope_type")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def run_evaluation(config: Any, workdir: str | Path) -> dict:
    """Runs every enabled evaluation task (config.eval) on the held-out documents; returns the results.

    config: the `JobSettings` a CLI parsed (`parse_job`), or any config with model, data and eval sections,
    parsed here; the tasks are handed the typed sections.
    """
    model_section, data = ModelSection.parse(config.model), DataSettings.parse(config.data)
    evaluation = EvalSettings.parse(config.eval)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = _load_results(workdir, _fingerprint(model_section, data, evaluation), evaluation.factors)
    model, cfg, tokenizer = load_from_config(model_section)
    run = TaskRun(evaluation, data, model, cfg, tokenizer, workdir, results)
    tasks = [task for task in eval_tasks() if task.enabled(evaluation)]
    # Every input is checked up front, so a bad length or factor file fails before hours of compute.
    for task in tasks:
        task.check(run)
    results["model"] = model_record(model_section)
    for task in tasks:
        task.run(run)
        run.save()
    for task in tasks:
        task.plot(run)
    return results


def format_table(results: dict) -> str:
    """Markdown table: methods × lengths of perplexity."""
    table = results["perplexity"]
    lengths = sorted({int(k) for by_len in table.values() for k in by_len})
    lines = ["| method | " + " | ".join(str(l) for l in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for m, by_len in table.items():
        lines.append(f"| {m} | " + " | ".join(f"{by_len[str(l)]:.2f}" if str(l) in by_len else "-"
                                             for l in lengths) + " |")
    return "\n".join(lines)
