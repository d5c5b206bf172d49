"""Between a Transformer and flat parameter dicts {"layers/self_attn/q_proj": array, ...} (conversion, Orbax)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from longrope_jax.model.config import ModelConfig
from longrope_jax.model.transformer import Transformer, abstract_model


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def model_params(model: Transformer) -> dict[str, jax.Array]:
    """Flat {path: array} of a model's parameters."""
    return flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def model_from_params(cfg: ModelConfig, params: dict[str, Any], shardings: dict[str, Any] | None = None) -> Transformer:
    """Builds a Transformer around given parameters without random initialisation.

    params: flat {path: array-like}; shardings: optional flat {path: jax.sharding.Sharding} to place them.
    """
    graphdef, state = nnx.split(abstract_model(cfg))
    dtype = cfg.params_dtype

    def place(path: str, value: Any) -> jax.Array:
        array = jnp.asarray(value, dtype) if shardings is None else jax.device_put(
            jnp.asarray(value, dtype), shardings[path])
        return array

    flat = {path: place(path, value) for path, value in params.items()}
    expected = set(flatten(nnx.to_pure_dict(state)))
    if set(flat) != expected:
        from longrope_jax.errors import CheckpointError
        raise CheckpointError(f"parameters do not match the model: missing {sorted(expected - set(flat))[:4]}, "
                              f"unexpected {sorted(set(flat) - expected)[:4]}")
    nnx.replace_by_pure_dict(state, unflatten(flat))
    return nnx.merge(graphdef, state)


def split_params(model: Transformer) -> tuple[Any, Any, dict[str, Any]]:
    """(graphdef, state template, nested pure-dict params) — params are what optax and Orbax see."""
    graphdef, state = nnx.split(model)
    return graphdef, state, nnx.to_pure_dict(state)


def merge_params(graphdef: Any, template: Any, params: dict[str, Any]) -> Transformer:
    """The model for nested pure-dict params (works under jit: the template is copied, never mutated)."""
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
