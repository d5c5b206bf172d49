"""HF logit checker: our model vs Hugging Face transformers on the same weights and tokens.

Compares an exported HF directory (or any checkpoint transformers loads) with the same weights run by us: logits
on a short prefix (max |Δ|, top-1 agreement) and perplexity at each requested length, where transformers' own
rope code (e.g. its longrope short/long switch) picks the factors. A mismatch means a conversion or rope bug.
Needs `torch` and `transformers` (requirements-test.txt).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np


def _hf_model(hf_dir: Path):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def compare_with_transformers(hf_dir: str | Path, tokens: np.ndarray, lengths: Sequence[int],
                              logit_tokens: int = 256) -> dict:
    """{"logits": {...}, "perplexity": {L: {"ours", "transformers", "relative_diff", "ours_seconds",
    "transformers_seconds"}}}.

    tokens: int (N,) one document with at least max(lengths) tokens; each length L scores its first L tokens.
    """
    import torch

    import longrope_jax
    from longrope_jax.eval.perplexity import PerplexityEvaluator

    hf_dir = Path(hf_dir)
    tokens = np.asarray(tokens, np.int64)
    if len(tokens) < max(lengths):
        from longrope_jax.errors import DataError
        raise DataError(f"the text has {len(tokens)} tokens, fewer than the longest length {max(lengths)}; use a "
                        f"longer document or lower --lengths")
    ours, cfg = longrope_jax.load_model(hf_dir)
    theirs = _hf_model(hf_dir)
    prefix = tokens[None, :logit_tokens]
    with torch.no_grad():
        hf_logits = theirs(torch.tensor(prefix)).logits.float().numpy()
    our_logits = np.asarray(ours(prefix.astype(np.int32)))
    report = {"hf_dir": str(hf_dir), "logits": {
        "tokens": int(prefix.shape[1]), "max_abs_diff": float(np.max(np.abs(our_logits - hf_logits))),
        "max_abs_logit": float(np.max(np.abs(hf_logits))),
        "top1_agreement": float(np.mean(our_logits.argmax(-1) == hf_logits.argmax(-1)))}, "perplexity": {}}
    evaluator = PerplexityEvaluator(ours)
    for length in lengths:
        doc = tokens[None, :length]
        start = time.perf_counter()
        our_ppl = float(evaluator.perplexity(doc.astype(np.int32), [cfg.rope])[0])
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            ids = torch.tensor(doc)
            hf_ppl = float(torch.exp(theirs(ids, labels=ids).loss))
        report["perplexity"][str(length)] = {"ours": our_ppl, "transformers": hf_ppl,
                                             "relative_diff": abs(our_ppl / hf_ppl - 1), "ours_seconds": ours_s,
                                             "transformers_seconds": time.perf_counter() - start}
    return report


def format_report(report: dict) -> str:
    lg = report["logits"]
    lines = [f"logits on {lg['tokens']} tokens: max |ours - transformers| = {lg['max_abs_diff']:.2e} "
             f"(max |logit| {lg['max_abs_logit']:.1f}), top-1 agreement {lg['top1_agreement']:.4f}",
             "| length | ours | transformers | relative diff |", "|---|---|---|---|"]
    lines += [f"| {length} | {r['ours']:.4f} | {r['transformers']:.4f} | {r['relative_diff']:.1e} |"
              for length, r in report["perplexity"].items()]
    return "\n".join(lines)
