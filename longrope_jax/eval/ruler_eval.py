"""RULER-lite scored on a model: greedy KV-cache decoding of `longrope_jax.eval.ruler` samples, resumable.

`ruler_scores` runs one (task, length) cell for one rope spec; `run_ruler` is `experiments.evaluate`'s part
(eval.ruler_tasks × eval.ruler_lengths × eval.ruler_methods, every finished sample saved in results.json's
ruler_records so a killed run resumes mid-cell), and `plot_ruler` the heatmap (task × length, one panel per
method). Each prompt is decoded with `rope_inputs(spec, prompt + max_new_tokens)`: for a longrope spec that is
the project's short/long rule, as the served model applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from longrope_jax.errors import ConfigError
from longrope_jax.eval import ruler
from longrope_jax.model.generate import generate
from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeSpec, rope_inputs


def ruler_scores(model: Transformer, tokenizer, spec: RopeSpec | None, task: str, length: int, samples: int,
                 seed: int = 42, template: str = "none", add_bos: bool = False, done: Sequence[dict] = (),
                 on_sample: Callable[[dict], None] | None = None) -> dict:
    """{"score" (0-100), "task", "length", "samples", "records"} for `samples` seeded prompts of `task`.

    done: records already decoded with the same settings (checked against the seeded samples' references);
    they are kept, and `on_sample(record)` is called after each new one so a caller can save progress.
    """
    spec = spec if spec is not None else model.cfg.rope
    generated = ruler.generate(task, tokenizer, length, samples, seed, template)
    records = [dict(r) for r in list(done)[:samples]]
    if any(r.get("outputs") != g["outputs"] for r, g in zip(records, generated)):
        raise ConfigError(f"the saved {task} samples at {length} tokens were not generated with seed {seed} and "
                          f"template {template!r}; use the original settings or delete them (results.json "
                          f"ruler_records)")
    bos = model.cfg.bos_token_id if add_bos else None
    eos = model.cfg.eos_token_id
    for sample in generated[len(records):]:
        ids = tokenizer.encode(sample["input"] + sample["answer_prefix"]).ids
        ids = np.asarray(([bos] if bos is not None else []) + list(ids), np.int32)
        new_tokens = int(sample["max_new_tokens"])
        out = np.asarray(generate(model, jnp.asarray(ids[None]), new_tokens, stop_token=eos,
                                  rope=rope_inputs(spec, len(ids) + new_tokens)))[0, len(ids):].tolist()
        if eos is not None and eos in out:
            out = out[:out.index(eos)]
        records.append({"index": sample["index"], "outputs": sample["outputs"], "prediction": tokenizer.decode(out),
                        "prompt_tokens": int(len(ids))})
        if on_sample is not None:
            on_sample(records[-1])
    value = ruler.score(task, [r["prediction"] for r in records], [r["outputs"] for r in records])
    return {"score": value, "task": task, "length": int(length), "samples": int(samples), "records": records}


def ruler_methods(eval_cfg: Any) -> list[str]:
    """The rope methods RULER-lite runs: eval.ruler_methods, or the passkey methods when that is empty."""
    from longrope_jax.settings import as_list
    return as_list(eval_cfg.get("ruler_methods") or eval_cfg.passkey_methods)


def run_ruler(eval_cfg: Any, add_bos: bool, results: dict, save: Callable[[], None], model: Transformer, tokenizer,
              spec_for: Callable[[str, int], RopeSpec], progress: Callable[[int], None] | None = None) -> None:
    """results["ruler"][method][task][length] = score, for every configured cell not yet in results.

    spec_for(method, length): the rope spec a method runs at that length.
    """
    from longrope_jax.settings import as_list

    methods = ruler_methods(eval_cfg)
    _drop_stale(eval_cfg, results)
    table, store = results["ruler"], results["ruler_records"]
    for m in methods:
        for task in as_list(eval_cfg.ruler_tasks):
            for length in (int(n) for n in as_list(eval_cfg.ruler_lengths)):
                if str(length) in table.get(m, {}).get(task, {}):
                    continue
                saved = store.setdefault(m, {}).setdefault(task, {}).setdefault(str(length), [])

                def on_sample(record, saved=saved):
                    saved.append(record)
                    save()
                    if progress is not None:
                        progress(1)

                outcome = ruler_scores(model, tokenizer, spec_for(m, length), task, length,
                                       int(eval_cfg.ruler_samples), int(eval_cfg.ruler_seed), eval_cfg.ruler_template,
                                       add_bos, list(saved), on_sample)
                table.setdefault(m, {}).setdefault(task, {})[str(length)] = outcome["score"]
                save()


def _drop_stale(eval_cfg: Any, results: dict) -> None:
    """Forgets what the current settings make stale: scores of another sample count; decoded samples of another
    template or seed (samples of the same ones stay valid whatever the count)."""
    table = results.setdefault("ruler", {})
    store = results.setdefault("ruler_records", {})
    settings = {"samples": int(eval_cfg.ruler_samples), "template": eval_cfg.ruler_template,
                "seed": int(eval_cfg.ruler_seed), "essay_haystack": "austen (train split)"}
    previous = results.get("ruler_settings", settings)
    if previous != settings:
        table.clear()
        if (previous.get("template"), previous.get("seed")) != (settings["template"], settings["seed"]):
            store.clear()
    results["ruler_settings"] = settings


def decoded_samples(eval_cfg: Any, results: dict) -> int:
    """How many of the configured samples are already decoded and will be reused (a resumed run's progress)."""
    from longrope_jax.settings import as_list

    _drop_stale(eval_cfg, results)
    samples, store = int(eval_cfg.ruler_samples), results["ruler_records"]
    return sum(min(len(store.get(m, {}).get(t, {}).get(str(n), [])), samples) for m in ruler_methods(eval_cfg)
               for t in as_list(eval_cfg.ruler_tasks) for n in as_list(eval_cfg.ruler_lengths))


def check_ruler_settings(eval_cfg: Any) -> None:
    """Unknown tasks or templates fail before any perplexity run, not hours later."""
    from longrope_jax.settings import as_list

    for task in as_list(eval_cfg.get("ruler_tasks", ())):
        ruler.task_args(task)
    if eval_cfg.get("ruler_tasks") and eval_cfg.ruler_template not in ruler.CHAT_TEMPLATES:
        raise ConfigError(f"eval.ruler_template={eval_cfg.ruler_template!r}: use one of "
                          f"{', '.join(ruler.CHAT_TEMPLATES)}")
    if eval_cfg.get("ruler_tasks") and int(eval_cfg.ruler_samples) < 1:
        raise ConfigError(f"eval.ruler_samples={eval_cfg.ruler_samples} must be >= 1; e.g. "
                          f"--config.eval.ruler_samples=5")


def plot_ruler(table: dict[str, dict[str, dict[str, float]]], path: str | Path) -> Path:
    """Heatmap of RULER scores: tasks × lengths, one panel per method, plus each panel's average row."""
    from longrope_jax.eval.plots import plt, save_figure_atomic

    methods = list(table)
    tasks = sorted({t for by_task in table.values() for t in by_task})
    lengths = sorted({int(n) for by_task in table.values() for by_len in by_task.values() for n in by_len})
    fig, axes = plt.subplots(1, len(methods), figsize=(1.5 + 1.1 * len(lengths) * len(methods), 1.2 + 0.45 *
                                                           (len(tasks) + 1)), squeeze=False)
    for ax, m in zip(axes[0], methods):
        grid = np.full((len(tasks) + 1, len(lengths)), np.nan)
        for i, task in enumerate(tasks):
            for j, n in enumerate(lengths):
                grid[i, j] = table[m].get(task, {}).get(str(n), np.nan)
        grid[-1] = np.nanmean(grid[:-1], axis=0) if len(tasks) else np.nan
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(tasks) + 1), tasks + ["average"])
        ax.set_title(m)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
