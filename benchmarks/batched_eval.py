"""Perplexity of C rope candidates: C separate evaluations vs one batched call, per candidate, same code path.

  python -m benchmarks.batched_eval --length 4096 --candidates 8 [--out benchmarks/results/batched_eval.json]

SmolLM2-135M (or `--model`: another GGUF file or HF directory) on the first L tokens of *Emma*; C LongRoPE
candidates (random monotone factors, alternating n̂, slightly different attention scales) scored through
`PerplexityEvaluator.mean_nll`:
  separate            C calls with one candidate each (what a caller without batching does)
  batched (auto)      one call with all C; model.vmap_width "auto" (CPU: one candidate at a time inside the call,
                      GPU/TPU: all vmapped)
  batched (vmap all)  one call with all C vmapped at once (vmap_width 0)
Each variant is compiled before it is timed; the best of --repeats is reported, and every variant's NLLs are
compared with the separate ones (`max_abs_nll_diff_vs_separate`, the correctness side of the claim).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks.forward import _tokens, model_path
from longrope_jax.eval.perplexity import PerplexityEvaluator, stack_ropes
from longrope_jax.io import write_json_atomic
from longrope_jax.loading import load_model
from longrope_jax.rope import longrope_inputs, rope_inputs
from benchmarks.machine import machine


def _timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    fn()  # compile (and warm) outside the timing
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/batched_eval.json")
    parser.add_argument("--model", default=None, help="GGUF file or HF directory (default SmolLM2-135M's GGUF)")
    args = parser.parse_args(argv)

    path = model_path(args.model)
    model, cfg = load_model(path)
    documents = np.asarray(_tokens(args.length, path), np.int32)[None]
    rng = np.random.default_rng(0)
    original = rope_inputs(cfg.rope, args.length).original_inv_freq
    ropes = [longrope_inputs(original, np.sort(rng.uniform(1, 4, cfg.rope.half_dim)), 1.0 + 0.02 * i,
                             n_hat=4 * (i % 2)) for i in range(args.candidates)]
    stacked = stack_ropes(ropes)

    auto, vmap_all = PerplexityEvaluator(model), PerplexityEvaluator(model, vmap_width="0")
    variants = [
        ("separate", lambda: np.concatenate([auto.mean_nll(documents, stack_ropes([r]))[:, 0] for r in ropes])),
        ("batched (auto)", lambda: auto.mean_nll(documents, stacked)[:, 0]),
        ("batched (vmap all)", lambda: vmap_all.mean_nll(documents, stacked)[:, 0]),
    ]
    widths = {"separate": 1, "batched (auto)": auto.vmap_width or args.candidates,
              "batched (vmap all)": args.candidates}
    rows, separate = [], None
    for name, fn in variants:
        seconds, nll = _timed(fn, args.repeats)
        separate = nll if separate is None else separate
        rows.append({"variant": name, "vmap_width": widths[name], "seconds": seconds,
                     "seconds_per_candidate": seconds / args.candidates,
                     "max_abs_nll_diff_vs_separate": float(np.max(np.abs(nll - separate)))})
    for row in rows:
        row["speed_vs_separate"] = rows[0]["seconds"] / max(row["seconds"], 1e-9)

    print(f"{path.name}, {args.candidates} candidates, one document of {args.length} tokens "
          f"({jax.default_backend()})")
    print("| variant | vmapped | s total | s/candidate | speed vs separate | max Δ NLL |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['vmap_width']} | {r['seconds']:.2f} | {r['seconds_per_candidate']:.2f} | "
              f"{r['speed_vs_separate']:.2f}x | {r['max_abs_nll_diff_vs_separate']:.1e} |")
    write_json_atomic(args.out, {"length": args.length, "candidates": args.candidates, "repeats": args.repeats,
                                 "backend": jax.default_backend(),
                                 "machine": machine(),
                                 "rows": rows})
    return rows


if __name__ == "__main__":
    main()
