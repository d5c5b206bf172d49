"""longrope-jax: LongRoPE / LongRoPE2 context extension for RoPE language models, in JAX/Flax."""

__version__ = "0.1.0"


def load_model(path, **config_overrides):
    """(model, config) from a GGUF file, HF directory or Orbax model directory. See longrope_jax.loading."""
    from longrope_jax.loading import load_model as _load_model
    return _load_model(path, **config_overrides)


def load_tokenizer(path):
    """The tokenizer of a GGUF file, HF directory or Orbax model directory. See longrope_jax.tokenizer."""
    from longrope_jax.tokenizer import load_tokenizer as _load_tokenizer
    return _load_tokenizer(path)
