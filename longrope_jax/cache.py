"""Where fetched assets live: $LONGROPE_JAX_CACHE, else ~/.cache/longrope_jax."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(subdir: str = "") -> Path:
    """The cache directory (created on demand), optionally a named subdirectory of it."""
    root = Path(os.environ.get("LONGROPE_JAX_CACHE", Path.home() / ".cache" / "longrope_jax")).expanduser()
    path = root / subdir if subdir else root
    path.mkdir(parents=True, exist_ok=True)
    return path
