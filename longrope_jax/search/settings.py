"""The `search` section, typed and checked before a search touches its workdir."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from longrope_jax.errors import ConfigError
from longrope_jax.search.space import N_HAT_CHOICES
from longrope_jax.settings import Section

RANGES: dict[str, tuple[type, float, float | None, str]] = {
    "population": (int, 2, None, "64"),
    "generations": (int, 0, None, "40"),
    "parents": (int, 1, None, "32"),
    "mutants": (int, 0, None, "16"),
    "crossovers": (int, 0, None, "16"),
    "batch_size": (int, 1, None, "4"),
    "documents": (int, 1, None, "3"),
    "verdict_documents": (int, 0, None, "1"),
    "data_parallel": (int, 1, None, "1"),
    "mutation_p": (float, 0.0, 1.0, "0.3"),
    "evo_scale": (float, 1e-9, None, "0.25"),
    "grid": (float, 1e-6, None, "0.01"),
    "lower": (float, 1.0, None, "1.0"),
    "upper": (float, 0.0, None, "0 (= 1.25 x the scale; 2 x for longrope2)"),
    "max_evaluations": (float, 0.0, None, "0 (no limit) or 270"),
    "initial_size": (int, 2, None, "16"),
    "per_generation": (int, 1, None, "8"),
    "pool_size": (int, 1, None, "256"),
    "screen_size": (int, 1, None, "24"),
    "elite": (int, 1, None, "8"),
    "knots": (int, 2, None, "8"),
    "cma_sigma": (float, 1e-6, None, "0.5"),
    "ucb_kappa": (float, 0.0, None, "1.0"),
    "cma_population": (int, 0, None, "0 (= 4 + 3 ln n) or 6"),
    "critical_dim_window": (int, 0, None, "8 (0 fixes cd)"),
}


@dataclasses.dataclass(frozen=True)
class SearchSettings(Section):
    """Reference LongRoPE search: population 64, 40 generations, 16 mutants + 16 crossovers from the top 32.

    evo_scale multiplies population/generations/parents/mutants/crossovers for small budgets. strategy "cmaes"
    (the default; benchmarks/search_efficiency.py) spends at most that budget's evaluations, "reference" is the
    published genetic algorithm (`longrope_jax/search/strategies.py` has all four). export_target (hf, gguf,
    longrope_jax) is what will serve the result: n̂ is searched only for longrope_jax, whose loader applies it.
    target_length, scale_target, base_factors, base_length and verdict_documents are what `experiments.search`
    extends to (`SearchTarget.from_settings`); the pipeline decides them per stage instead.
    """

    SECTION: ClassVar[str] = "search"
    RANGES: ClassVar = RANGES

    target_length: int = 16384
    scale_target: int = 0
    space: str = "dim_mono"
    population: int = 64
    generations: int = 40
    parents: int = 32
    mutants: int = 16
    crossovers: int = 16
    mutation_p: float = 0.3
    evo_scale: float = 1.0
    lower: float = 1.0
    upper: float = 0.0
    grid: float = 0.01
    search_n_hat: bool = True
    n_hat_choices: tuple = N_HAT_CHOICES
    critical_dim: int = 0
    critical_dim_window: int = 8
    seed: int = 0
    documents: int = 3
    windows: bool = True
    batch_size: int = 4
    racing: bool = True
    cache: str = ""
    verdict_documents: int = 1
    base_factors: str = ""
    base_length: int = 0
    fitness: str = "perplexity"
    data_parallel: int = 1
    context_parallel: int = 1
    verdict_methods: Any = ("none", "pi", "ntk", "dynamic", "yarn")
    seed_methods: Any = ("pi", "ntk", "yarn")
    seed_scales: Any = (1.0,)
    verdict_results: str = ""
    export_target: str = "hf"
    windows_seed: int = -1
    strategy: str = "cmaes"
    max_evaluations: float = 0
    initial_size: int = 16
    per_generation: int = 8
    pool_size: int = 256
    screen_size: int = 24
    elite: int = 8
    knots: int = 8
    cma_sigma: float = 0.5
    ucb_kappa: float = 1.0
    cma_population: int = 0

    def check(self) -> None:
        from longrope_jax.search.strategies import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"search.strategy={self.strategy!r} is not a strategy; use one of "
                              f"{', '.join(STRATEGIES)}")
        if self.upper and float(self.upper) < float(self.lower):
            raise ConfigError(f"search.upper={self.upper} is below search.lower={self.lower}; raise upper or set "
                              f"it to 0 (= 1.25 x the scale; 2 x for longrope2)")


@dataclasses.dataclass(frozen=True)
class BenchSettings(Section):
    """The search bench (`experiments.search_bench`, `configs/mini.py:bench`): the fixture's native length and
    the held-out windows every method is judged on."""

    SECTION: ClassVar[str] = "bench"
    RANGES: ClassVar = {"native_length": (int, 1, None, "256"), "held_out_windows": (int, 1, None, "8")}

    native_length: int = 256
    held_out_windows: int = 8
    held_out_seed: int = 1234
