"""Seconds per search generation: one candidate at a time vs batched + racing (+ a warm cache), same code path.

  python -m benchmarks.search --length 4096 --candidates 8 --documents 3 [--out benchmarks/results/search.json]

All variants score the same generation (mutants of PI/NTK/YaRN) with `FitnessEvaluator` on the real SmolLM2 (or
`--model`: another GGUF file or HF directory) and the search split; the elite (the seeds, fully scored once
beforehand) sets the racing threshold as in a real run.
Variants:
  one_at_a_time   batch_size 1, no racing, no cache (the reference implementation's way)
  batched         batch_size = --batch candidates per call of one compiled function, no racing, no cache;
                  model.vmap_width "auto" (on CPU one at a time inside the call, on accelerators all vmapped)
  batched_vmap_all  the same with every candidate of the call vmapped at once (vmap_width 0, the accelerator path)
  batched_raced   batch_size = --batch, vmap_width "auto", racing on, no cache
  resumed_cached  the batched_raced generation scored again with a warm fitness cache (a resumed run)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.forward import model_path
from longrope_jax.data.documents import random_windows
from longrope_jax.data.sources import load_token_documents, text_source
from longrope_jax.rope.factors import method_factors_table
from longrope_jax.io import write_json_atomic
from longrope_jax.loading import load_model
from longrope_jax.rope import attention_scale, default_inv_freq, longrope_spec
from longrope_jax.search import operators
from longrope_jax.search.fitness import FitnessCache, FitnessEvaluator
from longrope_jax.search.space import N_HAT_CHOICES, SearchSpace
from longrope_jax.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--scale", type=float, default=2.0, help="extension ratio the factors are searched for")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--documents", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/search.json")
    parser.add_argument("--model", default=None, help="GGUF file or HF directory (default SmolLM2-135M's GGUF)")
    args = parser.parse_args(argv)

    import ml_collections
    path = model_path(args.model)
    model, cfg = load_model(path)
    tokenizer = load_tokenizer(path)
    docs = load_token_documents(text_source(ml_collections.ConfigDict({"source": "demo"}), "search"), tokenizer)
    documents, _ = random_windows(docs, args.length, args.documents, seed=0)
    base = cfg.rope
    space = SearchSpace("dim_mono", base.half_dim, args.scale, n_hat_choices=N_HAT_CHOICES)
    target = int(args.scale * base.max_position_embeddings)
    seeds = [space.project(v) for v in method_factors_table(base, target).values()]
    generation = operators.next_candidates(jax.random.key(0), seeds, space, {space.key(s) for s in seeds},
                                           num_parents=3, num_mutants=args.candidates, num_crossovers=0)
    mscale = attention_scale(longrope_spec(base, [1.0] * base.half_dim, max_position_embeddings=target))
    inv_freq = default_inv_freq(base.theta, base.rotary_dim)

    def evaluator(batch: int, racing: bool, cache: FitnessCache | None, vmap_width: str = "auto"
                  ) -> FitnessEvaluator:
        return FitnessEvaluator(model, documents, space, mscale, inv_freq, batch, cache, racing,
                                vmap_width=vmap_width)

    elite = evaluator(args.batch, False, None).evaluate(seeds)
    elite_nll = np.asarray(list(elite.values()))
    threshold = float(np.sort(elite_nll.mean(axis=1))[1])  # second best seed: the top-k entry bar, k = 2
    best_per_doc = elite_nll.min(axis=0)

    rows, reference_scores = [], None
    with tempfile.TemporaryDirectory() as tmp:
        cache = FitnessCache(Path(tmp) / "fitness.sqlite", "benchmark")
        variants = [("one_at_a_time", evaluator(1, False, None)), ("batched", evaluator(args.batch, False, None)),
                    ("batched_vmap_all", evaluator(args.batch, False, None, "0")),
                    ("batched_raced", evaluator(args.batch, True, cache)),
                    ("resumed_cached", evaluator(args.batch, True, cache))]
        for name, ev in variants:
            ev._score_items([(generation[0], 0)])  # compile outside the timing
            ev.stats = {k: 0 for k in ev.stats}
            start = time.perf_counter()
            scores = ev.evaluate(generation, threshold, best_per_doc)
            seconds = time.perf_counter() - start
            reference_scores = reference_scores or scores  # the first variant, one_at_a_time
            # Same scores whatever the path (raced-out candidates: on the documents they were scored on).
            gap = max(abs(a - b) for key, nll in scores.items() for a, b in zip(nll, reference_scores[key]))
            rows.append({"variant": name, "vmap_width": min(ev.vmap_width or ev.batch_size, ev.batch_size),
                         "seconds_per_generation": seconds,
                         "seconds_per_candidate": seconds / len(generation), **ev.stats,
                         "max_abs_nll_diff_vs_one_at_a_time": gap})
    reference = rows[0]["seconds_per_generation"]
    for row in rows:
        row["speedup_vs_one_at_a_time"] = reference / max(row["seconds_per_generation"], 1e-9)
    print(f"{path.name}, {len(generation)} candidates × {args.documents} documents of {args.length} tokens")
    print("| variant | vmapped | s/generation | s/candidate | doc evals | saved by racing | cache hits | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['vmap_width']} | {r['seconds_per_generation']:.1f} | "
              f"{r['seconds_per_candidate']:.1f} | "
              f"{r['doc_evals']} | {r['doc_evals_saved']} | {r['cache_hits']} | {r['speedup_vs_one_at_a_time']:.2f}x |")
    write_json_atomic(args.out, {"length": args.length, "documents": args.documents, "batch": args.batch,
                                 "candidates": len(generation), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
