"""Training-step throughput and peak memory: longrope-jax vs transformers (PyTorch fp32), SmolLM2-135M, real text.

    python -m benchmarks.train [--lengths 4096,16384] [--impls ours,torch] [--remat save_attention]
                               [--model PATH] [--out PATH]

One optimizer step = loss over the first L tokens of *Emma* + backward + AdamW update, fp32 weights on both sides.
* ours: `jax.jit` of value_and_grad(`sequence_nll`) + optax AdamW, parameters donated, layer remat policy
  `--remat` (ModelConfig.remat: full recomputes each layer in the backward pass, save_attention (the default, what
  configs/smollm2_135m.py fine-tunes with) the same but keeps the attention output, none stores everything).
* torch: `model(input_ids, labels=input_ids).loss.backward()` + `torch.optim.AdamW.step()`, with HF gradient
  checkpointing on when `--remat` is not "none" (the same per-layer recompute), sdpa attention.
One subprocess per (implementation, length); a first step (compile / warm-up) is excluded; the best of
`--repeats` timed steps is reported with peak RSS (ru_maxrss over the whole run, loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.forward import GB, _maxrss, _tokens, model_path, torch_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train.json"


def _run_ours(length: int, repeats: int, remat: str, path: str | None) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import longrope_jax
    from longrope_jax.model.loss import sequence_nll

    model, cfg = longrope_jax.load_model(model_path(path), attention="blockwise", remat=remat)
    graphdef, state = nnx.split(model)
    del model
    optimizer = optax.adamw(1e-5, weight_decay=0.0)  # the same AdamW as the torch side
    opt_state = optimizer.init(state)
    tokens = jnp.asarray([_tokens(length, path)], jnp.int32)

    def step(state, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda s: sequence_nll(nnx.merge(graphdef, s), tokens).mean())(state)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    start = time.perf_counter()
    state, opt_state, loss = jax.block_until_ready(step(state, opt_state, tokens))  # compile + first step
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, opt_state, loss = jax.block_until_ready(step(state, opt_state, tokens))
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "times": times, "first_step_s": first_s, "loss": float(loss),
            "peak_bytes": _maxrss(), "remat": remat, "jax": jax.__version__}


def _run_torch(length: int, repeats: int, remat: str, path: str | None) -> dict:
    import torch

    model = torch_model(model_path(path), torch.float32)
    model.train()
    if remat != "none":
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    ids = torch.tensor([_tokens(length, path)], dtype=torch.long)

    def step() -> float:
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    start = time.perf_counter()
    step()
    first_s = time.perf_counter() - start
    times, loss = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "times": times, "first_step_s": first_s, "loss": loss,
            "peak_bytes": _maxrss(), "remat": "gradient_checkpointing" if remat != "none" else "none",
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _spawn(impl: str, length: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train", "--worker", impl, "--length", str(length),
           "--repeats", str(args.repeats), "--remat", args.remat]
    cmd += ["--model", args.model] if args.model else []
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + (os.pathsep + os.environ["PYTHONPATH"]
                                              if os.environ.get("PYTHONPATH") else ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{impl} at {length} tokens failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--impls", default="ours,torch")
    parser.add_argument("--remat", default="save_attention", choices=("none", "full", "save_attention", "dots_saveable",
                                                                "nothing_saveable"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None, help="GGUF file or HF directory (default SmolLM2-135M's GGUF)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run = _run_ours if args.worker == "ours" else _run_torch
        result = run(args.length, args.repeats, args.remat, args.model)
        print("RESULT " + json.dumps(result), flush=True)
        return []
    from longrope_jax.io import write_json_atomic

    rows = []
    for length in [int(x) for x in args.lengths.split(",") if x]:
        runs = {impl: _spawn(impl, length, args) for impl in args.impls.split(",") if impl}
        row = {"length": length, **{f"{impl}_{k}": v for impl, r in runs.items() for k, v in r.items()}}
        for impl, r in runs.items():
            row[f"{impl}_tokens_per_s"] = length / r["seconds"]
            row[f"{impl}_peak_gb"] = r["peak_bytes"] / GB
        if len(runs) == 2:
            row["speed_ratio_torch_over_ours"] = runs["torch"]["seconds"] / runs["ours"]["seconds"]
            row["memory_ratio_torch_over_ours"] = runs["torch"]["peak_bytes"] / runs["ours"]["peak_bytes"]
        rows.append(row)
        print(f"L={length:6d} " + "  ".join(f"{impl}: {r['seconds']:.2f} s/step {length / r['seconds']:.0f} tok/s "
                                              f"peak {r['peak_bytes'] / GB:.2f} GB loss {r['loss']:.4f}"
                                              for impl, r in runs.items())
              + (f"  speed t/o {row['speed_ratio_torch_over_ours']:.2f} mem t/o "
                 f"{row['memory_ratio_torch_over_ours']:.2f}" if len(runs) == 2 else ""), flush=True)
    write_json_atomic(args.out, {"model": f"{args.model or 'SmolLM2-135M'} fp32", "remat": args.remat, "rows": rows,
                                 "load_avg_at_end": os.getloadavg()})
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
