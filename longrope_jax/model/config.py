"""`ModelConfig`: the decoder family (Llama-2/3, Mistral, Phi-3, SmolLM2, Qwen2) and its HF config.json round trip."""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Mapping

import jax.numpy as jnp

from longrope_jax.errors import ConfigError
from longrope_jax.model.execution import EXECUTION_FIELDS, Execution, split_execution
from longrope_jax.rope import RopeSpec, from_hf_config as rope_from_hf_config

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "phi3": "Phi3ForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}
# Families whose q/k/v projections carry biases (o_proj and the MLP never do).
QKV_BIAS_ARCHITECTURES = ("qwen2",)
# The keys of a model record that only choose how values are computed: the `Execution` of a `config_to_dict`
# record, or its fields in a flat `config.model` section (and in records stored before `Execution` existed).
SPEED_ONLY_MODEL_KEYS = ("execution",) + EXECUTION_FIELDS

DTYPES = ("float32", "bfloat16", "float16")


def without_speed_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """A model record (config.model section or `config_to_dict`) without its execution settings."""
    return {k: v for k, v in record.items() if k not in SPEED_ONLY_MODEL_KEYS}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of one decoder-only RoPE model.

    `dtype` is the compute dtype (activations, matmuls); `param_dtype` the storage dtype of parameters. Both change
    values. `execution` holds what only changes speed and memory (attention kernel, tiles, remat, layer loop, ...);
    `replace` and `from_hf_config` also take its fields by name (attention="blockwise").
    """

    architecture: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    rope: RopeSpec = dataclasses.field(default_factory=RopeSpec)
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    execution: Execution = dataclasses.field(default_factory=Execution)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unsupported architecture {self.architecture!r}; supported: {sorted(ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim"):
            try:
                positive = operator.index(getattr(self, name)) >= 1  # int or numpy int (GGUF metadata), not 2.5
            except TypeError:
                positive = False
            if not positive:
                raise ConfigError(f"model {name}={getattr(self, name)!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if not isinstance(self.execution, Execution):
            raise ConfigError(f"ModelConfig.execution must be an Execution, not {type(self.execution).__name__}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r}: use float32, bfloat16 or float16")
        if self.rope.head_dim != self.head_dim:
            raise ConfigError(f"rope head_dim {self.rope.head_dim} != model head_dim {self.head_dim}")

    @property
    def qkv_bias(self) -> bool:
        """Whether the q/k/v projections carry biases (a property of the family)."""
        return self.architecture in QKV_BIAS_ARCHITECTURES

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with `changes`; execution fields (attention, block_q, remat, ...) may be given by name."""
        changes, execution = split_execution(changes)
        if execution:
            changes["execution"] = changes.get("execution", self.execution).replace(**execution)
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ Hugging Face round trip
    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """From a HF config.json dict (llama, mistral, phi3, qwen2 model types)."""
        model_type = config.get("model_type", "llama")
        if model_type not in ARCHITECTURES:
            raise ConfigError(f"unsupported model_type {model_type!r} in config.json; longrope-jax supports "
                              f"{sorted(ARCHITECTURES)} (Llama-2/3, Mistral, Phi-3, Qwen2 and their derivatives)")
        if model_type == "qwen2" and config.get("use_sliding_window"):
            raise ConfigError("config.json: Qwen2 with use_sliding_window=true (sliding attention on some layers "
                              "only) is not supported; use a model with use_sliding_window=false")
        if model_type != "qwen2" and (config.get("attention_bias") or config.get("mlp_bias")):
            raise ConfigError(f"config.json: {model_type} with attention_bias/mlp_bias is not supported (biases on "
                              f"o_proj and the MLP); only Qwen2's q/k/v biases are")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "max_position_embeddings") if k not in config]
        if missing:
            raise ConfigError(f"config.json lacks required keys {missing}")
        heads = int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
        try:
            rope = rope_from_hf_config(config)
        except ValueError as err:
            raise ConfigError(f"config.json rope settings: {err}") from err
        eos = config.get("eos_token_id")
        return cls(
            architecture=model_type,
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            sliding_window=config.get("sliding_window") if model_type in ("mistral", "phi3") else None,
            rope=rope,
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            pad_token_id=config.get("pad_token_id"),
        ).replace(**overrides)

    def to_hf_config(self) -> dict[str, Any]:
        """A config.json dict transformers loads without remote code (rope_scaling in HF's format)."""
        rope = self.rope
        out: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": rope.max_position_embeddings,
            "rope_theta": rope.theta,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
        }
        if rope.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = rope.partial_rotary_factor
        if rope.rope_type != "default":
            out["rope_scaling"] = rope.to_hf()
            if rope.original_max_position_embeddings is not None:
                out["original_max_position_embeddings"] = rope.original_max_position_embeddings
        else:
            out["rope_scaling"] = None
        if self.architecture in ("mistral", "phi3"):
            out["sliding_window"] = self.sliding_window
        if self.architecture == "qwen2":
            out.pop("attention_bias"), out.pop("mlp_bias")
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        return out


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Lossless JSON form of a ModelConfig (rope spec included); inverse of `config_from_dict`."""
    out = dataclasses.asdict(cfg)
    out["rope"] = cfg.rope.to_dict()
    return out


def config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    # Records written before `Execution` existed hold its fields flat.
    data, execution = split_execution(data)
    execution = Execution(**{**data.pop("execution", {}), **execution})
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown model config fields {unknown}; the file was written by another version?")
    data["rope"] = RopeSpec.from_dict(data["rope"], require_monotone=False)
    return ModelConfig(**data, execution=execution)
