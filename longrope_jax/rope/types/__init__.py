"""One module per rope type; each registers itself with `longrope_jax.rope.registry` when imported."""
