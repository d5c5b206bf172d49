"""Hugging Face <-> longrope-jax parameters: safetensors directories in and out, tensor by tensor.

HF stores linear weights as (out, in); we store kernels as (in, out) with a leading layer axis. Phi-3's fused
qkv_proj / gate_up_proj are split on import and fused again on export; Qwen2's q/k/v biases map one to one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import ml_dtypes
import numpy as np

from longrope_jax.errors import CheckpointError
from longrope_jax.io import staged_dir, write_text_atomic
from longrope_jax.model.config import ModelConfig

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LINEAR = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
           "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}
_NORMS = {"input_layernorm.weight", "post_attention_layernorm.weight"}
_BIASES = {"self_attn.q_proj.bias": "layers/self_attn/q_bias", "self_attn.k_proj.bias": "layers/self_attn/k_bias",
           "self_attn.v_proj.bias": "layers/self_attn/v_bias"}


def _np_dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat '/'-joined parameter paths (as in nnx.state(model).to_pure_dict()) and their shapes, read from the
    NNX module itself (`nnx.eval_shape`: nothing is allocated), so a family's parameters are declared once."""
    from flax import nnx

    from longrope_jax.model.state import flatten
    from longrope_jax.model.transformer import abstract_model

    state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    return {path: tuple(value.shape) for path, value in flatten(state).items()}


def _split_fused(cfg: ModelConfig, suffix: str, weight: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if suffix == "self_attn.qkv_proj.weight":
        hd, kvd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        return [("self_attn.q_proj.weight", weight[:hd]), ("self_attn.k_proj.weight", weight[hd:hd + kvd]),
                ("self_attn.v_proj.weight", weight[hd + kvd:])]
    if suffix == "mlp.gate_up_proj.weight":
        return [("mlp.gate_proj.weight", weight[:cfg.intermediate_size]),
                ("mlp.up_proj.weight", weight[cfg.intermediate_size:])]
    return [(suffix, weight)]


def hf_to_params(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Builds flat params {path: array} from (HF name, HF array) pairs, consuming one tensor at a time.

    Raises CheckpointError on unknown names, shape mismatches or missing tensors.
    """
    shapes = param_shapes(cfg)
    dtype = _np_dtype(cfg.param_dtype)
    params = {path: np.empty(shape, dtype) for path, shape in shapes.items()}
    seen: set[tuple[str, int]] = set()

    def put(path: str, layer: int | None, value: np.ndarray, hf_name: str) -> None:
        expected = shapes[path][1:] if layer is not None else shapes[path]
        if tuple(value.shape) != tuple(expected):
            raise CheckpointError(f"tensor {hf_name} has shape {tuple(value.shape)} but the config implies "
                                  f"{tuple(expected)}; the checkpoint does not match its config.json")
        if layer is None:
            params[path][...] = value
        else:
            params[path][layer] = value
        seen.add((path, -1 if layer is None else layer))

    for name, value in tensors:
        value = np.asarray(value)
        if not (np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16):
            raise CheckpointError(f"tensor {name} has dtype {value.dtype}, expected floating point weights; "
                                  f"the checkpoint is quantised or corrupt (dequantise it first)")
        if name in ("model.embed_tokens.weight", "model.norm.weight"):
            put("embed_tokens" if "embed" in name else "norm/weight", None, value, name)
        elif name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue  # some exports store the tied copy too
            put("lm_head", None, value.T, name)
        elif match := _LAYER.match(name):
            layer, suffix = int(match.group(1)), match.group(2)
            if layer >= cfg.num_layers:
                raise CheckpointError(f"tensor {name} is for layer {layer} but config has {cfg.num_layers} layers")
            if suffix.endswith("rotary_emb.inv_freq"):
                continue  # old checkpoints store RoPE buffers; ours are computed
            for part, weight in _split_fused(cfg, suffix, value):
                if part in _LINEAR:
                    put("layers/" + part.removesuffix(".weight").replace(".", "/"), layer, weight.T, name)
                elif part in _NORMS:
                    put("layers/" + part.replace(".", "/"), layer, weight, name)
                elif part in _BIASES and cfg.qkv_bias:
                    put(_BIASES[part], layer, weight, name)
                else:
                    raise CheckpointError(f"unexpected tensor {name}: not part of a {cfg.architecture} decoder "
                                          f"(only Qwen2 has biases, on q/k/v; extra modules are not supported)")
        else:
            raise CheckpointError(f"unexpected tensor {name} for architecture {cfg.architecture}")
    missing = [f"{p}[{l}]" if l >= 0 else p for p, shape in shapes.items()
               for l in (range(shape[0]) if p.startswith("layers/") else [-1]) if (p, l) not in seen]
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:4]}; "
                              f"it is incomplete or for another architecture")
    return params


def params_to_hf(cfg: ModelConfig, params: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) pairs from flat params, one tensor at a time (Phi-3 projections fused again)."""
    def host(x):
        return np.asarray(x)

    yield "model.embed_tokens.weight", host(params["embed_tokens"])
    for layer in range(cfg.num_layers):
        pre = f"model.layers.{layer}."
        linear = {part: host(params["layers/" + part.replace(".", "/")][layer]).T
                  for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
        if cfg.architecture == "phi3":
            yield pre + "self_attn.qkv_proj.weight", np.concatenate(
                [linear.pop("self_attn.q_proj"), linear.pop("self_attn.k_proj"), linear.pop("self_attn.v_proj")])
            yield pre + "mlp.gate_up_proj.weight", np.concatenate([linear.pop("mlp.gate_proj"),
                                                                    linear.pop("mlp.up_proj")])
        for part, weight in linear.items():
            yield pre + part + ".weight", np.ascontiguousarray(weight)
        if cfg.qkv_bias:
            for hf_name, path in _BIASES.items():
                yield pre + hf_name, host(params[path][layer])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            yield pre + norm + ".weight", host(params[f"layers/{norm}/weight"][layer])
    yield "model.norm.weight", host(params["norm/weight"])
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", np.ascontiguousarray(host(params["lm_head"]).T)


# ---------------------------------------------------------------------------------------------- directories
def iter_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Tensors of a HF directory (model.safetensors or sharded with model.safetensors.index.json)."""
    from safetensors import safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json; "
                              f"export the model with safe_serialization=True")
    for file in files:
        try:
            with safe_open(path / file, framework="flax") as handle:
                for name in handle.keys():
                    yield name, np.asarray(handle.get_tensor(name))
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own SafetensorError (not an OSError) on bad headers
            raise CheckpointError(f"cannot read {path / file}: {err}; the file is corrupt or truncated") from err


def read_hf_config(path: Path) -> dict[str, Any]:
    config_path = Path(path) / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path} has no config.json; pass a Hugging Face model directory")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err


def load_hf_dir(path: Path, **config_overrides: Any) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(ModelConfig, flat params) from a HF safetensors directory (llama, mistral, phi3)."""
    cfg = ModelConfig.from_hf_config(read_hf_config(path), **config_overrides)
    return cfg, hf_to_params(cfg, iter_safetensors(path))


def save_hf_dir(cfg: ModelConfig, params: dict[str, Any], path: Path, tokenizer=None,
                max_shard_bytes: int = 2 << 30) -> Path:
    """Writes config.json, safetensors shards (+ index when sharded) and tokenizer files that
    `transformers.AutoModelForCausalLM.from_pretrained` loads without remote code.

    Shards are written to a temporary directory that is renamed into place, so an interrupted export never
    leaves a half-written model at `path`.
    """
    with staged_dir(path) as staging:
        _write_shards(params_to_hf(cfg, params), staging, max_shard_bytes)
        write_text_atomic(staging / "config.json", json.dumps(cfg.to_hf_config(), indent=2))
        write_text_atomic(staging / "generation_config.json", json.dumps(
            {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}, indent=2))
        if tokenizer is not None:
            from longrope_jax.tokenizer import save_tokenizer_files
            save_tokenizer_files(tokenizer, staging, cfg)
    return Path(path)


def _write_shards(tensors: Iterable[tuple[str, np.ndarray]], directory: Path, max_shard_bytes: int) -> None:
    """Streams (HF name, array) pairs into safetensors files of at most max_shard_bytes (one tensor may exceed it);
    one file is model.safetensors, several get model.safetensors.index.json."""
    from safetensors.numpy import save_file

    shard: dict[str, np.ndarray] = {}
    shard_bytes, files, weight_map = 0, [], {}

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, directory / name, metadata={"format": "pt"})
            files.append(name)
            weight_map.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    for name, value in tensors:
        if shard_bytes + value.nbytes > max_shard_bytes:
            flush()
        shard[name] = np.ascontiguousarray(value)
        shard_bytes += value.nbytes
    flush()
    if len(files) == 1:
        os.replace(directory / files[0], directory / "model.safetensors")
        return
    total = sum((directory / f).stat().st_size for f in files)
    write_text_atomic(directory / "model.safetensors.index.json",
                      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
