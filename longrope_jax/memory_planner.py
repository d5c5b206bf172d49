"""Per-chip HBM plan for long-context training / evaluation on a (data, fsdp, tensor, context) mesh.

Parameters are sharded exactly as `longrope_jax.sharding` shards them (the model's own logical axes through
LOGICAL_AXIS_RULES, replicated where a mesh axis does not divide a dimension). Activations assume memory-linear
attention (blockwise / ring: no L² term, only tile-sized scratch) and the sequence split over `context`.

The activation model per token and layer, in compute-dtype elements (e = hidden, q/kv = head dims and
i = intermediate, each divided by `tensor` where the heads / mlp dimension divides):
  "none"           everything the backward reads: 4e + 3q + 3kv + 4i (norm outputs, residuals, q/k/v before and
                   after RoPE, attention output, gate, silu(gate), up, gate·up)
  "dots_saveable"  layer input + matmul outputs without batch dims: 3e + q + 2kv + 2i
  "full"           the layer input only: e
  "save_attention" the layer input + the blockwise kernel's float32 output and log-sum-exp: e + (q + heads)·4/bytes
plus one layer's working set during its backward (its recomputed activations and their cotangents).
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Mapping, Sequence

import numpy as np

from longrope_jax.errors import ConfigError
from longrope_jax.model.execution import REMAT_POLICIES as REMAT  # the model's policies, every one planned
from longrope_jax.model.config import ModelConfig

GIB = 1024 ** 3
CHIPS_GIB: dict[str, float] = {"TPU v4": 32, "TPU v5e": 16, "TPU v5p": 95, "TPU v6e": 32, "H100": 80, "H200": 141}
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("train", "eval")
COMPONENTS = ("weights", "gradients", "optimizer", "fsdp_gather", "activations", "attention_scratch", "logits",
              "kv_cache")

PRESETS: dict[str, dict[str, Any]] = {
    "llama2_7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=False),
    "smollm2_135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
}


def _bytes(dtype: str) -> int:
    return int(np.dtype({"bfloat16": np.float16}.get(dtype, dtype)).itemsize)  # bf16 is 2 bytes like fp16


def _mesh_dict(mesh: Sequence[int] | Mapping[str, int]) -> dict[str, int]:
    from longrope_jax.sharding import MESH_AXES

    sizes = dict(mesh) if isinstance(mesh, Mapping) else dict(zip(MESH_AXES, mesh))
    if set(sizes) - set(MESH_AXES) or len(sizes) != len(MESH_AXES) or min(sizes.values()) < 1:
        raise ConfigError(f"mesh must give positive sizes for {MESH_AXES}, got {mesh!r}")
    return {axis: int(sizes[axis]) for axis in MESH_AXES}


def _param_elements(cfg: ModelConfig, mesh: dict[str, int]) -> tuple[int, int, int, int]:
    """(total params, params per chip, one layer's params gathered over fsdp, output kernel gathered over fsdp).

    "Gathered" = what FSDP materialises on a chip before a matmul: the full tensor divided by `tensor` only.
    """
    from longrope_jax.convert.hf import param_shapes
    from longrope_jax.sharding import logical_to_spec, param_logical_axes

    shapes, axes = param_shapes(cfg), param_logical_axes(cfg)
    fake_mesh = types.SimpleNamespace(shape=mesh)  # logical_to_spec only reads mesh.shape
    no_fsdp = types.SimpleNamespace(shape={**mesh, "fsdp": 1})
    total = per_chip = layer_gathered = out_gathered = 0
    out_path = "embed_tokens" if cfg.tie_word_embeddings else "lm_head"

    def local(shape, spec) -> int:
        n = 1
        for dim, names in zip(shape, spec):
            names = (names,) if isinstance(names, str) else tuple(names or ())
            n *= dim // math.prod(mesh[a] for a in names)  # logical_to_spec only shards when it divides
        return n

    for path, shape in shapes.items():
        total += math.prod(shape)
        per_chip += local(shape, logical_to_spec(axes[path], shape, fake_mesh))
        gathered = local(shape, logical_to_spec(axes[path], shape, no_fsdp))
        if path.startswith("layers/"):
            layer_gathered += gathered // cfg.num_layers
        elif path == out_path:
            out_gathered = gathered
    return total, per_chip, layer_gathered, out_gathered


def _split(dim: int, parts: int) -> int:
    """Per-chip size of an activation dimension sharded over `tensor` (replicated when it does not divide)."""
    return dim // parts if dim % parts == 0 else dim


def plan_memory(config: ModelConfig | Mapping[str, Any], seq_len: int,
                mesh: Sequence[int] | Mapping[str, int] = (1, 1, 1, 1), *, mode: str = "train",
                remat: str = "full", param_dtype: str = "bfloat16", compute_dtype: str = "bfloat16",
                optimizer_dtype: str = "float32", master_weights: bool | None = None,
                batch_per_replica: int = 1, block_q: int = 512, block_kv: int = 512, loss_chunk: int = 1024,
                usable_fraction: float = 0.9) -> dict[str, Any]:
    """Per-chip bytes of each memory component and which chips it fits.

    Args:
      config: ModelConfig or a HF config.json dict.
      seq_len: tokens per sequence; the sequence is split over the `context` mesh axis.
      mesh: (data, fsdp, tensor, context) sizes, or a dict with those keys.
      mode: "train" (weights, grads, AdamW state, saved activations) or "eval" (forward + a KV cache of seq_len,
        as for decoding after a seq_len prompt).
      remat: one of the model's REMAT_POLICIES (see module docstring; nothing_saveable plans like full).
      master_weights: keep an fp32 master copy in the optimizer state; default: when params are not fp32.
      batch_per_replica: sequences per (data × fsdp) replica; global batch = data·fsdp·batch_per_replica.
      usable_fraction: share of HBM the plan may use (XLA runtime reserve, fragmentation).

    Returns:
      dict with "bytes" {component: per-chip bytes}, "total_bytes", "param_count", "weights_total_bytes"
      (unsharded), "tokens_per_chip", "chips", "fits" {chip: bool}, "settings".
    """
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_hf_config(config)
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: use one of {MODES}")
    if remat not in REMAT:
        raise ConfigError(f"remat {remat!r}: use one of {REMAT}")
    for name, value in (("param_dtype", param_dtype), ("compute_dtype", compute_dtype),
                        ("optimizer_dtype", optimizer_dtype)):
        if value not in DTYPES:
            raise ConfigError(f"{name} {value!r}: use one of {DTYPES}")
    m = _mesh_dict(mesh)
    t, c = m["tensor"], m["context"]
    if seq_len % c:
        raise ConfigError(f"seq_len {seq_len} must be a multiple of the context axis size {c}")
    p_b, a_b, o_b = _bytes(param_dtype), _bytes(compute_dtype), _bytes(optimizer_dtype)
    master = (param_dtype != "float32") if master_weights is None else master_weights

    total, per_chip, layer_gathered, out_gathered = _param_elements(cfg, m)
    local_len = seq_len // c
    tokens = batch_per_replica * local_len  # tokens whose activations live on one chip
    e = cfg.hidden_size  # the residual stream is replicated over `tensor` (no sequence parallelism)
    q = _split(cfg.num_heads, t) * cfg.head_dim
    kv = _split(cfg.num_kv_heads, t) * cfg.head_dim
    i = _split(cfg.intermediate_size, t)
    vocab = _split(cfg.vocab_size, t)
    layer_all = 4 * e + 3 * q + 3 * kv + 4 * i  # per token, what a layer's backward reads
    heads = _split(cfg.num_heads, t)
    # nothing_saveable keeps only the layer input, like full.
    saved = {"none": layer_all, "dots_saveable": 3 * e + q + 2 * kv + 2 * i, "full": e, "nothing_saveable": e,
             "save_attention": e + (q + heads) * 4 / a_b}[remat]
    bq, bk = min(block_q, local_len), min(block_kv, local_len)
    train = mode == "train"

    out: dict[str, int] = dict.fromkeys(COMPONENTS, 0)
    out["weights"] = per_chip * p_b
    if train:
        out["gradients"] = per_chip * p_b
        out["optimizer"] = per_chip * o_b * 2 + (per_chip * 4 if master else 0)  # AdamW m, v (+ fp32 master)
        # Saved per layer for the backward, one layer's working set (recomputed activations unless remat is
        # "none", plus their cotangents), and the final hidden states with their gradient.
        working = layer_all * (1 if remat == "none" else 2)
        out["activations"] = int(tokens * a_b * (cfg.num_layers * saved + working + 2 * e))
    else:
        out["activations"] = tokens * a_b * (layer_all + e)  # one layer's intermediates at a time
        out["kv_cache"] = cfg.num_layers * 2 * batch_per_replica * local_len * kv * a_b
    if m["fsdp"] > 1:  # one gathered layer in use + the next one prefetched, and the gathered output kernel
        out["fsdp_gather"] = (2 * layer_gathered + out_gathered) * a_b
    # Ring attention: float32 score/prob(/dS) tiles, the K/V shard in hand + the one arriving, float32 running
    # accumulator (dQ in the backward) and, when training, float32 dK/dV accumulators travelling with K/V.
    tiles = batch_per_replica * heads * bq * bk * 4 * (3 if train else 2)
    kv_ring = 2 * 2 * tokens * kv * a_b + (2 * 2 * tokens * kv * 4 if train else 0)
    out["attention_scratch"] = tiles + kv_ring + tokens * q * 4 * (2 if train else 1)
    # Chunked loss: float32 logits of one chunk (and their gradient when training).
    out["logits"] = batch_per_replica * min(loss_chunk, local_len) * vocab * 4 * (2 if train else 1)

    total_bytes = sum(out.values())
    return {
        "model": cfg.architecture, "param_count": total, "weights_total_bytes": total * p_b, "bytes": out,
        "total_bytes": total_bytes, "tokens_per_chip": tokens, "mesh": m, "chips": math.prod(m.values()),
        "fits": {chip: total_bytes <= gib * GIB * usable_fraction for chip, gib in CHIPS_GIB.items()},
        "settings": dict(seq_len=seq_len, mode=mode, remat=remat, param_dtype=param_dtype,
                         compute_dtype=compute_dtype, optimizer_dtype=optimizer_dtype, master_weights=master,
                         batch_per_replica=batch_per_replica, block_q=block_q, block_kv=block_kv,
                         loss_chunk=loss_chunk, usable_fraction=usable_fraction,
                         config=dataclasses.asdict(cfg) | {"rope": None}),
    }


def format_plan(plan: Mapping[str, Any]) -> str:
    """A plain-text table: per-chip GiB by component, the total, and a fits / does-not-fit line per chip."""
    s, m = plan["settings"], plan["mesh"]
    cfg = s["config"]
    lines = [
        f"model: {plan['param_count'] / 1e9:.3f}B params ({cfg['num_layers']} layers, hidden {cfg['hidden_size']},"
        f" heads {cfg['num_heads']}/{cfg['num_kv_heads']}, vocab {cfg['vocab_size']})",
        f"seq_len {s['seq_len']} ({plan['tokens_per_chip']} tokens/chip), mode {s['mode']}, remat {s['remat']}, "
        f"params {s['param_dtype']}, compute {s['compute_dtype']}, optimizer {s['optimizer_dtype']}"
        f"{' + fp32 master' if s['mode'] == 'train' and s['master_weights'] else ''}",
        "mesh " + " ".join(f"{k}={v}" for k, v in m.items()) + f" ({plan['chips']} chips, "
        f"{s['batch_per_replica']} sequence(s) per data×fsdp replica)",
        "",
        f"| {'component':<18} | {'GiB / chip':>10} |",
        f"|{'-' * 20}|{'-' * 11}:|",
    ]
    for name, value in plan["bytes"].items():
        lines.append(f"| {name:<18} | {value / GIB:>10.2f} |")
    lines += [f"| {'total':<18} | {plan['total_bytes'] / GIB:>10.2f} |", "",
              f"| {'chip':<8} | {'HBM GiB':>7} | {'usable':>6} | {'fits':<4} |",
              f"|{'-' * 10}|{'-' * 8}:|{'-' * 7}:|{'-' * 6}|"]
    for chip, fits in plan["fits"].items():
        gib = CHIPS_GIB[chip]
        lines.append(f"| {chip:<8} | {gib:>7} | {gib * s['usable_fraction']:>6.1f} | {'yes' if fits else 'no':<4} |")
    return "\n".join(lines)
