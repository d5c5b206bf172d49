"""Thin command-line entry points (`python -m experiments.<name>`); the logic lives in longrope_jax."""
