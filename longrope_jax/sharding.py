"""One logical-axis-rules table mapping parameter/activation axis names to mesh axes (MaxText style).

Mesh axes: data (batch / search candidates), fsdp (parameters and batch), tensor (heads, mlp, vocab),
context (sequence). A dimension whose size the mesh axes do not divide is replicated instead.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from longrope_jax.errors import ConfigError
from longrope_jax.model.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor", "context")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("candidates", "data"),
    ("length", "context"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
)


def mesh_sizes(value: str | Sequence[int], field: str = "mesh") -> tuple[int, int, int, int]:
    """'data,fsdp,tensor,context' (or a sequence of four) -> four positive ints; one clear error otherwise."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        sizes = tuple(int(x) for x in parts)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 4 or min(sizes) < 1:
        raise ConfigError(f"{field}={value!r}: give four positive sizes data,fsdp,tensor,context, e.g. 1,8,1,8")
    return sizes  # type: ignore[return-value]


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, context: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor, context) mesh over the first data·fsdp·tensor·context devices."""
    devices = list(devices if devices is not None else jax.devices())
    size = data * fsdp * tensor * context
    if size > len(devices) or min(data, fsdp, tensor, context) < 1:
        raise ConfigError(f"mesh data={data} fsdp={fsdp} tensor={tensor} context={context} needs {size} devices, "
                          f"{len(devices)} available; shrink the mesh or run on more chips")
    return Mesh(np.asarray(devices[:size]).reshape(data, fsdp, tensor, context), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for an array with logical `axes`; each mesh axis is used at most once."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        target = table.get(name) if name is not None else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(n for n in names if n not in used and mesh.shape[n] > 1)
        if names and size % int(np.prod([mesh.shape[n] for n in names])) == 0:
            used.update(names)
            spec.append(names[0] if len(names) == 1 else names)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def param_logical_axes(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Flat {param path: logical axes} read from the model's own annotations."""
    from longrope_jax.model.state import flatten
    from longrope_jax.model.transformer import abstract_model

    state = nnx.state(abstract_model(cfg), nnx.Param)
    axes = jax.tree.map(lambda v: v.get_metadata()["logical_axes"], state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
    return flatten(nnx.to_pure_dict(axes))


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> dict[str, NamedSharding]:
    """Flat {param path: NamedSharding} for `cfg` on `mesh`."""
    from longrope_jax.convert.hf import param_shapes

    shapes = param_shapes(cfg)
    return {path: NamedSharding(mesh, logical_to_spec(axes, shapes[path], mesh))
            for path, axes in param_logical_axes(cfg).items()}


def assert_params_sufficiently_sharded(shardings: dict[str, NamedSharding], shapes: dict[str, tuple[int, ...]],
                                       min_elements: int = 1 << 20) -> None:
    """Raises ConfigError naming every parameter with >= min_elements that is fully replicated on a >1 mesh."""
    replicated = [path for path, sharding in shardings.items()
                  if np.prod(shapes[path]) >= min_elements and sharding.mesh.size > 1
                  and all(s is None for s in sharding.spec)]
    if replicated:
        raise ConfigError(f"large parameters are replicated on every device: {replicated}; choose mesh axis sizes "
                          f"that divide their dimensions (see LOGICAL_AXIS_RULES)")
