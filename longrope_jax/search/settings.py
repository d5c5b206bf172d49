"""Range checks of the `search` config section, run before a search touches its workdir."""

from __future__ import annotations

from typing import Any

from longrope_jax.errors import ConfigError
from longrope_jax.settings import check_ranges

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
    "upper": (float, 0.0, None, "0 (= 1.25 x the scale)"),
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
}


def check_search_settings(search: Any, original_length: int) -> None:
    """Raises ConfigError naming the field, its value and a legal one for any out-of-range search setting."""
    check_ranges(search, "search", RANGES)
    from longrope_jax.search.strategies import STRATEGIES
    if search.get("strategy", "reference") not in STRATEGIES:
        raise ConfigError(f"search.strategy={search.get('strategy')!r} is not a strategy; use one of "
                          f"{', '.join(STRATEGIES)}")
    if search.get("upper") and float(search.upper) < float(search.lower):
        raise ConfigError(f"search.upper={search.upper} is below search.lower={search.lower}; raise upper or set it "
                          f"to 0 (= 1.25 x the scale)")
