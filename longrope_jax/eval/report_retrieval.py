"""Retrieval beside perplexity in the pipeline's report: passkey and RULER-lite at a few lengths, small by default
so the report stays minutes on a CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from longrope_jax.errors import ConfigError, DataError
from longrope_jax.rope import RopeSpec


def retrieval_table(model: Any, tokenizer: Any, spec: RopeSpec, lengths: Sequence[int], passkey_trials: int,
                    ruler_tasks: Sequence[str], ruler_samples: int, seed: int, add_bos: bool = False) -> dict:
    """{"passkey": {length: accuracy}, "ruler": {task: {length: score 0-100}}}, with the spec served as it will be
    (its own short/long rule at each prompt length). A length too short for a task's prompt gets None."""
    from longrope_jax.eval.passkey import passkey_accuracy
    from longrope_jax.eval.ruler_eval import ruler_scores

    table: dict[str, Any] = {"passkey": {}, "ruler": {task: {} for task in ruler_tasks},
                             "passkey_trials": int(passkey_trials), "ruler_samples": int(ruler_samples)}
    for length in (int(n) for n in lengths):
        if passkey_trials:
            try:
                table["passkey"][str(length)] = passkey_accuracy(model, tokenizer, spec, length, int(passkey_trials),
                                                                 seed, add_bos=add_bos)["accuracy"]
            except (ConfigError, DataError):  # the prompt does not fit this length
                table["passkey"][str(length)] = None
        for task in ruler_tasks:
            try:
                table["ruler"][task][str(length)] = ruler_scores(model, tokenizer, spec, task, length,
                                                                 int(ruler_samples), seed, "none", add_bos)["score"]
            except (ConfigError, DataError):
                table["ruler"][task][str(length)] = None
    return table


def retrieval_markdown(table: dict, lengths: Sequence[int]) -> str:
    """The report's retrieval table: one row for passkey, one per RULER-lite task, one column per length."""
    def cell(value):
        return "n/a (the prompt does not fit)" if value is None else f"{value:.2f}" if isinstance(value, float) \
            else str(value)

    header = "| task | " + " | ".join(str(n) for n in lengths) + " |\n|---|" + "---|" * len(lengths) + "\n"
    rows = []
    if table["passkey"]:
        rows.append(f"| passkey accuracy ({table['passkey_trials']} trials) | " +
                    " | ".join(cell(table["passkey"].get(str(n))) for n in lengths) + " |")
    for task, by_length in table["ruler"].items():
        rows.append(f"| RULER-lite {task} ({table['ruler_samples']} samples, 0-100) | " +
                    " | ".join(cell(by_length.get(str(n))) for n in lengths) + " |")
    return header + "\n".join(rows) + "\n"
