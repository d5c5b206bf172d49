"""Search spaces of LongRoPE factors and the candidate representation.

A candidate is λ (d/2 factors on a 0.01 grid) plus n̂; the space decides which λ are legal:
  dim_mono        λ monotone non-decreasing within [lower, upper]
  dim             λ anywhere in the box [lower, upper]^(d/2), no order (the ablation of the monotone constraint)
  dim_piece_mono  integer genes α < β: λ_i = 1 for i <= α, λ_i = s for i > β, monotone in [1, s] between
  longrope2       critical dimension cd: λ_i = λ_cd^(i/cd) below cd; at and above cd strictly increasing within
                  [s, upper], and the last factor at most 4 above the one before it. cd is a gene of its own
                  within `critical_range` (LongRoPE2 searches the real critical dimension: the theoretical one,
                  from the training length, need not be where the model's frequencies actually stop generalising)

The default upper bound is 1.25·s, and 2·s for longrope2, whose starting family (`critical_seeds`) begins at s
and climbs above it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from longrope_jax.errors import ConfigError

SPACES = ("dim_mono", "dim", "dim_piece_mono", "longrope2")
EXPORT_TARGETS = ("hf", "gguf", "longrope_jax")  # what the result will be served with
N_HAT_CHOICES = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 48, 64, 96, 128, 160, 192, 224, 256)


def space_is_monotone(kind: str) -> bool:
    """Whether every candidate of the space `kind` is monotone non-decreasing (all but the unordered ablation), so
    its factor files are checked for order when read back."""
    return kind != "dim"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One point of the search: factors λ (d/2,), n̂, for dim_piece_mono the genes α < β, for longrope2 its
    critical dimension (-1 elsewhere)."""

    factors: tuple[float, ...]
    n_hat: int = 0
    alpha: int = -1
    beta: int = -1
    critical_dim: int = -1

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.factors, np.float64)

    def to_dict(self) -> dict[str, Any]:
        out = {"factors": list(self.factors), "n_hat": self.n_hat, "alpha": self.alpha, "beta": self.beta}
        return out if self.critical_dim < 0 else {**out, "critical_dim": self.critical_dim}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        return cls(tuple(float(v) for v in data["factors"]), int(data.get("n_hat", 0)), int(data.get("alpha", -1)),
                   int(data.get("beta", -1)), int(data.get("critical_dim", -1)))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Legal candidates. `scale` is s = target / original length; grid is the factor quantum (0.01)."""

    kind: str
    half_dim: int
    scale: float
    lower: float = 1.0
    upper: float = 0.0  # 0 -> 1.25·s (2·s for longrope2)
    grid: float = 0.01
    n_hat_choices: tuple[int, ...] = (0,)
    critical_dim: int | None = None  # longrope2: the theoretical cd, where the seeds put it
    critical_range: tuple[int, int] | None = dataclasses.field(default=None, repr=False)  # None: cd fixed

    def __post_init__(self) -> None:
        if self.kind not in SPACES:
            raise ConfigError(f"unknown search space {self.kind!r}; use one of {', '.join(SPACES)}")
        if self.upper == 0.0:
            object.__setattr__(self, "upper", round((2.0 if self.kind == "longrope2" else 1.25) * self.scale, 2))
        if not 1.0 <= self.lower <= self.upper:
            raise ConfigError(f"search bounds must satisfy 1 <= lower <= upper, got [{self.lower}, {self.upper}]")
        if any(n < 0 for n in self.n_hat_choices) or not self.n_hat_choices:
            raise ConfigError("search.n_hat_choices must be non-empty and >= 0")
        if self.kind == "longrope2":
            if self.critical_dim is None or not 0 < self.critical_dim < self.half_dim - 1:
                raise ConfigError(f"longrope2 needs a critical_dim in (0, {self.half_dim - 1}), "
                                  f"got {self.critical_dim}")
            low, high = self.critical_range or (self.critical_dim, self.critical_dim)
            object.__setattr__(self, "critical_range", (int(low), int(high)))
            if not 0 < low <= self.critical_dim <= high < self.half_dim - 1:
                raise ConfigError(f"longrope2: the searched critical dimensions {low}..{high} must lie in "
                                  f"(0, {self.half_dim - 1}) and contain {self.critical_dim}; narrow "
                                  f"search.critical_dim_window")
            if self.upper < self.scale + self.grid * (self.half_dim - low):
                raise ConfigError(f"longrope2: upper bound {self.upper} leaves no room for strictly increasing "
                                  f"factors from s={self.scale}; raise search.upper")

    def identity(self) -> str:
        """What a search state records of its space: the repr, plus longrope2's searched cd range where cd is
        searched (so states of every other space keep the identity they were saved with)."""
        searched = self.kind == "longrope2" and self.critical_range[0] < self.critical_range[1]
        return repr(self) + (f"[critical_range={self.critical_range}]" if searched else "")

    # ------------------------------------------------------------------ grid
    def quantize(self, values: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(values, np.float64) / self.grid) * self.grid

    def key(self, candidate: Candidate) -> str:
        """Grid-quantised identity of a candidate: equal keys <=> the same point (O(1) duplicate checks)."""
        steps = np.round(candidate.array / self.grid).astype(np.int64)
        cd = f"cd{candidate.critical_dim}|" if candidate.critical_dim >= 0 else ""
        return f"{candidate.n_hat}|{candidate.alpha}|{candidate.beta}|{cd}" + ",".join(map(str, steps))

    # ------------------------------------------------------------------ legality
    def is_valid(self, candidate: Candidate) -> bool:
        lam = candidate.array
        eps = 1e-9
        if lam.shape != (self.half_dim,) or not np.all(np.isfinite(lam)):
            return False
        if candidate.n_hat not in self.n_hat_choices:
            return False
        on_grid = np.allclose(lam, self.quantize(lam), atol=1e-9)
        in_box = bool(lam.min() >= self.lower - eps and lam.max() <= self.upper + eps)
        if self.kind == "dim":
            return bool(on_grid and in_box)
        if self.kind == "dim_mono":
            return bool(on_grid and in_box and np.all(np.diff(lam) >= -eps))
        if self.kind == "dim_piece_mono":
            a, b = candidate.alpha, candidate.beta
            if not -1 <= a < b <= self.half_dim - 1:
                return False
            middle = lam[a + 1:b + 1]
            return bool(on_grid and np.all(np.abs(lam[:a + 1] - 1.0) < eps)
                        and np.all(np.abs(lam[b + 1:] - self.quantize(self.scale)) < eps)
                        and np.all(middle >= 1.0 - eps) and np.all(middle <= self.scale + eps)
                        and np.all(np.diff(lam) >= -eps))
        cd = candidate.critical_dim
        if not self.critical_range[0] <= cd <= self.critical_range[1]:
            return False
        upper = lam[cd:]
        return bool(np.allclose(lam[:cd], _ramp_below(upper[0], cd), rtol=1e-9)
                    and np.allclose(upper, self.quantize(upper), atol=1e-9)
                    and upper.min() >= self.quantize(self.scale) - eps and upper.max() <= self.upper + eps
                    and np.all(np.diff(upper) > self.grid / 2) and upper[-1] - upper[-2] <= 4.0 + eps)

    # ------------------------------------------------------------------ projection (seeding, repair)
    def project(self, factors: np.ndarray, n_hat: int = 0) -> Candidate:
        """The nearest legal candidate to arbitrary factors (used to seed from PI/NTK/YaRN)."""
        lam = np.asarray(factors, np.float64).copy()
        n_hat = min(self.n_hat_choices, key=lambda c: abs(c - n_hat))
        if self.kind in ("dim", "dim_mono"):
            lam = np.clip(self.quantize(lam), self.lower, self.upper)
            if self.kind == "dim_mono":
                lam = np.maximum.accumulate(lam)
            return Candidate(tuple(lam), n_hat)
        if self.kind == "dim_piece_mono":
            s = float(self.quantize(self.scale))
            lam = np.maximum.accumulate(np.clip(self.quantize(lam), 1.0, s))
            alpha = int(np.sum(lam <= 1.0 + 1e-9)) - 1
            beta = max(alpha + 1, self.half_dim - int(np.sum(lam >= s - 1e-9)))
            beta = min(beta, self.half_dim - 1)
            lam[:alpha + 1], lam[beta + 1:] = 1.0, s
            return Candidate(tuple(lam), n_hat, alpha, beta)
        return self.longrope2_candidate(lam[self.critical_dim:], n_hat, self.critical_dim)

    def critical_seeds(self, count: int = 8) -> dict[str, np.ndarray]:
        """LongRoPE2's starting family for the longrope2 space, {name: λ}: at and above cd, S + 0.1·j for
        S = s·(1 + 0.1·k), k < count (its search starts at 32, 35, …, 53 for s = 32), kept inside the upper bound;
        below cd the ramp from λ_cd. Empty for the other spaces. Classic seeds are no start here: every one of them
        is below s above cd, so all project onto the same point (s, s + 0.01, …), whose neighbours are one grid
        step apart and leave mutation no room."""
        if self.kind != "longrope2":
            return {}
        count_above = self.half_dim - self.critical_dim
        seeds: dict[str, np.ndarray] = {}
        keys: set[str] = set()
        for k in range(count):
            start = min(self.scale * (1.0 + 0.1 * k), self.upper - 0.1 * (count_above - 1))
            candidate = self.longrope2_candidate(start + 0.1 * np.arange(count_above), 0, self.critical_dim)
            key = self.key(candidate)
            if key not in keys:
                keys.add(key)
                seeds[f"longrope2@{1.0 + 0.1 * k:.1f}s"] = candidate.array
        return seeds

    def longrope2_candidate(self, upper_factors: np.ndarray, n_hat: int, critical_dim: int) -> Candidate:
        """Repairs factors at and above cd (len = d/2 − cd) into the longrope2 constraints and derives the ones
        below cd."""
        cd, g = int(critical_dim), self.grid
        if not self.critical_range[0] <= cd <= self.critical_range[1] or len(upper_factors) != self.half_dim - cd:
            raise ValueError(f"longrope2: {len(upper_factors)} factors at and above cd = {cd}; cd must lie in "
                             f"{self.critical_range} and the factors number d/2 − cd")
        upper = self.quantize(np.asarray(upper_factors, np.float64))
        count = len(upper)
        low = float(self.quantize(self.scale))
        # Strictly increasing on the grid, inside [s, upper]: clamp each value between its predecessor + g and
        # the largest value that still leaves room for the rest.
        out = np.empty(count)
        for i in range(count):
            floor = low if i == 0 else out[i - 1] + g
            ceiling = self.upper - g * (count - 1 - i)
            out[i] = min(max(upper[i], floor), ceiling)
        if count >= 2 and out[-1] - out[-2] > 4.0:
            out[-1] = out[-2] + 4.0
        out = self.quantize(out)
        return Candidate(tuple(np.concatenate([_ramp_below(out[0], cd), out])), n_hat, critical_dim=cd)


def _ramp_below(lambda_cd: float, critical_dim: int) -> np.ndarray:
    """LongRoPE2's λ_i = λ_cd^(i/cd) for the pairs below cd, in float64 (`rope.expand_critical_dim` in jnp)."""
    return lambda_cd ** (np.arange(critical_dim) / critical_dim)


def space_from_config(search_cfg: Any, half_dim: int, scale: float, rotary_dim: int, theta: float,
                      original_length: int) -> SearchSpace:
    """A SearchSpace from the `search` config section. longrope2 searches cd within
    search.critical_dim_window of search.critical_dim (default: the theoretical one from the training length)."""
    from longrope_jax.rope import critical_dimension

    critical, critical_range = None, None
    if search_cfg.space == "longrope2":
        critical = int(search_cfg.critical_dim) if search_cfg.critical_dim else critical_dimension(
            rotary_dim, theta, original_length)
        window = int(search_cfg.get("critical_dim_window", 0))
        critical_range = (max(1, critical - window), min(half_dim - 2, critical + window))
    target = search_cfg.get("export_target", "hf")
    if target not in EXPORT_TARGETS:
        raise ConfigError(f"search.export_target={target!r}: use one of {', '.join(EXPORT_TARGETS)}")
    # Only longrope-jax applies n̂; a search for an HF or GGUF export keeps to what those loaders serve.
    searches_n_hat = bool(search_cfg.search_n_hat) and target == "longrope_jax"
    choices = tuple(int(n) for n in search_cfg.n_hat_choices) if searches_n_hat else (0,)
    return SearchSpace(kind=search_cfg.space, half_dim=half_dim, scale=float(scale), lower=float(search_cfg.lower),
                       upper=float(search_cfg.upper), grid=float(search_cfg.grid), n_hat_choices=choices,
                       critical_dim=critical, critical_range=critical_range)

