"""Reading ml_collections config fields the same way in every job (evaluation, search, pipeline)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from longrope_jax.model.config import without_speed_settings
from longrope_jax.resume import normalised


def as_list(value: Any) -> list:
    """A config list field; `--config.x=a,b` arrives as ("a,b",) or "a,b" for string fields, so split on commas."""
    items = [value] if isinstance(value, (str, int, float)) else list(value)
    out = []
    for item in items:
        out.extend(part.strip() for part in item.split(",") if part.strip()) if isinstance(item, str) \
            else out.append(item)
    return out


def model_record(config: Any) -> dict:
    """The model settings that change values (path, dtype, ...; not the speed-only ones), stored beside results so
    others can tell whether they were measured on the same model (`search.verdict_results`). param_dtype is
    recorded once it is not the default float32, so records written before it could be set still match."""
    record = without_speed_settings(normalised(config.model.to_dict()))
    if record.get("param_dtype") == "float32":
        record.pop("param_dtype")
    return record


def check_ranges(section: Any, name: str, ranges: Mapping[str, tuple[type, float, float | None, str]]) -> None:
    """Raises ConfigError for the first field of `section` outside its range.

    ranges: {field: (int or float, lowest legal value, highest legal value or None, an example of a good value)}.
    """
    from longrope_jax.errors import ConfigError

    for field, (kind, low, high, example) in ranges.items():
        if field not in section:
            continue
        value = section[field]
        try:
            number = kind(value)
            legal = (not isinstance(value, bool) and math.isfinite(number) and number >= low
                     and (high is None or number <= high) and (kind is float or number == value))
        except (TypeError, ValueError):
            legal = False
        if not legal:
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"{name}.{field}={value!r} must be {'an integer' if kind is int else 'a number'} "
                              f"{bounds}; e.g. --config.{name}.{field}={example}")
