"""Orbax model directories: params + config (+ tokenizer), written atomically, restorable onto any mesh.

Layout of a model directory:
  longrope_model.json   ModelConfig (rope spec included), written last: its presence marks a complete save
  params/               Orbax StandardCheckpointer tree of flat {path: array}
  tokenizer.json        optional
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from longrope_jax.errors import CheckpointError
from longrope_jax.io import staged_dir, write_text_atomic
from longrope_jax.model.config import ModelConfig, config_from_dict, config_to_dict

CONFIG_FILE = "longrope_model.json"


def _escape(path: str) -> str:
    return path.replace("/", ".")  # Orbax keys must not contain '/'


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def save_model_dir(cfg: ModelConfig, params: dict[str, Any], path: str | Path, tokenizer=None) -> Path:
    """Writes a model directory atomically (staging directory renamed into place)."""
    path = Path(path).absolute()
    with staged_dir(path) as staging:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / "params", {_escape(k): v for k, v in params.items()})
        checkpointer.wait_until_finished()
        if tokenizer is not None:
            tokenizer.save(str(staging / "tokenizer.json"))
        write_text_atomic(staging / CONFIG_FILE, json.dumps(config_to_dict(cfg), indent=2))
    return path


def read_model_config(path: str | Path) -> ModelConfig:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(f"{path} is not a complete longrope-jax model directory ({CONFIG_FILE} missing); "
                              f"it was interrupted while saving or is another format")
    try:
        return config_from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path} is corrupt: {err}") from err


def restore_params(path: str | Path, cfg: ModelConfig, shardings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat params restored from a model directory, placed with `shardings` (flat {path: Sharding}) if given."""
    from longrope_jax.convert.hf import param_shapes

    dtype = cfg.params_dtype
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {_escape(k): jax.ShapeDtypeStruct(shape, dtype, sharding=(shardings or {}).get(k, default))
              for k, shape in param_shapes(cfg).items()}
    try:
        restored = ocp.StandardCheckpointer().restore(Path(path).absolute() / "params", target)
    except Exception as err:  # orbax raises many types (ValueError, FileNotFoundError, tensorstore errors)
        raise CheckpointError(f"cannot restore parameters from {path}: {type(err).__name__}: {err}; the checkpoint "
                              f"is corrupt or does not match {CONFIG_FILE}") from err
    out = {k.replace(".", "/"): v for k, v in restored.items()}
    for key, value in out.items():
        # On the devices the parameter is sharded over: one pass, one boolean to the host.
        if jnp.issubdtype(value.dtype, jnp.floating) and not bool(jnp.isfinite(value).all()):
            raise CheckpointError(f"parameter {key} in {path} holds NaN/inf; the checkpoint is corrupt")
    return out
