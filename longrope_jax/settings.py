"""Reading ml_collections config fields the same way in every job (evaluation, search, pipeline)."""

from __future__ import annotations

import json
from typing import Any

from longrope_jax.model.config import without_speed_settings


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
    others can tell whether they were measured on the same model (`search.verdict_results`)."""
    return without_speed_settings(json.loads(json.dumps(config.model.to_dict())))
