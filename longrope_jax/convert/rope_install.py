"""Installing a searched rope_scaling block into a model config for export, refusing what a format cannot serve."""

from __future__ import annotations

from pathlib import Path

from longrope_jax.errors import ConfigError
from longrope_jax.model.config import ModelConfig
from longrope_jax.rope import from_hf_config

# Formats whose loaders apply n̂ (un-interpolated start tokens); transformers, vLLM and llama.cpp do not.
FORMATS_WITH_N_HAT = ("orbax",)


def install_rope_scaling(cfg: ModelConfig, factors_path: str | Path, export_format: str,
                         max_position_embeddings: int | None = None, drop_n_hat: bool = False) -> ModelConfig:
    """cfg with the rope_scaling of `factors_path` (a rope_scaling block, a config.json holding one, a bare
    {"long_factor": [...]} or a CSV of factors); a bare block becomes longrope with unit short factors and the
    model's own length as the original one."""
    from longrope_jax.eval.methods import read_factors

    native = cfg.rope.original_length
    if max_position_embeddings is not None and max_position_embeddings < native:
        raise ConfigError(f"--max_position_embeddings={max_position_embeddings} is below the model's native "
                          f"length {native}; pass the extended context length (e.g. {4 * native})")
    block = dict(read_factors(factors_path, cfg.rope.half_dim))
    if "rope_type" not in block and "type" not in block:
        block["rope_type"] = "longrope"
    if block.get("rope_type", block.get("type")) in ("longrope", "su", "longrope2"):
        block.setdefault("short_factor", [1.0] * len(block["long_factor"]))
        block.setdefault("original_max_position_embeddings", native)
    n_hat = int(block.get("n_hat", 0) or 0)
    if n_hat and export_format not in FORMATS_WITH_N_HAT:
        if not drop_n_hat:
            raise ConfigError(f"{factors_path} keeps the first n_hat={n_hat} positions un-interpolated, which the "
                              f"{export_format} format cannot express (its loaders ignore n_hat, so the served model "
                              f"would not be the scored one); search with n_hat = 0 "
                              f"(--config.search.search_n_hat=False) or pass --drop_n_hat to export without it")
        block.pop("n_hat")
    hf = cfg.to_hf_config()
    hf["rope_scaling"] = block
    hf.pop("original_max_position_embeddings", None)
    hf["max_position_embeddings"] = max_position_embeddings or hf["max_position_embeddings"]
    try:
        return cfg.replace(rope=from_hf_config(hf))
    except ValueError as err:
        raise ConfigError(f"{factors_path}: {err}") from err
