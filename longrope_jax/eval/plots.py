"""PNG plots of evaluation results (matplotlib Agg, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longrope_jax.io import save_figure_atomic  # noqa: E402


def plot_perplexity_vs_length(table: Mapping[str, Mapping[int, float]], path: str | Path,
                              original_length: int | None = None, title: str = "") -> Path:
    """table: {method: {length: perplexity}}; log-scale perplexity against length."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, by_length in table.items():
        lengths = sorted(by_length)
        axis.plot(lengths, [by_length[l] for l in lengths], marker="o", label=method)
    if original_length:
        axis.axvline(original_length, color="grey", linestyle=":", label="original context")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("evaluated length (tokens)")
    axis.set_ylabel("perplexity")
    axis.set_title(title or "Perplexity vs length")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    return save_figure_atomic(figure, path)


def plot_factors(factors: Mapping[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """factors: {label: λ (d/2,)}; rescale factor per frequency pair."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, values in factors.items():
        axis.plot(np.arange(len(values)), values, marker=".", label=label)
    axis.set_xlabel("frequency pair i (θ_i = base^(-2i/d))")
    axis.set_ylabel("rescale factor λ_i")
    axis.set_title(title or "RoPE rescale factors")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return save_figure_atomic(figure, path)


def plot_passkey(table: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "") -> Path:
    """table: {method: {length: accuracy}}."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, by_length in table.items():
        lengths = sorted(by_length)
        axis.plot(lengths, [by_length[l] for l in lengths], marker="o", label=method)
    axis.set_xscale("log", base=2)
    axis.set_ylim(-0.05, 1.05)
    axis.set_xlabel("prompt length (tokens)")
    axis.set_ylabel("passkey accuracy")
    axis.set_title(title or "Passkey retrieval")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return save_figure_atomic(figure, path)


def plot_fitness(history, path: str | Path, title: str = "") -> Path:
    """history: [{"generation", "best", "median"}]; perplexity per generation."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    generations = [h["generation"] for h in history]
    axis.plot(generations, [h["best"] for h in history], marker="o", label="best")
    axis.plot(generations, [h["median"] for h in history], marker=".", label="median of population")
    axis.set_xlabel("generation")
    axis.set_ylabel("perplexity (search documents)")
    axis.set_title(title or "Search progress")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return save_figure_atomic(figure, path)


def plot_losses(records, path: str | Path, title: str = "") -> Path:
    """records: [{"step", "loss", "kind"}] (metrics.jsonl); one series per batch kind (short / long)."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for kind in sorted({r.get("kind", "train") for r in records}):
        points = [(r["step"], r["loss"]) for r in records if r.get("kind", "train") == kind]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=f"{kind} batches")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (NLL per token)")
    axis.set_title(title or "Fine-tuning loss")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return save_figure_atomic(figure, path)
