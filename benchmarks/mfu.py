"""Forward model-FLOPs utilisation (MFU) at long context, for SmolLM2-135M and a 1B-class config.

  python -m benchmarks.mfu --length 32768 --dtype bfloat16 [--presets smollm2_135m,llama3_1b] [--out FILE]

Random weights (speed does not depend on their values), one jitted `sequence_nll` forward (attention "auto":
cuDNN on GPU, splash on TPU, blockwise on CPU) per preset. Model FLOPs count the matmuls a causal forward needs:
2·(non-embedding params)·L + 2·L·hidden·vocab (LM head) + 2·L²·head_dim·heads·layers (QKᵀ and PV over the causal
half). MFU = model FLOPs / seconds / the chip's dense bf16 peak (unknown chips, CPUs included, report FLOP/s only).
`benchmarks/device_check.sh` runs it on a lent GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

PEAK_BF16 = {  # dense bf16 FLOP/s per chip, from the vendors' data sheets
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12,
}
PRESETS = {
    "smollm2_135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
    "llama3_1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                      max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True),
    "tiny": dict(model_type="llama", vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64),
}


def forward_flops(cfg, length: int) -> float:
    """Matmul FLOPs of one causal forward over `length` tokens (see the module docstring)."""
    e, d, h, kv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    per_layer = e * h * d * 2 + e * kv * d * 2 + 3 * e * cfg.intermediate_size  # q, o, k, v, gate/up/down
    linear = 2 * per_layer * cfg.num_layers * length
    head = 2 * length * e * cfg.vocab_size
    attention = 2 * length * length * d * h * cfg.num_layers  # 2 matmuls · 2 FLOPs · L²/2 pairs
    return float(linear + head + attention)


def peak_flops(device_kind: str) -> float | None:
    for name, peak in PEAK_BF16.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def measure(preset: str, length: int, dtype: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from longrope_jax.model.config import ModelConfig
    from longrope_jax.model.loss import sequence_nll
    from longrope_jax.model.transformer import init_model

    cfg = ModelConfig.from_hf_config(PRESETS[preset], dtype=dtype, param_dtype=dtype)
    graphdef, state = nnx.split(init_model(cfg))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, length + 1)), jnp.int32)
    fn = jax.jit(lambda s, t: sequence_nll(nnx.merge(graphdef, s), t).mean())
    start = time.perf_counter()
    compiled = fn.lower(state, tokens).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = float(jax.block_until_ready(compiled(state, tokens)))
        times.append(time.perf_counter() - start)
    seconds = min(times)
    device = jax.devices()[0]
    flops = forward_flops(cfg, length)
    peak = peak_flops(device.device_kind)
    return {"preset": preset, "length": length, "dtype": dtype, "device_kind": device.device_kind,
            "backend": jax.default_backend(), "attention": cfg.execution.attention, "seconds": seconds, "times": times,
            "compile_s": compile_s, "tokens_per_s": length / seconds, "model_flops": flops,
            "flops_per_s": flops / seconds, "peak_flops": peak, "mfu": flops / seconds / peak if peak else None,
            "loss": loss}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="smollm2_135m,llama3_1b")
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mfu.json"))
    args = parser.parse_args(argv)
    from longrope_jax.io import write_json_atomic

    rows = [measure(p, args.length, args.dtype, args.repeats) for p in args.presets.split(",") if p]
    print(f"{'preset':>14} {'length':>7} {'device':>18} {'s':>8} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['preset']:>14} {r['length']:>7} {r['device_kind'][:18]:>18} {r['seconds']:>8.3f} "
              f"{r['tokens_per_s']:>9.0f} {r['flops_per_s'] / 1e12:>8.2f} {mfu:>6}")
    write_json_atomic(args.out, {"rows": rows})
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
