"""CMA-ES (Hansen's (μ/μ_w, λ) with rank-one and rank-μ updates) as pure functions on a JSON-able state.

`cma_init` → `cma_ask(state, rng)` → score → `cma_tell(state, samples, fitness)` → … The state is plain lists
so the search state file can hold it; ask draws only from the generator passed in, so a resumed search asks for
exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np


def default_population(dim: int) -> int:
    return 4 + int(3 * math.log(dim))


def _weights(popsize: int) -> np.ndarray:
    mu = popsize // 2
    w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
    return w / np.sum(w)


def cma_init(mean: np.ndarray, sigma: float, popsize: int = 0) -> dict:
    """A fresh state around `mean` (n,) with step size `sigma` and identity covariance."""
    n = len(mean)
    return {"mean": [float(v) for v in mean], "sigma": float(sigma), "cov": np.eye(n).tolist(),
            "path_c": [0.0] * n, "path_sigma": [0.0] * n, "generation": 0,
            "popsize": int(popsize or default_population(n))}


def cma_ask(state: dict, rng: np.random.Generator) -> np.ndarray:
    """(λ, n) samples mean + σ · N(0, C)."""
    mean, cov = np.asarray(state["mean"]), np.asarray(state["cov"])
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    root = vectors * np.sqrt(np.maximum(values, 1e-20))
    normal = rng.standard_normal((state["popsize"], len(mean)))
    return mean + state["sigma"] * normal @ root.T


def cma_tell(state: dict, samples: np.ndarray, fitness: np.ndarray) -> dict:
    """The next state from samples (λ, n) and their fitness (lower is better; inf allowed, ranked last)."""
    samples, fitness = np.asarray(samples, np.float64), np.asarray(fitness, np.float64)
    n, popsize = samples.shape[1], len(samples)
    weights = _weights(popsize)
    mu = len(weights)
    mu_eff = 1.0 / np.sum(weights ** 2)
    c_c = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)
    c_s = (mu_eff + 2) / (n + mu_eff + 5)
    c_1 = 2 / ((n + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff))
    damps = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_s
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))

    mean, sigma, cov = np.asarray(state["mean"]), state["sigma"], np.asarray(state["cov"])
    p_c, p_s = np.asarray(state["path_c"]), np.asarray(state["path_sigma"])
    order = np.argsort(fitness, kind="stable")[:mu]
    steps = (samples[order] - mean) / sigma
    new_mean = mean + sigma * weights @ steps
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    inv_root = vectors @ np.diag(1 / np.sqrt(np.maximum(values, 1e-20))) @ vectors.T
    y_w = weights @ steps
    p_s = (1 - c_s) * p_s + math.sqrt(c_s * (2 - c_s) * mu_eff) * inv_root @ y_w
    generation = state["generation"] + 1
    h_sigma = float(np.linalg.norm(p_s) / math.sqrt(1 - (1 - c_s) ** (2 * generation)) < (1.4 + 2 / (n + 1)) * chi_n)
    p_c = (1 - c_c) * p_c + h_sigma * math.sqrt(c_c * (2 - c_c) * mu_eff) * y_w
    rank_mu = (steps * weights[:, None]).T @ steps
    cov = ((1 - c_1 - c_mu) * cov + c_1 * (np.outer(p_c, p_c) + (1 - h_sigma) * c_c * (2 - c_c) * cov)
           + c_mu * rank_mu)
    sigma = sigma * math.exp((c_s / damps) * (np.linalg.norm(p_s) / chi_n - 1))
    return {"mean": new_mean.tolist(), "sigma": float(sigma), "cov": cov.tolist(), "path_c": p_c.tolist(),
            "path_sigma": p_s.tolist(), "generation": generation, "popsize": state["popsize"]}
