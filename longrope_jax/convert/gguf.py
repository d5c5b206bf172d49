"""Import a llama-architecture GGUF file (llama.cpp's format) as HF-style config and weights (the tokenizer:
`gguf_tokenizer`).

Three things differ from a Hugging Face checkpoint, and each is undone here:
- names: llama.cpp's `blk.{i}.attn_q.weight` etc. become `model.layers.{i}.self_attn.q_proj.weight`;
- quantisation: tensors are dequantised to float32 with `gguf.quants.dequantize`;
- rotary layout: llama.cpp's converter permutes the rows of q_proj / k_proj from HF's "rotate half"
  layout to GPT-J's interleaved pairs (see `llama_cpp_permute`); we apply the inverse.

GGUF stores shapes fastest-axis-first ([in, out]); the row-major data is already HF's [out, in].
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from longrope_jax.errors import CheckpointError

_MISSING = object()
_GGUF_MAGIC = b"GGUF"

# llama.cpp name (inside a block, without "blk.{i}.") -> HF name (inside "model.layers.{i}.")
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# llama.cpp's LongRoPE factor tensors -> HF rope_scaling key.
ROPE_FACTOR_TENSORS = {"long_factor": "rope_factors_long.weight", "short_factor": "rope_factors_short.weight"}

# GGUF rope scaling metadata suffix -> HF rope_scaling key.
_ROPE_SCALING_KEYS = {
    "factor": "factor",
    "original_context_length": "original_max_position_embeddings",
    "attn_factor": "attention_factor",
    "yarn_beta_fast": "beta_fast",
    "yarn_beta_slow": "beta_slow",
}


# ----------------------------------------------------------------------------------------------- reading


def _open(path: str | PathLike[str]) -> Any:
    """A `gguf.GGUFReader` for `path`, with every way of failing turned into a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"GGUF file not found: {p}. Check the path (or fetch it with longrope_jax.assets).")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise CheckpointError(f"{p} is not a GGUF file: it starts with {magic!r}, not {_GGUF_MAGIC!r}.")
    st = p.stat()
    # Keyed on the file's identity too, so a file replaced in place (os.replace) is read afresh.
    return _cached_reader(str(p.resolve()), (st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, _stamp: tuple[int, int, int]) -> Any:
    """Parsing the metadata (tens of thousands of vocab strings) takes seconds; config, tensors and
    tokenizer of one file are usually read back to back, so keep the last readers (they only memory-map)."""
    import gguf

    try:
        # The reader memory-maps the file and slices every tensor out of it up front, so a truncated
        # or corrupt file fails here rather than halfway through an import.
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 -- the reader raises ValueError/IndexError/etc. for bad files
        raise CheckpointError(
            f"{path} is a corrupt or truncated GGUF file ({type(exc).__name__}: {exc}). Re-download it."
        ) from exc


def _meta(reader: Any, key: str, default: Any = _MISSING) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise CheckpointError(f"GGUF metadata key {key!r} is missing; the file is incomplete or not a llama model.")
        return default
    return field.contents()


def _f32(value: Any) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(value)))


def _require_llama(reader: Any, path: str | PathLike[str]) -> None:
    arch = _meta(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{path}: GGUF architecture {arch!r} is not supported; "
            "only 'llama' (LlamaForCausalLM) files can be imported."
        )


def _llama_config(reader: Any) -> dict[str, Any]:
    """The model-shape part of the config, from `llama.*` keys."""
    hidden = int(_meta(reader, "llama.embedding_length"))
    n_head = int(_meta(reader, "llama.attention.head_count"))
    n_kv = int(_meta(reader, "llama.attention.head_count_kv", n_head))
    head_dim = int(_meta(reader, "llama.attention.key_length", hidden // n_head))
    rot_dim = int(_meta(reader, "llama.rope.dimension_count", head_dim))
    if rot_dim != head_dim:
        raise CheckpointError(
            f"GGUF rotates {rot_dim} of {head_dim} head dims; partial rotary is not supported for llama."
        )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _meta(reader, "llama.vocab_size", len(tokens.data) if tokens is not None else _MISSING)
    return {
        "hidden_size": hidden,
        "intermediate_size": int(_meta(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_meta(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": _f32(_meta(reader, "llama.attention.layer_norm_rms_epsilon")),
        # llama.cpp's default when the key is absent.
        "rope_theta": _f32(_meta(reader, "llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_meta(reader, "llama.context_length")),
        "vocab_size": int(vocab),
    }


def _rope_scaling(reader: Any) -> dict[str, Any] | None:
    prefix = "llama.rope.scaling."
    keys = {k[len(prefix) :]: _meta(reader, k) for k in reader.fields if k.startswith(prefix)}
    rope_type = keys.pop("type", None)
    if rope_type in (None, "none") and "factor" not in keys:
        return None
    scaling: dict[str, Any] = {"rope_type": rope_type or "linear"}
    for suffix, value in keys.items():
        scaling[_ROPE_SCALING_KEYS.get(suffix, suffix)] = _f32(value) if isinstance(value, float) else value
    if rope_type == "longrope":
        # llama.cpp keeps LongRoPE's λ vectors as tensors, not metadata.
        tensors = {t.name: t for t in reader.tensors}
        for key, name in ROPE_FACTOR_TENSORS.items():
            if name not in tensors:
                raise CheckpointError(f"GGUF rope scaling is longrope but the {name!r} tensor is missing")
            scaling[key] = [_f32(v) for v in np.asarray(tensors[name].data, dtype=np.float32).reshape(-1)]
    return scaling


def gguf_config(path: str | PathLike[str]) -> dict[str, Any]:
    """An HF `config.json`-style dict (LlamaForCausalLM) for a llama GGUF file.

    Returns:
        dict with model_type, architectures, hidden_size, intermediate_size, num_hidden_layers,
        num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps, rope_theta,
        max_position_embeddings (GGUF context_length), vocab_size, tie_word_embeddings (no
        `output.weight` tensor), bos/eos/pad_token_id (None when absent), and rope_scaling when
        the file has `llama.rope.scaling.*` keys.

    Raises:
        CheckpointError: missing/corrupt file, non-llama architecture, or missing metadata.
    """
    return _config(_open(path), path)


def _config(reader: Any, path: str | PathLike[str]) -> dict[str, Any]:
    _require_llama(reader, path)
    cfg: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        **_llama_config(reader),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "bos_token_id": _meta(reader, "tokenizer.ggml.bos_token_id", None),
        "eos_token_id": _meta(reader, "tokenizer.ggml.eos_token_id", None),
        "pad_token_id": _meta(reader, "tokenizer.ggml.padding_token_id", None),
    }
    scaling = _rope_scaling(reader)
    if scaling is not None:
        cfg["rope_scaling"] = scaling
    return cfg


# ----------------------------------------------------------------------------------------------- tensors


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf): HF "rotate half" -> interleaved pairs.

    Within each head, rows [x_0..x_{d/2-1}, y_0..y_{d/2-1}] become [x_0, y_0, x_1, y_1, ...].

    Args:
        w: [n_head * head_dim, ...] (a weight [out, in] or a bias [out]).
        n_head: heads in `w` (num_attention_heads for q, num_key_value_heads for k).
    Returns:
        Same shape as `w`.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `llama_cpp_permute`: interleaved pairs -> HF "rotate half". Same shapes."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
    return None


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF name -> HF shape ([out, in]) of every tensor a llama checkpoint with this config has."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    per_layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (inter, h),
        "mlp.up_proj.weight": (inter, h),
        "mlp.down_proj.weight": (h, inter),
    }
    for i in range(cfg["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
    return shapes


def iter_gguf_tensors(path: str | PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Stream `(hf_name, float32 array)` pairs from a llama GGUF, one dequantised tensor at a time.

    Names and shapes follow HF LlamaForCausalLM: `model.embed_tokens.weight` [vocab, hidden],
    `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` [out, in], `...mlp.{gate,up,down}_proj.weight`
    [out, in], `...{input,post_attention}_layernorm.weight` [hidden], `model.norm.weight` [hidden], and
    `lm_head.weight` [vocab, hidden] only when the file has an untied output matrix. q/k rows are in
    HF's rotate-half order. Order is the file's. Arrays are fresh, writable and do not alias the file.

    The whole file is validated (names, shapes, quantisation types) by this call, before any tensor
    is dequantised, so a bad file fails fast instead of halfway through an import.

    Raises:
        CheckpointError: missing/corrupt file, non-llama architecture, missing or unexpected tensors,
            wrong shapes, or a quantisation type gguf cannot dequantise.
    """
    reader = _open(path)
    cfg = _config(reader, path)
    expected = _expected_shapes(cfg)
    supported = _dequantisable_types()
    plan = []
    for t in reader.tensors:
        if t.name in ROPE_FACTOR_TENSORS.values():
            continue  # read into the config's rope_scaling by _rope_scaling
        hf = _hf_name(t.name)
        if hf is None or hf not in expected:
            raise CheckpointError(
                f"{path}: unexpected tensor {t.name!r}; this importer handles plain llama checkpoints only "
                "(no biases, no rope_freqs tensor)."
            )
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
        if shape != expected[hf]:
            raise CheckpointError(f"{path}: tensor {t.name!r} has shape {shape}, config implies {expected[hf]}.")
        if supported is not None and t.tensor_type not in supported:
            raise _unsupported_quant(path, t, supported)
        plan.append((t, hf, expected[hf]))
    missing = sorted(set(expected) - {hf for _, hf, _ in plan})
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}; the file is incomplete.")
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    return _stream(path, plan, heads)


def _stream(path: Any, plan: list[tuple[Any, str, tuple[int, ...]]], heads: dict[str, int]) -> Iterator:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    for t, hf, shape in plan:
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise _unsupported_quant(path, t, _dequantisable_types()) from None
        if t.tensor_type == GGMLQuantizationType.F32:
            w = np.array(w, dtype=np.float32)  # a view of the read-only memmap otherwise
        w = w.reshape(shape)
        proj = hf.rsplit(".", 2)[-2]
        if proj in heads:
            w = llama_cpp_unpermute(w, heads[proj])
        w = np.ascontiguousarray(w, dtype=np.float32)
        yield hf, w
        del w  # do not keep this tensor alive while the next one is dequantised


def _unsupported_quant(path: Any, t: Any, supported: set[Any] | None) -> CheckpointError:
    names = sorted(q.name for q in supported) if supported else "see gguf.quants"
    return CheckpointError(
        f"{path}: tensor {t.name!r} uses quantisation {t.tensor_type.name}, which gguf {_gguf_version()} "
        f"cannot dequantise (supported: {names}). Re-quantise the file, e.g. to Q8_0 or F16."
    )


def _dequantisable_types() -> set[Any] | None:
    """The types `gguf.quants.dequantize` handles, or None if this gguf version hides the list."""
    from gguf import GGMLQuantizationType

    try:
        from gguf.quants import _type_traits  # no public list; this is the table dequantize() consults
    except ImportError:
        return None  # _stream still turns dequantize's NotImplementedError into a CheckpointError
    return {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *_type_traits}


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
