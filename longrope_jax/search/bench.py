"""The search bench: one LongRoPE search at `ratio` × the native length, judged on held-out windows.

`run_bench` runs `run_search` (search-split windows, its own fitness cache and state in `workdir`) and then a
per-method table on `windows` seeded windows of the held-out split: the classic methods (none, PI, NTK, dynamic
NTK, YaRN), every seed as the search scored it, the best seed (lowest search-window fitness) and the searched
factors. The results folder gets rope_scaling.json, summary.json, fitness.png and factors.png.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from longrope_jax.data.documents import random_windows
from longrope_jax.data.sources import check_splits_apart, load_token_documents, text_source
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval.perplexity import PerplexityEvaluator, perplexity_table, spec_ropes
from longrope_jax.errors import ConfigError
from longrope_jax.io import write_json_atomic
from longrope_jax.job_settings import JobSettings, parse_job
from longrope_jax.loading import load_from_config
from longrope_jax.rope import RopeSpec, longrope_spec
from longrope_jax.rope.registry import classic_methods
from longrope_jax.search.job import run_search, scaled_budget
from longrope_jax.search.settings import BenchSettings
from longrope_jax.search.space import space_is_monotone

CLASSIC_METHODS = ("none", *classic_methods())
COPIED_OUTPUTS = ("rope_scaling.json", "factors.json", "factors.png", "fitness.png")


def bench_search_config(config: Any, ratio: int, workdir: Path) -> JobSettings:
    """The settings with the search aimed at ratio × the model's native length, with a cache of its own in
    workdir and no built-in verdict (the bench's held-out table replaces it)."""
    job = parse_job(config)
    return job.replace(search=job.search.replace(target_length=int(ratio) * int(bench_settings(job).native_length),
                                                 cache=str(workdir / "fitness.sqlite"), verdict_documents=0))


def bench_settings(job: JobSettings) -> BenchSettings:
    if job.bench is None:
        raise ConfigError("this config has no bench section (native_length, held_out_windows, held_out_seed); use "
                          "--config configs/mini.py:bench")
    return job.bench


def held_out_table(model, cfg, tokens: np.ndarray, target: int, factors_path: Path, seeds: dict[str, dict],
                   attention_factor: float, space: str) -> dict[str, float]:
    """{method: perplexity over the held-out windows} for the classic methods, each seed and the searched λ."""
    specs: dict[str, RopeSpec] = {m: rope_methods.method_spec(cfg.rope, m, target) for m in CLASSIC_METHODS}
    for name, seed in seeds.items():
        specs[f"seed:{name}"] = longrope_spec(cfg.rope, seed["long_factor"], max_position_embeddings=target,
                                              attention_factor=attention_factor)
    specs["searched"] = rope_methods.method_spec(cfg.rope, "longrope", target, factors_path,
                                                 require_monotone=space_is_monotone(space))
    return perplexity_table(model, tokens, specs)


def run_bench(config: Any, ratio: int, workdir: str | Path, results_dir: str | Path, log=print) -> dict:
    """Searches at ratio × native length (resumable in workdir), judges on held-out windows, writes results_dir."""
    workdir, results_dir = Path(workdir), Path(results_dir)
    search_config = bench_search_config(config, ratio, workdir)
    data, bench = search_config.data, bench_settings(search_config)
    workdir.mkdir(parents=True, exist_ok=True)
    check_splits_apart(data, data.search_split, data.held_out_split)
    bundle = load_from_config(search_config.model)
    model, cfg, tokenizer = bundle
    target = int(search_config.search.target_length)
    summary = run_search(search_config, workdir, model_bundle=bundle)
    held_docs = load_token_documents(text_source(data, data.held_out_split), tokenizer)
    tokens, where = random_windows(held_docs, target, int(bench.held_out_windows), int(bench.held_out_seed),
                                   bool(data.add_bos), cfg.bos_token_id)
    table = held_out_table(model, cfg, tokens, target, workdir / "rope_scaling.json", summary["seeds"],
                           summary["attention_factor"], summary["space"])
    best_seed = min(summary["seeds"], key=lambda n: summary["seeds"][n]["search_perplexity"])
    table["best_seed"] = table[f"seed:{best_seed}"]
    closed = {m: table[m] for m in CLASSIC_METHODS if math.isfinite(table[m])}
    best_closed = min(closed, key=closed.get)
    seed_search = [s["search_perplexity"] for s in summary["seeds"].values()]
    history = summary.get("history") or []
    out = {
        "ratio": int(ratio), "target_length": target, "native_length": cfg.rope.original_length,
        "space": search_config.search.space, "export_target": summary["export_target"],
        # n̂ is searched only for an export that applies it (search.export_target=longrope_jax)
        "search_n_hat": bool(search_config.search.search_n_hat) and summary["export_target"] == "longrope_jax",
        "search_seed": int(search_config.search.seed), "budget": scaled_budget(search_config.search),
        "evaluations": int(summary["stats"].get("evaluations", 0)),
        "search_documents": summary["search_documents"],
        "held_out_documents": [f"{name}@{start}" for name, start in where],
        "search_perplexity": {"searched": summary["best_perplexity"], "best_seed": min(seed_search),
                              "seeds": {n: s["search_perplexity"] for n, s in summary["seeds"].items()}},
        "seed_spread": {"min": min(seed_search), "max": max(seed_search)},
        "best_seed": best_seed, "best_closed_form": best_closed, "best_n_hat": summary["best_n_hat"],
        **({"critical_dim": summary["critical_dim"]} if "critical_dim" in summary else {}),
        "held_out_perplexity": table,
        "searched_vs_best_seed": table["searched"] / table["best_seed"] - 1.0,
        "searched_vs_best_closed_form": table["searched"] / table[best_closed] - 1.0,
        "attention_factor": summary["attention_factor"], "stats": summary["stats"], "history": history,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED_OUTPUTS:
        shutil.copyfile(workdir / name, results_dir / name)
    write_json_atomic(results_dir / "summary.json", out)
    log(f"{results_dir.name}: held-out ppl searched {table['searched']:.3f}, best seed ({best_seed}) "
        f"{table['best_seed']:.3f}, best closed form ({best_closed}) {table[best_closed]:.3f}; "
        f"{out['evaluations']} evaluations")
    return out


def closed_form_table(config: Any, ratios: list[int], results_dir: str | Path, log=print) -> dict:
    """The model's held-out perplexity at ratio × native length for the classic methods (the bench's baseline):
    summary.json, perplexity_vs_length.png; `windows` seeded held-out windows per length."""
    import time

    from longrope_jax.eval import plots

    results_dir = Path(results_dir)
    job = parse_job(config)
    data, bench = job.data, bench_settings(job)
    model, cfg, tokenizer = load_from_config(job.model)
    native = int(bench.native_length)
    held_docs = load_token_documents(text_source(data, data.held_out_split), tokenizer)
    evaluator = PerplexityEvaluator(model)
    table: dict[str, dict[str, float]] = {m: {} for m in CLASSIC_METHODS}
    seconds: dict[str, float] = {}
    for ratio in ratios:
        length = int(ratio) * native
        tokens, _ = random_windows(held_docs, length, int(bench.held_out_windows), int(bench.held_out_seed),
                                   bool(data.add_bos), cfg.bos_token_id)
        specs = {m: rope_methods.method_spec(cfg.rope, m, length) for m in CLASSIC_METHODS}
        first = [specs["none"]]
        evaluator.perplexity(tokens[:1], first)  # compile outside the timing
        start = time.perf_counter()
        evaluator.mean_nll(tokens[:1], spec_ropes(first, length))
        seconds[str(length)] = time.perf_counter() - start  # one candidate on one window
        for method, ppl in perplexity_table(model, tokens, specs).items():
            table[method][str(length)] = ppl
        log(f"{length} tokens ({ratio}x): " + ", ".join(f"{m} {table[m][str(length)]:.2f}" for m in CLASSIC_METHODS))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = {"native_length": native, "ratios": [int(r) for r in ratios], "windows": int(bench.held_out_windows),
           "held_out": data.held_out_split, "perplexity": table, "seconds_per_evaluation": seconds}
    write_json_atomic(results_dir / "summary.json", out)
    plots.plot_perplexity_vs_length({m: {int(k): v for k, v in by.items()} for m, by in table.items()},
                                    results_dir / "perplexity_vs_length.png", native,
                                    title=f"Fixture model on held-out windows ({data.held_out_split})")
    return out


def bench_table(results_dir: str | Path, names: list[str] | None = None) -> str:
    """A markdown table of the bench results in results_dir/<name>/summary.json (default: every mini_* folder
    with a search summary), one row per result: held-out perplexity of the closed forms, the best seed and the
    searched factors, and the searched factors' margin over the best seed and the best closed form."""
    import json

    results_dir = Path(results_dir)
    folders = [results_dir / n for n in names] if names else sorted(
        (p.parent for p in results_dir.glob("mini_*/summary.json")),
        key=lambda p: (json.loads((p / "summary.json").read_text()).get("ratio", 0), p.name))
    header = ("| result | target | evaluations | " + " | ".join(CLASSIC_METHODS) +
              " | best seed | searched | vs best seed | vs best closed form |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        if "held_out_perplexity" not in summary:
            continue
        table = summary["held_out_perplexity"]
        lines.append(f"| {folder.name} | {summary['target_length']} ({summary['ratio']}x) | "
                     f"{summary['evaluations']} | " + " | ".join(f"{table[m]:.2f}" for m in CLASSIC_METHODS) +
                     f" | {table['best_seed']:.2f} ({summary['best_seed']}) | **{table['searched']:.2f}** | "
                     f"{100 * summary['searched_vs_best_seed']:+.2f}% | "
                     f"{100 * summary['searched_vs_best_closed_form']:+.2f}% |")
    return "\n".join(lines)
