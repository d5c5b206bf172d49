"""longrope-jax: LongRoPE / LongRoPE2 context extension for RoPE language models, in JAX/Flax."""

__version__ = "0.1.0"
