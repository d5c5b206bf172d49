"""PNG plots of evaluation, search and training results (matplotlib Agg, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longrope_jax.io import save_figure_atomic  # noqa: E402


def _lines(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
           ylabel: str, title: str, log_x: bool = False, log_y: bool = False, marker: str = "o",
           vline: tuple[float, str] | None = None, ylim: tuple[float, float] | None = None) -> Path:
    """One line per labelled (x, y) series; the shared layout of every plot here."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, (xs, ys) in series.items():
        axis.plot(xs, ys, marker=marker, label=label)
    if vline is not None:
        axis.axvline(vline[0], color="grey", linestyle=":", label=vline[1])
    if log_x:
        axis.set_xscale("log", base=2)
    if log_y:
        axis.set_yscale("log")
    if ylim is not None:
        axis.set_ylim(*ylim)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    return save_figure_atomic(figure, path)


def _by_length(table: Mapping[str, Mapping[int, float]]) -> dict[str, tuple[list[int], list[float]]]:
    return {m: (sorted(by), [by[k] for k in sorted(by)]) for m, by in table.items()}


def plot_perplexity_vs_length(table: Mapping[str, Mapping[int, float]], path: str | Path,
                              original_length: int | None = None, title: str = "") -> Path:
    """table: {method: {length: perplexity}}; log-scale perplexity against length."""
    return _lines(_by_length(table), path, "evaluated length (tokens)", "perplexity",
                  title or "Perplexity vs length", log_x=True, log_y=True,
                  vline=(original_length, "original context") if original_length else None)


def plot_factors(factors: Mapping[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """factors: {label: λ (d/2,)}; rescale factor per frequency pair."""
    series = {label: (list(range(len(values))), list(np.asarray(values))) for label, values in factors.items()}
    return _lines(series, path, "frequency pair i (θ_i = base^(-2i/d))", "rescale factor λ_i",
                  title or "RoPE rescale factors", marker=".")


def plot_passkey(table: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "") -> Path:
    """table: {method: {length: accuracy}}."""
    return _lines(_by_length(table), path, "prompt length (tokens)", "passkey accuracy",
                  title or "Passkey retrieval", log_x=True, ylim=(-0.05, 1.05))


def plot_fitness(history, path: str | Path, title: str = "") -> Path:
    """history: [{"generation", "best", "median", "evaluated"}]; perplexity against candidates evaluated so far
    (against the generation for histories without counts)."""
    if all("evaluated" in h for h in history):
        x, xlabel = list(np.cumsum([h["evaluated"] for h in history])), "candidates evaluated"
    else:
        x, xlabel = [h["generation"] for h in history], "generation"
    series = {"best": (x, [h["best"] for h in history]),
              "median of population": (x, [h["median"] for h in history])}
    return _lines(series, path, xlabel, "perplexity (search documents)", title or "Search progress")


def plot_losses(records, path: str | Path, title: str = "") -> Path:
    """records: [{"step", "loss", "kind"}] (metrics.jsonl); one series per batch kind (short / long)."""
    series = {}
    for kind in sorted({r.get("kind", "train") for r in records}):
        points = [(r["step"], r["loss"]) for r in records if r.get("kind", "train") == kind]
        series[f"{kind} batches"] = ([p[0] for p in points], [p[1] for p in points])
    return _lines(series, path, "step", "training loss (NLL per token)", title or "Fine-tuning loss", marker=".")


def plot_needle_heatmap(grid: np.ndarray, lengths: Sequence[int], depths: Sequence[float], path: str | Path,
                        title: str = "Passkey retrieval accuracy") -> Path:
    """Write the (lengths × depths) accuracy grid as a PNG heatmap at `path`, atomically; returns the path."""
    grid = np.asarray(grid, np.float64)
    if grid.shape != (len(lengths), len(depths)):
        raise ValueError(f"grid shape {grid.shape} does not match {len(lengths)} lengths × {len(depths)} depths")
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(depths), 1.2 + 0.5 * len(lengths)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_xlabel("needle depth")
    ax.set_ylabel("prompt length (tokens)")
    ax.set_title(title)
    for i in range(len(lengths)):
        for j in range(len(depths)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    return save_figure_atomic(fig, path)
