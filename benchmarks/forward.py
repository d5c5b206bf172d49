"""Forward (loss) throughput and peak memory: longrope-jax vs transformers (PyTorch fp32), SmolLM2-135M, real text.

    python benchmarks/forward.py [--lengths 1024,4096,16384,32768] [--impls ours,torch] [--out PATH]

Both sides score the same thing: the mean next-token NLL of the first L tokens of *Emma* (Austen), tokenised with
the model's own tokenizer, using the same GGUF weights (dequantised to float32 by each side's loader).

* ours: `jax.jit(sequence_nll)` over the real model: blockwise attention + chunked LM head, so memory is linear in
  L. Compilation (lower + compile) is timed separately and excluded from the throughput.
* torch: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=torch.float32)` with its default (sdpa)
  attention, called the normal way, `model(input_ids, labels=input_ids)` under `torch.no_grad()`. This
  materialises the full (L × vocab) float32 logits: `logits_to_keep` only keeps the *last* k positions, so it
  cannot give the loss over every token, and the normal HF loss path is what users run.

Every (implementation, length) runs in its own subprocess, so peak RSS is per run: `peak` is the child's lifetime
high-water mark (ru_maxrss: loading and the forward), `fwd peak` the high-water mark after the model is loaded
(reset through /proc/self/clear_refs) and `base` the RSS just before the forward. Ours' memory growth per 1k
tokens, (fwd peak - base) / (L / 1024), should be flat across lengths if memory is linear in L.

The machine may be shared: timings are the best of `--repeats` forward passes (default 3 up to 4k tokens, else 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from benchmarks.machine import machine

GB = 1024 ** 3
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "forward.json"


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak() -> bool:
    """Reset this process' peak-RSS counter (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def model_path(path: str | Path | None = None) -> Path:
    """The benchmarked model: a GGUF file or a Hugging Face directory; default SmolLM2-135M's GGUF."""
    if path:
        return Path(path)
    from longrope_jax.assets import smollm2_gguf_path
    return smollm2_gguf_path()


def torch_model(path: Path, dtype):
    """transformers' model of `model_path`'s file or directory, in `dtype` (a torch dtype)."""
    import transformers

    if path.is_dir():
        return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)


def _tokens(length: int, path: str | Path | None = None) -> list[int]:
    import longrope_jax
    from longrope_jax.data.corpus import austen_novels

    ids = longrope_jax.load_tokenizer(model_path(path)).encode(austen_novels()["Emma"]).ids
    if len(ids) < length:
        raise SystemExit(f"Emma has only {len(ids)} tokens; asked for {length}")
    return ids[:length]


def _run_ours(length: int, repeats: int, block_q: int | None, block_kv: int | None, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import longrope_jax
    from longrope_jax.assets import smollm2_gguf_path
    from longrope_jax.model.loss import sequence_nll

    overrides = {k: v for k, v in (("block_q", block_q), ("block_kv", block_kv)) if v is not None}
    # dtype is the compute dtype (activations and matmul inputs, float32 accumulation); parameters stay float32.
    model, cfg = longrope_jax.load_model(smollm2_gguf_path(), attention="blockwise", dtype=dtype, **overrides)
    tokens = jnp.asarray([_tokens(length)], jnp.int32)
    graphdef, state = nnx.split(model)
    del model

    @jax.jit
    def loss(state, tokens):
        return sequence_nll(nnx.merge(graphdef, state), tokens).mean()

    start = time.perf_counter()
    compiled = loss.lower(state, tokens).compile()
    compile_s = time.perf_counter() - start
    load_peak = _maxrss()
    base = _rss()
    reset = _reset_peak()
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = float(jax.block_until_ready(compiled(state, tokens)))
        times.append(time.perf_counter() - start)
    fwd_peak = _maxrss() if reset else None
    return {"seconds": min(times), "times": times, "compile_s": compile_s, "loss": value, "base_bytes": base,
            "fwd_peak_bytes": fwd_peak, "peak_bytes": max(load_peak, fwd_peak or 0),
            "block_q": cfg.execution.block_q, "block_kv": cfg.execution.block_kv, "dtype": cfg.dtype, "jax": jax.__version__}


def _run_torch(length: int, repeats: int, dtype: str) -> dict:
    import torch
    import transformers

    model = torch_model(model_path(), getattr(torch, dtype)).eval()
    ids = torch.tensor([_tokens(length)], dtype=torch.long)
    with torch.no_grad():  # warm-up on a short prefix (first-call allocations, kernel selection)
        model(ids[:, :128], labels=ids[:, :128])
    load_peak = _maxrss()
    base = _rss()
    reset = _reset_peak()
    times, value = [], None
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            out = model(ids, labels=ids)
            value = float(out.loss)
            times.append(time.perf_counter() - start)
            del out
    fwd_peak = _maxrss() if reset else None
    return {"seconds": min(times), "times": times, "compile_s": None, "loss": value, "base_bytes": base,
            "fwd_peak_bytes": fwd_peak, "peak_bytes": max(load_peak, fwd_peak or 0),
            "attn_implementation": model.config._attn_implementation, "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(), "dtype": dtype}


def _worker(args: argparse.Namespace) -> None:
    repeats = args.repeats or (3 if args.length <= 4096 else 1)
    if args.worker == "ours":
        result = _run_ours(args.length, repeats, args.block_q, args.block_kv, args.dtype)
    else:
        result = _run_torch(args.length, repeats, args.dtype)
    result.update(impl=args.worker, length=args.length, repeats=repeats, tokens_per_s=args.length / result["seconds"])
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(impl: str, length: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--length", str(length), "--dtype", args.dtype]
    for flag, value in (("--repeats", args.repeats), ("--block-q", args.block_q), ("--block-kv", args.block_kv)):
        if value is not None:
            cmd += [flag, str(value)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{impl} at {length} tokens failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096,16384,32768")
    parser.add_argument("--impls", default="ours,torch", help="comma-separated subset of ours,torch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--repeats", type=int, default=None, help="forward passes per run (best is reported)")
    parser.add_argument("--block-q", type=int, default=None, help="override ModelConfig.block_q for ours")
    parser.add_argument("--block-kv", type=int, default=None, help="override ModelConfig.block_kv for ours")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both sides (ours: activations and matmul inputs, float32 "
                             "accumulation and parameters; torch: the whole model)")
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)

    lengths = [int(x) for x in args.lengths.split(",") if x]
    impls = [x for x in args.impls.split(",") if x]
    runs: dict[str, dict[int, dict]] = {impl: {} for impl in impls}
    for length in lengths:
        for impl in impls:
            result = _spawn(impl, length, args)
            runs[impl][length] = result
            extra = f" compile {result['compile_s']:.1f}s" if result.get("compile_s") is not None else ""
            print(f"  {impl:5s} L={length:6d}: {result['seconds']:8.2f} s  {result['tokens_per_s']:8.0f} tok/s  "
                  f"peak {result['peak_bytes'] / GB:5.2f} GB  loss {result['loss']:.4f}{extra}", flush=True)

    rows = []
    for length in lengths:
        ours, torch_ = runs.get("ours", {}).get(length), runs.get("torch", {}).get(length)
        row = {"length": length, "ours_s": ours and ours["seconds"], "torch_s": torch_ and torch_["seconds"],
               "ours_tokens_per_s": ours and ours["tokens_per_s"],
               "torch_tokens_per_s": torch_ and torch_["tokens_per_s"],
               "ours_compile_s": ours and ours["compile_s"],
               "ours_peak_gb": ours and ours["peak_bytes"] / GB, "torch_peak_gb": torch_ and torch_["peak_bytes"] / GB,
               "ours_fwd_peak_gb": ours and ours["fwd_peak_bytes"] and ours["fwd_peak_bytes"] / GB,
               "torch_fwd_peak_gb": torch_ and torch_["fwd_peak_bytes"] and torch_["fwd_peak_bytes"] / GB}
        row["speed_ratio_torch_over_ours"] = ours and torch_ and torch_["seconds"] / ours["seconds"]
        row["memory_ratio_torch_over_ours"] = ours and torch_ and torch_["peak_bytes"] / ours["peak_bytes"]
        if ours and ours["fwd_peak_bytes"]:
            row["ours_gb_per_1k_tokens"] = (ours["fwd_peak_bytes"] - ours["base_bytes"]) / GB / (length / 1024)
        if torch_ and torch_["fwd_peak_bytes"]:
            row["torch_gb_per_1k_tokens"] = (torch_["fwd_peak_bytes"] - torch_["base_bytes"]) / GB / (length / 1024)
        if ours and torch_:
            row["loss_abs_diff"] = abs(ours["loss"] - torch_["loss"])
        rows.append(row)
    # Marginal memory per 1k tokens between consecutive lengths: constant for memory linear in L (the per-length
    # ratio above also carries the fixed part: LM-head chunk, XLA temporaries, so it falls with L).
    for impl in ("ours", "torch"):
        prev = None
        for row in rows:
            run = runs.get(impl, {}).get(row["length"])
            if run and run["fwd_peak_bytes"] and prev:
                row[f"{impl}_marginal_gb_per_1k_tokens"] = ((run["fwd_peak_bytes"] - prev[1]) / GB
                                                            / ((row["length"] - prev[0]) / 1024))
            if run and run["fwd_peak_bytes"]:
                prev = (row["length"], run["fwd_peak_bytes"])

    header = (f"{'length':>7} {'ours s':>8} {'torch s':>8} {'speed t/o':>9} {'ours GB':>8} {'torch GB':>8} "
              f"{'mem t/o':>7} {'ours fwd GB':>11} {'torch fwd GB':>12} {'ours GB/1k':>10} {'marg GB/1k':>10} "
              f"{'compile s':>9}")
    print(header)
    for r in rows:
        print(f"{r['length']:>7} {_fmt(r['ours_s'], '8.2f')} {_fmt(r['torch_s'], '8.2f')} "
              f"{_fmt(r['speed_ratio_torch_over_ours'], '9.2f')} {_fmt(r['ours_peak_gb'], '8.2f')} "
              f"{_fmt(r['torch_peak_gb'], '8.2f')} {_fmt(r['memory_ratio_torch_over_ours'], '7.2f')} "
              f"{_fmt(r['ours_fwd_peak_gb'], '11.2f')} {_fmt(r['torch_fwd_peak_gb'], '12.2f')} "
              f"{_fmt(r.get('ours_gb_per_1k_tokens'), '10.3f')} "
              f"{_fmt(r.get('ours_marginal_gb_per_1k_tokens'), '10.3f')} "
              f"{_fmt(r['ours_compile_s'], '9.1f')}")

    report = {"model": "SmolLM2-135M (GGUF, dequantised to float32)", "text": "Emma, first L tokens",
              "machine": machine(),
              "torch_call": "model(input_ids, labels=input_ids) under torch.no_grad(), sdpa attention, full logits",
              "ours_call": "jax.jit(sequence_nll(model, tokens).mean()), blockwise attention, chunked LM head",
              "rows": rows, "runs": {impl: {str(k): v for k, v in r.items()} for impl, r in runs.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
