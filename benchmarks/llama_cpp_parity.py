"""Is the GGUF export what llama.cpp serves? Logits and perplexity from a real llama.cpp beside ours.

  python -m benchmarks.llama_cpp_parity [--models mini,smollm2[,smollm2_32k]] [--out ...llama_cpp_parity.json]

Needs llama-cpp-python (which vendors llama.cpp), built from its PyPI source with cmake and a Debian compiler:

  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \\
    pip install --no-binary llama-cpp-python llama-cpp-python

Per model, a committed search result is exported with `experiments.convert --format gguf --outtype f32`, and
the same file is run by llama.cpp and by longrope-jax (`load_model` on the .gguf):
  - logits on a short prompt, with llama.cpp started at the original context (short factors) and at the target
    context (long factors); ours are computed with the factors llama.cpp picked, since llama.cpp chooses them by
    the context it is started with, not by the length of the sequence;
  - perplexity of the first `target` tokens of held-out Emma with the long factors, beside the perplexity the
    search's verdict reported for the same factors and tokens (`scored_by_the_search`), where it has one.
KV caches are float32 on both sides. Writes a JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmarks.machine import machine

ROOT = Path(__file__).resolve().parents[1]
# model name -> (source, committed factors, target length)
MODELS = {
    "mini": ("tests/fixtures/mini_llama", "experiments/results/mini_8x/rope_scaling.json", 2048),
    "smollm2": ("smollm2", "experiments/results/smollm2_16k/rope_scaling.json", 16384),
    "smollm2_32k": ("smollm2", "experiments/results/smollm2_32k/rope_scaling.json", 32768),
}
PROMPT_TOKENS = 64


def _export(source: str, factors: str, target: int, out: Path) -> Path:
    from longrope_jax.loading import resolve_model_path

    command = [sys.executable, "-m", "experiments.convert", "--src", str(resolve_model_path(source)), "--dst",
               str(out), "--format", "gguf", "--rope_scaling", str(ROOT / factors), "--max_position_embeddings",
               str(target)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr.strip())
    return out


def _emma_tokens(tokenizer, length: int) -> np.ndarray:
    """The first `length` tokens of Emma, without BOS, as the search verdicts take them (data.add_bos=False)."""
    from longrope_jax.data.documents import demo_texts

    return np.asarray(tokenizer.encode(demo_texts("held_out")["Emma"]).ids[:length], dtype=np.int32)


def _llama_cpp_logits(path: Path, tokens: np.ndarray, n_ctx: int) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, logits_all=True,
                          n_threads=2, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                          verbose=False)
    llm.eval(tokens.tolist())
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return logits


def _our_logits(model, cfg, tokens: np.ndarray, factors: str) -> np.ndarray:
    """Our logits from the model loaded from the same GGUF, with `factors` ("long"/"short") used whatever the
    sequence length."""
    import jax.numpy as jnp

    from longrope_jax.rope import rope_inputs

    chosen = cfg.rope.long_factor if factors == "long" else cfg.rope.short_factor
    spec = cfg.rope.replace(long_factor=chosen, short_factor=chosen)
    hidden, _ = model.hidden(jnp.asarray(tokens[None]), None, rope_inputs(spec, len(tokens)))
    return np.asarray(hidden @ model.output_kernel())[0]


def _mean_nll(logits: np.ndarray, tokens: np.ndarray, chunk: int = 1024) -> float:
    """Mean NLL of tokens[1:] under logits[:-1], a chunk of rows at a time (16k x 49k logits are 3 GB)."""
    total = 0.0
    for start in range(0, len(tokens) - 1, chunk):
        rows = logits[start: min(start + chunk, len(tokens) - 1)].astype(np.float64)
        rows -= rows.max(axis=-1, keepdims=True)
        targets = tokens[start + 1: start + 1 + len(rows)]
        total += float(np.sum(np.log(np.exp(rows).sum(axis=-1)) - rows[np.arange(len(rows)), targets]))
    return total / (len(tokens) - 1)


def _our_mean_nll(model, tokens: np.ndarray) -> float:
    import jax.numpy as jnp

    from longrope_jax.model.loss import sequence_nll

    return float(np.mean(np.asarray(sequence_nll(model, jnp.asarray(tokens[None])))))


def _scored(factors: str, target: int) -> float | None:
    """The held-out perplexity the search's verdict reported for these factors on the same tokens (the first
    `target` tokens of Emma), when its summary has one."""
    summary = ROOT / Path(factors).parent / "summary.json"
    verdict = json.loads(summary.read_text()).get("verdict", {}) if summary.exists() else {}
    if verdict.get("length") == target and verdict.get("held_out_documents") == ["Emma"]:
        return verdict["perplexity"]["searched"]
    return None


def run_model(name: str, workdir: Path) -> list[dict]:
    from longrope_jax.loading import load_model
    from longrope_jax.tokenizer import load_tokenizer

    source, factors, target = MODELS[name]
    path = _export(source, factors, target, workdir / f"{name}.gguf")
    model, cfg = load_model(path, attention="blockwise")
    tokens = _emma_tokens(load_tokenizer(path), target)
    rows = []
    for n_ctx, chosen in ((cfg.rope.original_length, "short"), (target, "long")):
        prompt = tokens[:PROMPT_TOKENS]
        theirs = _llama_cpp_logits(path, prompt, n_ctx)
        ours = _our_logits(model, cfg, prompt, chosen)
        # The control: our logits with the other factor set, which the comparison must be able to tell apart.
        other = _our_logits(model, cfg, prompt, "short" if chosen == "long" else "long")
        rows.append({"model": name, "check": "logits", "n_ctx": n_ctx, "factors": chosen, "tokens": len(prompt),
                     "max_abs_diff_over_max_abs_logit": float(np.max(np.abs(theirs - ours)) / np.max(np.abs(ours))),
                     "with_the_other_factors": float(np.max(np.abs(theirs - other)) / np.max(np.abs(ours)))})
    start = time.perf_counter()
    theirs = _mean_nll(_llama_cpp_logits(path, tokens, target), tokens)
    llama_cpp_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = _our_mean_nll(model, tokens)
    rows.append({"model": name, "check": "perplexity", "n_ctx": target, "factors": "long", "tokens": len(tokens),
                 "ours": float(np.exp(ours)), "llama_cpp": float(np.exp(theirs)),
                 "scored_by_the_search": _scored(factors, target),
                 "relative_diff": float(abs(np.exp(theirs - ours) - 1.0)),
                 "llama_cpp_seconds": round(llama_cpp_seconds, 1),
                 "ours_seconds": round(time.perf_counter() - start, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mini,smollm2")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llama_cpp_parity.json"))
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("error: llama-cpp-python is not installed; build it as this script's docstring says") \
            from None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += run_model(name, Path(tmp))
            print(json.dumps(rows[-1]))
    result = {"llama_cpp_python": llama_cpp.__version__, "machine": machine(), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | check | n_ctx | factors | tokens | result |\n|---|---|---|---|---|---|")
    for row in rows:
        figure = (f"max |Δlogit| / max |logit| = {row['max_abs_diff_over_max_abs_logit']:.2e} "
                  f"(with the other factors: {row['with_the_other_factors']:.2e})"
                  if row["check"] == "logits" else
                  f"ours {row['ours']:.4f} vs llama.cpp {row['llama_cpp']:.4f} (Δ {100 * row['relative_diff']:.3f}%)")
        print(f"| {row['model']} | {row['check']} | {row['n_ctx']} | {row['factors']} | {row['tokens']} | {figure} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
