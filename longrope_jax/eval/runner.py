"""`experiments.evaluate`: perplexity vs length for several rope methods (+ passkey, needle grid, RULER-lite),
resumable, JSON + PNG.

Results go to `<workdir>/results.json`, rewritten atomically after every (length, document, candidate batch), so
a killed run resumes where it stopped. Plots: perplexity_vs_length.png, factors.png, passkey.png.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from longrope_jax.progress import tqdm

from longrope_jax.data.documents import first_documents
from longrope_jax.data.sources import load_token_documents, text_source
from longrope_jax.errors import ConfigError
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval import plots
from longrope_jax.eval.perplexity import PerplexityEvaluator, spec_ropes
from longrope_jax.model.context import context_parallel
from longrope_jax.sharding import make_mesh
from longrope_jax.io import read_json, write_json_atomic
from longrope_jax.loading import load_from_config
from longrope_jax.settings import as_list, model_record
from longrope_jax.rope import equivalent_factors

RESULTS = "results.json"


def _methods(eval_cfg: Any) -> list[str]:
    names = as_list(eval_cfg.methods)
    for name in names:
        if name not in rope_methods.METHODS:
            raise ConfigError(f"unknown method {name!r} in eval.methods; use {', '.join(rope_methods.METHODS)}")
    if eval_cfg.factors and "longrope" not in names:
        names.append("longrope")
    return names


def _fingerprint(config: Any) -> dict:
    """What must not change between a run and its resumption (JSON-normalised: tuples become lists)."""
    return json.loads(json.dumps({"model": config.model.path, "dtype": config.model.dtype,
                                  "data": config.data.to_dict(), "split": config.eval.split,
                                  "documents": config.eval.documents, "factors": config.eval.factors}))


def _load_results(workdir: Path, config: Any) -> dict:
    results = read_json(workdir / RESULTS, default=None)
    if results is None:
        return {"fingerprint": _fingerprint(config), "perplexity": {}, "nll": {}, "passkey": {},
                "factor_values": _factor_values_digest(config.eval.factors)}
    # Results written before the fingerprint held the compute dtype name it in their model record (else float32).
    stored = {"dtype": results.get("model", {}).get("dtype", "float32"), **results.get("fingerprint", {})}
    if stored != _fingerprint(config):
        raise ConfigError(f"{workdir / RESULTS} was written with a different model/data/factors config; use a new "
                          f"--workdir or delete the old results")
    results["fingerprint"] = _fingerprint(config)
    digest = _factor_values_digest(config.eval.factors)
    if results.get("factor_values", digest) != digest:
        # Same path, new contents: the file was overwritten (a newer search). Results of the other methods stand.
        print(f"note: {config.eval.factors} changed since {workdir / RESULTS} was written; its longrope results "
              f"are recomputed", file=sys.stderr)
        for section in ("nll", "passkey", "passkey_records", "needle", "ruler", "ruler_records"):
            for by_method in ([results.get(section, {})] if section != "nll" else
                              list(results.get("nll", {}).values())):
                by_method.pop("longrope", None)
    results["factor_values"] = digest
    return results


def _factor_values_digest(path: str) -> str | None:
    """A digest of what a factor file says (factors, n̂, attention factor, ...), not of where it lies."""
    if not path:
        return None
    data = rope_methods.read_factors(path)
    fields = {k: data.get(k) for k in ("long_factor", "short_factor", "n_hat", "attention_factor", "critical_dim",
                                       "original_max_position_embeddings", "rope_type")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def run_evaluation(config: Any, workdir: str | Path) -> dict:
    """Evaluates config.eval.methods at config.eval.lengths on the held-out documents; returns the results."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    eval_cfg = config.eval
    results = _load_results(workdir, config)
    names = _methods(eval_cfg)
    model, cfg, tokenizer = load_from_config(config.model)
    original = cfg.rope.original_length
    docs = load_token_documents(text_source(config.data, eval_cfg.split), tokenizer)
    # eval.context_parallel > 1 splits each document over that many devices (ring attention).
    context = context_parallel(make_mesh(context=int(eval_cfg.get("context_parallel", 1))),
                               config.model.get("context_attention", "ring"))
    evaluator = PerplexityEvaluator(model, context, config.model.get("vmap_width", "auto"))
    lengths = [int(length) for length in as_list(eval_cfg.lengths)]
    # Check every input up front, so a bad length or factor file fails before hours of compute.
    batches = {length: first_documents(docs, length, eval_cfg.documents, config.data.add_bos, cfg.bos_token_id)
               for length in lengths}
    specs = {(m, length): rope_methods.method_spec(cfg.rope, m, length, eval_cfg.factors or None)
             for m in names for length in lengths}
    _check_retrieval_settings(eval_cfg, cfg)
    results["documents"] = {str(length): batches[length][1] for length in lengths}
    results["model"] = model_record(config)
    per_batch = max(1, int(eval_cfg.candidates_per_batch))
    todo = [(length, d, names[i:i + per_batch]) for length in lengths for d in range(eval_cfg.documents)
            for i in range(0, len(names), per_batch)]
    with tqdm(total=sum(len(group) for *_, group in todo), desc="perplexity", unit="cand·doc") as bar:
        for length, d, group in todo:
            key = str(length)
            done = results["nll"].setdefault(key, {})
            pending = [m for m in group if len(done.get(m, [])) <= d]
            bar.update(len(group) - len(pending))
            if not pending:
                continue
            tokens = batches[length][0][d:d + 1]
            nll = evaluator.mean_nll(tokens, spec_ropes([specs[(m, length)] for m in pending], length))[:, 0]
            for m, value in zip(pending, nll):
                done.setdefault(m, []).append(float(value))
            _summarise(results, names)
            write_json_atomic(workdir / RESULTS, results)
            bar.update(len(pending))
            bar.set_postfix({m: f"{np.exp(v):.1f}" for m, v in zip(pending, nll)})
    _summarise(results, names)
    if eval_cfg.passkey_lengths:
        _run_passkey(config, results, workdir, model, cfg, tokenizer)
    if eval_cfg.get("needle_lengths"):
        _run_needle_grid(config, results, workdir, model, cfg, tokenizer)
    if eval_cfg.get("ruler_tasks"):
        from longrope_jax.eval.ruler_eval import plot_ruler, ruler_methods, run_ruler
        cells = (len(ruler_methods(eval_cfg)) *
                 len(as_list(eval_cfg.ruler_tasks)) * len(as_list(eval_cfg.ruler_lengths)))
        with tqdm(total=cells * int(eval_cfg.ruler_samples), desc="ruler", unit="sample") as bar:
            run_ruler(config, results, lambda: write_json_atomic(workdir / RESULTS, results), model, cfg, tokenizer,
                      bar.update)
        plot_ruler(results["ruler"], workdir / "ruler.png")
    write_json_atomic(workdir / RESULTS, results)
    _plot(results, workdir, cfg, eval_cfg, original, lengths)
    return results


def _summarise(results: dict, names: list[str]) -> None:
    table = {}
    for key, by_method in results["nll"].items():
        for m in names:
            if by_method.get(m):
                table.setdefault(m, {})[key] = float(np.exp(np.mean(by_method[m])))
    results["perplexity"] = table


def _run_passkey(config, results, workdir, model, cfg, tokenizer) -> None:
    from longrope_jax.eval.passkey import passkey_accuracy

    eval_cfg = config.eval
    todo = [(m, int(length)) for m in as_list(eval_cfg.passkey_methods)
            for length in as_list(eval_cfg.passkey_lengths)]
    # Every finished trial is saved (passkey_records), so a killed run resumes mid-cell: a 32k trial is minutes.
    records = results.setdefault("passkey_records", {})
    bar = tqdm(total=len(todo) * eval_cfg.passkey_trials, desc="passkey", unit="trial")
    for m, length in todo:
        if str(length) in results["passkey"].get(m, {}):
            bar.update(eval_cfg.passkey_trials)
            continue
        saved = records.setdefault(m, {}).setdefault(str(length), [])
        bar.update(len(saved))
        bar.set_postfix(method=m, length=length)

        def save(record, saved=saved):
            saved.append(record)
            write_json_atomic(workdir / RESULTS, results)

        spec = rope_methods.method_spec(cfg.rope, m, length, eval_cfg.factors or None)
        outcome = passkey_accuracy(model, tokenizer, spec, length, trials=eval_cfg.passkey_trials,
                                   seed=eval_cfg.seed, add_bos=bool(config.data.add_bos), done=list(saved),
                                   on_trial=save, progress=bar.update)
        results["passkey"].setdefault(m, {})[str(length)] = outcome["accuracy"]
        write_json_atomic(workdir / RESULTS, results)
    bar.close()


def _check_retrieval_settings(eval_cfg: Any, cfg) -> None:
    """Passkey / needle-grid settings fail here, before the perplexity runs, not hours later."""
    lengths = [int(n) for n in [*as_list(eval_cfg.passkey_lengths), *as_list(eval_cfg.get("needle_lengths", ()))]]
    for m in as_list(eval_cfg.passkey_methods) if lengths else []:
        if m not in rope_methods.METHODS:
            raise ConfigError(f"unknown method {m!r} in eval.passkey_methods; use {', '.join(rope_methods.METHODS)}")
        for length in lengths:
            rope_methods.method_spec(cfg.rope, m, length, eval_cfg.factors or None)
    from longrope_jax.eval.ruler_eval import check_ruler_settings, ruler_methods
    check_ruler_settings(eval_cfg)
    for m in ruler_methods(eval_cfg) if eval_cfg.get("ruler_tasks") else []:
        if m not in rope_methods.METHODS:
            raise ConfigError(f"unknown method {m!r} in eval.ruler_methods; use {', '.join(rope_methods.METHODS)}")
        for length in as_list(eval_cfg.ruler_lengths):
            rope_methods.method_spec(cfg.rope, m, int(length), eval_cfg.factors or None)
    if eval_cfg.get("needle_lengths") and not all(0.0 <= float(d) <= 1.0 for d in as_list(eval_cfg.needle_depths)):
        raise ConfigError(f"eval.needle_depths={eval_cfg.needle_depths}: depths are fractions of the prompt, 0 to 1")


def _run_needle_grid(config, results, workdir, model, cfg, tokenizer) -> None:
    """Passkey accuracy per (length, depth) for each passkey method: results["needle"] + needle_<method>.png.
    Every finished cell is saved, so a killed run resumes at the next cell."""
    from longrope_jax.eval.passkey import needle_grid

    eval_cfg = config.eval
    lengths = [int(n) for n in as_list(eval_cfg.needle_lengths)]
    depths = [float(d) for d in as_list(eval_cfg.needle_depths)]
    methods = as_list(eval_cfg.passkey_methods)
    store = results.setdefault("needle", {})
    bar = tqdm(total=len(methods) * len(lengths) * len(depths), desc="needle grid", unit="cell")
    for m in methods:
        entry = store.setdefault(m, {"lengths": lengths, "depths": depths, "trials": int(eval_cfg.needle_trials),
                                     "accuracy": [[None] * len(depths) for _ in lengths]})
        if (entry["lengths"], entry["depths"], entry["trials"]) != (lengths, depths, int(eval_cfg.needle_trials)):
            raise ConfigError(f"{workdir / RESULTS} holds a needle grid for {m} with other lengths/depths/trials; "
                              f"use a new --workdir or delete its 'needle' entry")
        done = np.array([[np.nan if v is None else v for v in row] for row in entry["accuracy"]], np.float64)
        bar.update(int(np.sum(~np.isnan(done))))
        bar.set_postfix(method=m)

        def save(grid, entry=entry):
            entry["accuracy"] = [[None if np.isnan(v) else float(v) for v in row] for row in grid]
            write_json_atomic(workdir / RESULTS, results)

        grid = needle_grid(model, tokenizer, lambda n, m=m: rope_methods.method_spec(cfg.rope, m, n,
                                                                                    eval_cfg.factors or None),
                           lengths, depths, int(eval_cfg.needle_trials), int(eval_cfg.seed),
                           add_bos=bool(config.data.add_bos), progress=bar.update, done=done, on_cell=save)
        plots.plot_needle_heatmap(grid, lengths, depths, workdir / f"needle_{m}.png",
                                  title=f"Passkey retrieval accuracy by depth ({m})")
    bar.close()


def _plot(results, workdir, cfg, eval_cfg, original, lengths) -> None:
    table = {m: {int(k): v for k, v in by_len.items()} for m, by_len in results["perplexity"].items()}
    if table:
        plots.plot_perplexity_vs_length(table, workdir / "perplexity_vs_length.png", original,
                                        title=f"Perplexity vs length "
                                              f"({', '.join(results['documents'][str(lengths[0])])})")
    target = max(lengths)
    factors = {m: equivalent_factors(rope_methods.method_spec(cfg.rope, m, target), target)
               for m in ("pi", "ntk", "yarn")}
    if eval_cfg.factors:
        factors["longrope (file)"] = np.asarray(rope_methods.read_factors(eval_cfg.factors)["long_factor"])
    plots.plot_factors(factors, workdir / "factors.png", title=f"Rescale factors at {target} tokens")
    if results["passkey"]:
        plots.plot_passkey({m: {int(k): v for k, v in by_len.items()} for m, by_len in results["passkey"].items()},
                           workdir / "passkey.png")


def format_table(results: dict) -> str:
    """Markdown table: methods × lengths of perplexity."""
    table = results["perplexity"]
    lengths = sorted({int(k) for by_len in table.values() for k in by_len})
    lines = ["| method | " + " | ".join(str(l) for l in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for m, by_len in table.items():
        lines.append(f"| {m} | " + " | ".join(f"{by_len[str(l)]:.2f}" if str(l) in by_len else "-"
                                             for l in lengths) + " |")
    return "\n".join(lines)
