"""RULER-lite scored on a model: greedy KV-cache decoding of `longrope_jax.eval.ruler` samples, resumable.

`ruler_cell` runs one (task, length) cell for several rope specs, each prompt decoded under all of them in one
compiled call (`ruler_scores`: one spec); `run_ruler` is `experiments.evaluate`'s part
(eval.ruler_tasks × eval.ruler_lengths × eval.ruler_methods, every finished sample saved in results.json's
ruler_records so a killed run resumes mid-cell), and `plot_ruler` the heatmap (task × length, one panel per
method). Each prompt is decoded with `rope_inputs(spec, prompt + max_new_tokens)`: for a longrope spec that is
the project's short/long rule, as the served model applies it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longrope_jax.errors import ConfigError
from longrope_jax.eval import ruler
from longrope_jax.eval.perplexity import map_candidates, resolve_vmap_width, stack_ropes
from longrope_jax.model.generate import decode
from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeSpec, rope_inputs


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "stop_token", "vmap_width"))
def _greedy_per_rope(graphdef, state, prompt, ropes, max_new_tokens: int, stop_token: int,
                     vmap_width: int | None) -> jax.Array:
    """(M, B, P + max_new_tokens): the prompt decoded greedily under each of M stacked ropes in one compiled
    call, `vmap_width` ropes at a time (all of them on accelerators)."""
    def one(params, rope):
        return decode(graphdef, params, prompt, rope, jax.random.key(0), jnp.float32(1e-6), max_new_tokens, True,
                      stop_token)

    return map_candidates(one, state, ropes, vmap_width)


def ruler_cell(model: Transformer, tokenizer, specs: Mapping[str, RopeSpec], task: str, length: int, samples: int,
               seed: int = 42, template: str = "none", add_bos: bool = False,
               done: Mapping[str, Sequence[dict]] | None = None,
               on_sample: Callable[[str, dict], None] | None = None,
               vmap_width: int | str | None = "model") -> dict[str, dict]:
    """{name: {"score" (0-100), "task", "length", "samples", "records"}} for `samples` seeded prompts of `task`
    under each rope spec. The specs share the prompts, so each prompt is decoded under every spec that still
    needs it in one compiled call (`vmap_width` at a time: "model" is the model's execution.vmap_width).

    done: {name: records already decoded with the same settings} (checked against the seeded samples'
    references); they are kept, and `on_sample(name, record)` is called after each new one so a caller can save.
    """
    generated = ruler.generate(task, tokenizer, length, samples, seed, template)
    records = {name: [dict(r) for r in list((done or {}).get(name, ()))[:samples]] for name in specs}
    for saved in records.values():
        if any(r.get("outputs") != g["outputs"] for r, g in zip(saved, generated)):
            raise ConfigError(f"the saved {task} samples at {length} tokens were not generated with seed {seed} and "
                              f"template {template!r}; use the original settings or delete them (results.json "
                              f"ruler_records)")
    bos = model.cfg.bos_token_id if add_bos else None
    eos = model.cfg.eos_token_id
    graphdef, state = nnx.split(model)
    width = resolve_vmap_width(vmap_width, model)
    for index, sample in enumerate(generated):
        pending = [name for name in specs if len(records[name]) == index]
        if not pending:
            continue
        ids = tokenizer.encode(sample["input"] + sample["answer_prefix"]).ids
        ids = np.asarray(([bos] if bos is not None else []) + list(ids), np.int32)
        new_tokens = int(sample["max_new_tokens"])
        ropes = stack_ropes([rope_inputs(specs[name], len(ids) + new_tokens) for name in pending])
        outs = np.asarray(_greedy_per_rope(graphdef, state, jnp.asarray(ids[None]), ropes, new_tokens,
                                           -1 if eos is None else int(eos), width))
        for name, out in zip(pending, outs):
            out = out[0, len(ids):].tolist()
            if eos is not None and eos in out:
                out = out[:out.index(eos)]
            record = {"index": sample["index"], "outputs": sample["outputs"], "prediction": tokenizer.decode(out),
                      "prompt_tokens": int(len(ids))}
            records[name].append(record)
            if on_sample is not None:
                on_sample(name, record)
    return {name: {"score": ruler.score(task, [r["prediction"] for r in rs], [r["outputs"] for r in rs]),
                   "task": task, "length": int(length), "samples": int(samples), "records": rs}
            for name, rs in records.items()}


def ruler_scores(model: Transformer, tokenizer, spec: RopeSpec | None, task: str, length: int, samples: int,
                 seed: int = 42, template: str = "none", add_bos: bool = False, done: Sequence[dict] = (),
                 on_sample: Callable[[dict], None] | None = None) -> dict:
    """`ruler_cell` for one rope spec (default the model's own): {"score", "task", "length", "samples",
    "records"}."""
    spec = spec if spec is not None else model.cfg.rope
    return ruler_cell(model, tokenizer, {"spec": spec}, task, length, samples, seed, template, add_bos,
                      {"spec": done}, None if on_sample is None else (lambda _, record: on_sample(record)))["spec"]


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
    for task in as_list(eval_cfg.ruler_tasks):
        for length in (int(n) for n in as_list(eval_cfg.ruler_lengths)):
            todo = [m for m in methods if str(length) not in table.get(m, {}).get(task, {})]
            if not todo:
                continue
            saved = {m: store.setdefault(m, {}).setdefault(task, {}).setdefault(str(length), []) for m in todo}

            def on_sample(method, record, saved=saved):
                saved[method].append(record)
                save()
                if progress is not None:
                    progress(1)

            outcome = ruler_cell(model, tokenizer, {m: spec_for(m, length) for m in todo}, task, length,
                                 int(eval_cfg.ruler_samples), int(eval_cfg.ruler_seed), eval_cfg.ruler_template,
                                 add_bos, {m: list(saved[m]) for m in todo}, on_sample)
            for m in todo:
                table.setdefault(m, {}).setdefault(task, {})[str(length)] = outcome[m]["score"]
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
