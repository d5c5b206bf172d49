"""Export a llama-architecture model to GGUF, llama.cpp's format, with its rope scaling in llama.cpp's own terms.

LongRoPE is written as llama.cpp represents it: `llama.rope.scaling.type = "longrope"`, the λ vectors as the
`rope_factors_long.weight` / `rope_factors_short.weight` tensors (float32, rotary_dim/2 each),
`llama.rope.scaling.attn_factor` (the cos/sin magnitude) and `llama.rope.scaling.original_context_length`.
llama.cpp picks the long factors when the context it is *started with* exceeds the original length, not by the
length of the sequence (see the README's "Serving the result").

The inverse of `convert.gguf`: HF names become llama.cpp's, q/k rows are permuted to interleaved pairs
(`llama_cpp_permute`), and the file is written beside its destination and renamed into place, so an interrupted
export never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from longrope_jax.convert.gguf import _BLOCK_NAMES, _TOP_NAMES, ROPE_FACTOR_TENSORS, llama_cpp_permute
from longrope_jax.convert.hf import params_to_hf
from longrope_jax.errors import ConfigError
from longrope_jax.model.config import ModelConfig

OUTTYPES = ("f32", "f16", "q8_0")
_GGUF_NAMES = {hf: name for name, hf in _TOP_NAMES.items()}
_GGUF_BLOCK_NAMES = {hf: name for name, hf in _BLOCK_NAMES.items()}
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # llama.cpp token types
_Q8_0_BLOCK = 32


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a HF llama tensor name ("model.layers.3.mlp.up_proj.weight" -> "blk.3.ffn_up.weight")."""
    if hf_name in _GGUF_NAMES:
        return _GGUF_NAMES[hf_name]
    _, _, layer, suffix = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_BLOCK_NAMES[suffix]}"


def _check_exportable(cfg: ModelConfig) -> None:
    if cfg.architecture != "llama":
        raise ConfigError(f"GGUF export writes llama.cpp's llama architecture; this model is {cfg.architecture!r}. "
                          f"Export it with --format hf and convert that with llama.cpp's convert_hf_to_gguf.py")
    rope = cfg.rope
    if rope.rope_type not in ("default", "ntk", "linear", "yarn", "longrope"):
        raise ConfigError(f"rope_type {rope.rope_type!r} has no llama.cpp equivalent (it offers none, linear, yarn "
                          f"and longrope); install a longrope block with --rope_scaling, or export with --format hf")
    if rope.rope_type == "yarn" and (rope.attention_factor, rope.mscale, rope.mscale_all_dim) != (None, None, None):
        raise ConfigError("this YaRN spec sets attention_factor/mscale, which llama.cpp's yarn does not read; "
                          "export with --format hf, or search longrope factors instead")
    if rope.n_hat:
        raise ConfigError(f"the rope spec keeps the first n_hat={rope.n_hat} positions un-interpolated, which "
                          f"llama.cpp cannot express; pass --drop_n_hat to export without it")
    if rope.partial_rotary_factor != 1.0:
        raise ConfigError("partial rotary embeddings are not part of llama.cpp's llama architecture")


def _add_model_metadata(writer: Any, cfg: ModelConfig, name: str) -> None:
    hf = cfg.to_hf_config()
    writer.add_name(name)
    writer.add_context_length(int(hf["max_position_embeddings"]))
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(float(hf["rms_norm_eps"]))
    writer.add_rope_freq_base(float(hf["rope_theta"]))
    writer.add_rope_dimension_count(cfg.rope.rotary_dim)
    writer.add_vocab_size(cfg.vocab_size)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        if getattr(cfg, key) is not None:
            add(int(getattr(cfg, key)))


def _add_rope_scaling(writer: Any, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Writes the rope scaling keys; returns the factor tensors to add (longrope only)."""
    from gguf import RopeScalingType

    block = cfg.rope.to_hf()
    kind = block["rope_type"]
    if kind == "default":
        return {}
    if kind == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(block["factor"]))
        return {}
    writer.add_rope_scaling_orig_ctx_len(int(cfg.rope.original_length))
    if kind == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(block["factor"]))
        if block.get("beta_fast") is not None:
            writer.add_rope_scaling_yarn_beta_fast(float(block["beta_fast"]))
        if block.get("beta_slow") is not None:
            writer.add_rope_scaling_yarn_beta_slow(float(block["beta_slow"]))
        return {}
    # longrope: no scaling factor key, since llama.cpp would divide every position by it on top of the λ tensors.
    writer.add_rope_scaling_type(RopeScalingType.LONGROPE)
    writer.add_rope_scaling_attn_factors(float(block["attention_factor"]))
    return {tensor: np.asarray(block[key], dtype=np.float32) for key, tensor in ROPE_FACTOR_TENSORS.items()}


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizers pre-tokenizer (the inverse of gguf_tokenizer's table)."""
    def byte_level(step: dict[str, Any], regex: bool) -> bool:
        return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == regex

    if pre is not None and byte_level(pre, True):
        return "gpt-2"  # llama.cpp's spelling (it does not read "gpt2")
    steps = (pre or {}).get("pretokenizers", [])
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") \
            and byte_level(steps[1], True):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and byte_level(steps[1], False):
        from longrope_jax.convert.gguf_tokenizer import _LLAMA3_SPLIT
        if steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT:
            return "llama-bpe"
    raise ConfigError(f"the tokenizer's pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp name (known: "
                      f"GPT-2 byte-level, SmolLM's digits + byte-level, Llama-3's split); export with --format hf")


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ConfigError(f"GGUF export carries byte-level BPE tokenizers only; this one is {model.get('type')!r}. "
                          f"Export with --format hf")
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if len(by_id) > vocab_size:
        raise ConfigError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embeddings")
    # llama.cpp needs one token per embedding row; rows the tokenizer never produces get placeholder names.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [_NORMAL] * vocab_size
    for added in data.get("added_tokens", []):
        types[int(added["id"])] = _CONTROL if added.get("special") else _USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    # As in our HF export: BOS is prepended by the caller, never implicitly.
    writer.add_add_bos_token(False)


def _encode(array: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw dtype or None) for one tensor; 1-D tensors (norms, factors) stay float32 as llama.cpp expects."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or outtype == "f32":
        return array, None
    if outtype == "f16":
        return array.astype(np.float16), None
    if array.shape[-1] % _Q8_0_BLOCK:
        return array.astype(np.float16), None  # q8_0 needs whole 32-value blocks per row
    return quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def save_gguf(cfg: ModelConfig, params: dict[str, Any], path: str | Path, tokenizer: Any = None,
              outtype: str = "f32", name: str = "longrope-jax export") -> Path:
    """Writes `path` (a .gguf file) that llama.cpp loads as a llama model, and `load_model` reads back.

    Args:
        cfg: the model config; cfg.rope decides the scaling metadata (default/ntk, linear, yarn or longrope).
        params: flat params as `load_params` returns them.
        tokenizer: a `tokenizers.Tokenizer` (byte-level BPE) to embed, or None for a weights-only file.
        outtype: "f32" (bit-exact round trip), "f16" or "q8_0" for 2-D weights; 1-D tensors stay float32.
    Raises:
        ConfigError: an architecture, rope type, n̂ or tokenizer that llama.cpp cannot express, or a bad outtype.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise ConfigError(f"--outtype={outtype!r}: use one of {', '.join(OUTTYPES)}")
    _check_exportable(cfg)
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    writer = gguf.GGUFWriter(str(staging), "llama")
    try:
        _add_model_metadata(writer, cfg, name)
        writer.add_file_type(file_type)
        factor_tensors = _add_rope_scaling(writer, cfg)
        if tokenizer is not None:
            _add_tokenizer(writer, tokenizer, cfg.vocab_size)
        for tensor_name, data in factor_tensors.items():
            writer.add_tensor(tensor_name, data)
        heads = {"q_proj": cfg.num_heads, "k_proj": cfg.num_kv_heads}
        for hf_name, array in params_to_hf(cfg, params):
            proj = hf_name.rsplit(".", 2)[-2]
            if proj in heads:
                array = llama_cpp_permute(np.asarray(array), heads[proj])
            data, raw_dtype = _encode(array, outtype)
            writer.add_tensor(gguf_tensor_name(hf_name), data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, path)
    finally:
        writer.close()
        staging.unlink(missing_ok=True)
    return path
