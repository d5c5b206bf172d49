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
}


def check_search_settings(search: Any, original_length: int) -> None:
    """Raises ConfigError naming the field, its value and a legal one for any out-of-range search setting."""
    check_ranges(search, "search", RANGES)
    target = search.get("target_length")
    if not isinstance(target, int) or isinstance(target, bool) or target < original_length:
        raise ConfigError(f"search.target_length={target!r} must be an integer of at least the model's native "
                          f"length {original_length} (above it for long factors, equal for short ones); e.g. "
                          f"--config.search.target_length={2 * original_length}")
    if search.get("upper") and float(search.upper) < float(search.lower):
        raise ConfigError(f"search.upper={search.upper} is below search.lower={search.lower}; raise upper or set it "
                          f"to 0 (= 1.25 x the scale)")
