"""longrope-jax: LongRoPE / LongRoPE2 context extension for RoPE language models, in JAX/Flax."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the package imports nothing heavy until a loader is called
    from tokenizers import Tokenizer

    from longrope_jax.model.config import ModelConfig
    from longrope_jax.model.transformer import Transformer

__version__ = "0.1.0"


def load_model(path: str | Path, **config_overrides: Any) -> tuple[Transformer, ModelConfig]:
    """(model, config) from a GGUF file, HF directory or Orbax model directory. See longrope_jax.loading."""
    from longrope_jax.loading import load_model as _load_model
    return _load_model(path, **config_overrides)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a GGUF file, HF directory or Orbax model directory. See longrope_jax.tokenizer."""
    from longrope_jax.tokenizer import load_tokenizer as _load_tokenizer
    return _load_tokenizer(path)
