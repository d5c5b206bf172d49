"""Rope methods compared by evaluation: each turns the model's own spec into the spec used at a target length.

  none       the model's own RoPE, unchanged
  pi         Position Interpolation (linear), s = target / original
  ntk        static NTK-aware base change, s = target / original
  dynamic    HF dynamic NTK (factor s; frequencies depend on the evaluated length)
  yarn       YaRN (HF), s = target / original
  longrope   LongRoPE factors from a file (our rope_scaling.json / factors.json / CSV, or an HF config.json)
  phi3       a model's own longrope short/long factors, chosen by length (Phi-3 rule)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from longrope_jax.errors import ConfigError
from longrope_jax.rope import RopeSpec, longrope_spec, validate_factors
from longrope_jax.rope.factors import classic_spec
from longrope_jax.rope.registry import classic_methods

# The closed-form methods come from the rope type registry (each type that implements one says so).
METHODS = ("none", *classic_methods(), "longrope", "phi3")


def with_served_spec(specs: dict[str, RopeSpec], name: str, served_name: str) -> dict[str, RopeSpec]:
    """`specs` plus, when specs[name] keeps n̂ > 0 positions un-interpolated, what transformers, vLLM and llama.cpp
    serve for it as `served_name`: the same factors without n̂ (their loaders have no n̂)."""
    if not specs[name].n_hat:
        return specs
    return {**specs, served_name: specs[name].replace(n_hat=0)}


def read_factors(path: str | Path, half_dim: int | None = None, require_monotone: bool = True) -> dict:
    """A LongRoPE factor file: JSON (a rope_scaling block, {"long_factor": ...}, or a whole config.json) or CSV
    with one factor per line (the reference format). Returns a dict with at least "long_factor"; with `half_dim`,
    the factors are also checked for that model (length d/2, finite, >= 1, and monotone unless
    `require_monotone` is False: the unordered `dim` search space's factors)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"factor file {path} does not exist; pass a rope_scaling.json or factors CSV from a search")
    try:
        if path.suffix == ".csv":
            with path.open() as handle:
                data = {"long_factor": [float(row[0]) for row in csv.reader(handle) if row and row[0].strip()]}
        else:
            data = json.loads(path.read_text())
            data = data.get("rope_scaling") or data if isinstance(data, dict) else data
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError; so is float("x")
        raise ConfigError(f"factor file {path} cannot be parsed ({err}); expected a rope_scaling JSON or a CSV "
                          f"with one number per line") from err
    if not isinstance(data, dict) or "long_factor" not in data:
        raise ConfigError(f"factor file {path} has no 'long_factor'; expected a HF rope_scaling block or CSV")
    if data.get("rope_type", data.get("type", "longrope")) not in ("longrope", "su"):
        raise ConfigError(f"factor file {path} has rope_type {data.get('rope_type', data.get('type'))!r}; a factor "
                          f"file is a longrope rope_scaling block (rope_type 'longrope') or a bare factor list")
    for field in ("long_factor", "short_factor"):
        values = data.get(field)
        if values is None and field == "short_factor":
            continue
        if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"factor file {path}: {field} must be a list of numbers, got {str(values)[:60]!r}")
    if half_dim is not None:
        if len(data["long_factor"]) != half_dim:
            raise ConfigError(f"factor file {path} has {len(data['long_factor'])} long factors but this model needs "
                              f"{half_dim} (head_dim/2); it was searched for another model")
        for field in ("long_factor", "short_factor"):
            if data.get(field) is not None:
                try:
                    validate_factors(data[field], field, half_dim, require_monotone)
                except ValueError as err:
                    raise ConfigError(f"factor file {path}: {err}") from err
    return data


def method_spec(base: RopeSpec, method: str, target_length: int, factors_path: str | Path | None = None,
                n_hat: int | None = None, require_monotone: bool = True) -> RopeSpec:
    """The RopeSpec a method uses to run the base model at `target_length` tokens."""
    original = base.original_length
    scale = max(target_length / original, 1.0)
    if method == "none":
        return base
    if method in classic_methods():
        return classic_spec(base, method, scale, original)
    if method == "longrope":
        if factors_path is None:
            raise ConfigError("method 'longrope' needs a factor file (eval.factors=path/to/rope_scaling.json)")
        data = read_factors(factors_path, base.half_dim, require_monotone)
        extra = {k: data[k] for k in ("attention_factor", "n_hat", "critical_dim") if data.get(k) is not None}
        if n_hat is not None:
            extra["n_hat"] = n_hat
        return longrope_spec(base, data["long_factor"], data.get("short_factor"),
                             max_position_embeddings=max(target_length, original + 1),
                             require_monotone=require_monotone, **extra)
    if method == "phi3":
        if base.rope_type != "longrope":
            raise ConfigError("method 'phi3' needs a model whose own config has longrope short/long factors")
        return base
    raise ConfigError(f"unknown rope method {method!r}; use one of {', '.join(METHODS)}")
