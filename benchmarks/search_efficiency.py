"""Evaluations each search strategy needs for the reference search's result, on the fixture model.

  python -m benchmarks.search_efficiency [--ratios 8,16,32] [--seeds 0,1,2] [--strategies surrogate,cmaes,...]

The yardstick is the committed reference-budget search (`experiments/results/mini_<r>x`, 1,344 evaluations,
`python -m experiments.search_bench --ratio R`). Every strategy run scores the same search windows (the
reference's, `search.windows_seed=0`) with its own RNG seed, its own fitness cache (so no run gets another's
scores for free) and a budget of `--budget_fraction` × the reference's evaluations. Per run it records:

  evaluations_to_target  full-evaluation equivalents (documents scored / documents per candidate; racing's
                         savings and cheap-fidelity screening count as the fraction of documents they score)
                         at the end of the first generation whose best search-window fitness is within
                         `--tolerance` (0.5%) of the reference's final one; null if never reached
  reference_evaluations  the same quantity for the reference run (its cumulative candidates at that generation ×
                         its documents scored per candidate, from its stats)
  held_out_ppl           held-out perplexity of the run's factors (the bench's windows of the held-out split),
                         next to reference_held_out_ppl, the reference's

Runs resume (state and cache under --workdir); finished rows are kept in --out and not rerun. Writes
benchmarks/results/search_efficiency.json and .png (best fitness vs evaluations, one panel per ratio) and prints
the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from benchmarks.machine import machine

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STRATEGIES = ("reference", "surrogate", "cmaes", "multifidelity")


def reference_trace(summary: dict) -> tuple[list[float], list[float]]:
    """(cumulative full-evaluation equivalents, best fitness) per generation of a reference bench summary."""
    history, stats = summary["history"], summary["stats"]
    per_candidate = stats["doc_evals"] / max(stats["evaluations"], 1) / len(summary["search_documents"])
    cost = np.cumsum([h["evaluated"] for h in history]) * per_candidate
    return [float(c) for c in cost], [float(h["best"]) for h in history]


def run_trace(summary: dict) -> tuple[list[float], list[float]]:
    return [float(h["cost"]) for h in summary["history"]], [float(h["best"]) for h in summary["history"]]


def evaluations_to(cost: list[float], best: list[float], target: float) -> float | None:
    for c, b in zip(cost, best):
        if b <= target:
            return c
    return None


def strategy_config(ratio: int, strategy: str, seed: int, max_evaluations: float):
    sys.path.insert(0, str(ROOT))
    from configs.mini import get_config
    config = get_config("bench")
    config.search.update(dict(strategy=strategy, seed=int(seed), windows_seed=0,
                              max_evaluations=int(round(max_evaluations)), generations=10_000))
    return config


def run_row(ratio: int, strategy: str, seed: int, reference: dict, args) -> dict:
    from longrope_jax.search.bench import run_bench

    ref_cost, ref_best = reference_trace(reference)
    target = ref_best[-1] * (1 + args.tolerance)
    budget = args.budget_fraction * reference["evaluations"]
    name = f"{strategy}_{ratio}x_seed{seed}"
    summary = run_bench(strategy_config(ratio, strategy, seed, budget), ratio, Path(args.workdir) / name,
                        Path(args.workdir) / name / "result")
    if summary["search_documents"] != reference["search_documents"]:
        raise SystemExit(f"error: {name} scored windows {summary['search_documents']}, the reference "
                         f"{reference['search_documents']}; rerun the reference with search.windows_seed=0")
    cost, best = run_trace(summary)
    return {"strategy": strategy, "ratio": ratio, "seed": seed,
            "evaluations_to_target": evaluations_to(cost, best, target),
            "reference_evaluations": evaluations_to(ref_cost, ref_best, target),
            "held_out_ppl": summary["held_out_perplexity"]["searched"],
            "reference_held_out_ppl": reference["held_out_perplexity"]["searched"],
            "budget": budget, "evaluations_spent": cost[-1], "seconds": summary["stats"].get("seconds"),
            "search_ppl": best[-1], "reference_search_ppl": ref_best[-1], "best_seed_held_out_ppl":
            summary["held_out_perplexity"]["best_seed"], "trace": {"cost": cost, "best": best}}


def reference_row(ratio: int, reference: dict, tolerance: float) -> dict:
    cost, best = reference_trace(reference)
    to_target = evaluations_to(cost, best, best[-1] * (1 + tolerance))
    return {"strategy": "reference", "ratio": ratio, "seed": int(reference["search_seed"]),
            "evaluations_to_target": to_target, "reference_evaluations": to_target,
            "held_out_ppl": reference["held_out_perplexity"]["searched"],
            "reference_held_out_ppl": reference["held_out_perplexity"]["searched"],
            "budget": float(reference["evaluations"]), "evaluations_spent": cost[-1],
            "seconds": None, "search_ppl": best[-1], "reference_search_ppl": best[-1],
            "best_seed_held_out_ppl": reference["held_out_perplexity"]["best_seed"],
            "trace": {"cost": cost, "best": best}}


def summarize(rows: list[dict], tolerance: float) -> list[dict]:
    """Per (strategy, ratio): medians over seeds, the evaluation ratio and whether the goal holds."""
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        for ratio in sorted({r["ratio"] for r in rows if r["strategy"] == strategy}):
            group = [r for r in rows if r["strategy"] == strategy and r["ratio"] == ratio]
            reached = [r["evaluations_to_target"] for r in group]
            ref = group[0]["reference_evaluations"]
            median = float(np.median([np.inf if v is None else v for v in reached]))
            held = float(np.median([r["held_out_ppl"] for r in group]))
            ref_held = group[0]["reference_held_out_ppl"]
            out.append({"strategy": strategy, "ratio": ratio, "seeds": len(group),
                        "median_evaluations_to_target": None if not np.isfinite(median) else median,
                        "reference_evaluations": ref,
                        "fraction_of_reference": None if not np.isfinite(median) or not ref else median / ref,
                        "median_held_out_ppl": held, "reference_held_out_ppl": ref_held,
                        "held_out_within_tolerance": held <= ref_held * (1 + tolerance)})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| strategy | ratio | seeds | evaluations to target (median) | reference | fraction | held-out ppl "
             "(median) | reference held-out |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        med = "not reached" if s["median_evaluations_to_target"] is None else f"{s['median_evaluations_to_target']:.0f}"
        ref = "-" if s["reference_evaluations"] is None else f"{s['reference_evaluations']:.0f}"
        frac = "-" if s["fraction_of_reference"] is None else f"{s['fraction_of_reference']:.3f}"
        lines.append(f"| {s['strategy']} | {s['ratio']}x | {s['seeds']} | {med} | {ref} | {frac} | "
                     f"{s['median_held_out_ppl']:.2f} | {s['reference_held_out_ppl']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({r["ratio"] for r in rows})
    fig, axes = plt.subplots(1, len(ratios), figsize=(5 * len(ratios), 4), squeeze=False)
    colors = {s: f"C{i}" for i, s in enumerate(dict.fromkeys(r["strategy"] for r in rows))}
    for ax, ratio in zip(axes[0], ratios):
        for r in (r for r in rows if r["ratio"] == ratio):
            ax.plot(r["trace"]["cost"], r["trace"]["best"], color=colors[r["strategy"]], alpha=0.8,
                    label=r["strategy"] if r["seed"] == min(x["seed"] for x in rows if x["strategy"] ==
                                                            r["strategy"] and x["ratio"] == ratio) else None)
        ax.set_xscale("log")
        ax.set_title(f"{ratio}x the native length")
        ax.set_xlabel("full-evaluation equivalents")
        ax.set_ylabel("best search-window perplexity")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default="8,16,32")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--budget_fraction", type=float, default=0.2)
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--references", default="experiments/results", help="folder holding mini_<r>x/")
    parser.add_argument("--workdir", default="runs/search_efficiency")
    parser.add_argument("--out", default="benchmarks/results/search_efficiency.json")
    args = parser.parse_args(argv)
    from longrope_jax.io import read_json, write_json_atomic
    from longrope_jax.search.strategies import STRATEGIES

    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:
        if s not in STRATEGIES:
            raise SystemExit(f"error: --strategies: {s!r} is not a strategy; use some of {', '.join(STRATEGIES)}")
    ratios, seeds = [int(r) for r in args.ratios.split(",")], [int(s) for s in args.seeds.split(",")]
    references = {}
    for ratio in ratios:
        path = Path(args.references) / f"mini_{ratio}x" / "summary.json"
        if not path.exists():
            raise SystemExit(f"error: no reference search at {ratio}x ({path}); run `python -m "
                             f"experiments.search_bench --ratio {ratio}` first or leave {ratio} out of --ratios")
        references[ratio] = json.loads(path.read_text())
    out_path = Path(args.out)
    previous = read_json(out_path, default=None) or {}
    settings = {"budget_fraction": args.budget_fraction, "tolerance": args.tolerance}
    rows = [r for r in previous.get("rows", []) if previous.get("settings") == settings]
    done = {(r["strategy"], r["ratio"], r["seed"]) for r in rows}
    default_strategy = _default_strategy()
    for ratio in ratios:
        for strategy in strategies:
            for seed in ([int(references[ratio]["search_seed"])] if strategy == "reference" else seeds):
                if (strategy, ratio, seed) in done:
                    continue
                row = (reference_row(ratio, references[ratio], args.tolerance) if strategy == "reference" else
                       run_row(ratio, strategy, seed, references[ratio], args))
                rows.append(row)
                print(f"{strategy} {ratio}x seed {seed}: evaluations to target {row['evaluations_to_target']}, "
                      f"held-out {row['held_out_ppl']:.2f} (reference {row['reference_held_out_ppl']:.2f})",
                      flush=True)
                summary = summarize(rows, args.tolerance)
                write_json_atomic(out_path, {
                    "default_strategy": default_strategy, "settings": settings, "summary": summary,
                    "rows": rows, "machine": machine(),
                    "command": "python -m benchmarks.search_efficiency " + " ".join(argv or sys.argv[1:])})
    summary = summarize(rows, args.tolerance)
    result = read_json(out_path, default={})
    plot(rows, out_path.with_suffix(".png"))
    print(table(summary))
    return result


def _default_strategy() -> str:
    sys.path.insert(0, str(ROOT))
    from configs.common import base_config
    return str(base_config().search.strategy)


if __name__ == "__main__":
    main()
