"""A Gaussian-process surrogate of fitness over factor vectors, fitted on every evaluation so far.

Inputs are log λ scaled by log(upper) (plus n̂ / max n̂ where n̂ is searched), targets the standardised mean NLL;
an RBF kernel whose length scale is the median distance between evaluated points, and a small noise term (the
fitness is deterministic; the noise is the model's misfit). Pure numpy: a few hundred points fit in
milliseconds, next to seconds per real evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def features(factors: np.ndarray, n_hat: np.ndarray, upper: float, max_n_hat: float) -> np.ndarray:
    """(N, d/2 [+ 1]) surrogate inputs of N candidates."""
    x = np.log(np.asarray(factors, np.float64)) / np.log(max(upper, 1.0 + 1e-9))
    if max_n_hat > 0:
        x = np.concatenate([x, np.asarray(n_hat, np.float64)[:, None] / max_n_hat], axis=1)
    return x


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2 * a @ b.T, 0.0)


@dataclasses.dataclass(frozen=True)
class GaussianProcess:
    x: np.ndarray
    alpha: np.ndarray
    chol: np.ndarray
    length: float
    y_mean: float
    y_std: float

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the predicted mean NLL at x (M, F)."""
        k = np.exp(-_sq_dist(x, self.x) / (2 * self.length ** 2))
        mean = k @ self.alpha
        v = np.linalg.solve(self.chol, k.T)
        var = np.maximum(1.0 - np.sum(v * v, 0), 1e-12)
        return self.y_mean + self.y_std * mean, self.y_std * np.sqrt(var)


def fit_gp(x: np.ndarray, y: np.ndarray, noise: float = 1e-3) -> GaussianProcess:
    """GP on (N, F) inputs and (N,) targets; N >= 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    y_mean, y_std = float(np.mean(y)), float(np.std(y) or 1.0)
    d2 = _sq_dist(x, x)
    off = d2[np.triu_indices(len(x), 1)]
    length = float(np.sqrt(np.median(off[off > 0]))) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / (2 * length ** 2)) + noise * np.eye(len(x))
    chol = np.linalg.cholesky(k)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, (y - y_mean) / y_std))
    return GaussianProcess(x, alpha, chol, length, y_mean, y_std)
