"""Perplexity vs length for every rope method: results["nll"] (per document) and results["perplexity"]."""

from __future__ import annotations

import numpy as np

from longrope_jax.data.documents import first_documents
from longrope_jax.data.sources import load_token_documents, text_source
from longrope_jax.errors import ConfigError
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval import plots
from longrope_jax.eval.perplexity import PerplexityEvaluator, spec_ropes
from longrope_jax.eval.tasks import EvalTask, TaskRun, register_eval_task
from longrope_jax.model.context import context_parallel
from longrope_jax.progress import tqdm
from longrope_jax.rope import equivalent_factors
from longrope_jax.settings import as_list
from longrope_jax.sharding import make_mesh


def perplexity_methods(eval_cfg) -> list[str]:
    """eval.methods, plus "longrope" when a factor file is given."""
    names = as_list(eval_cfg.methods)
    for name in names:
        if name not in rope_methods.METHODS:
            raise ConfigError(f"unknown method {name!r} in eval.methods; use {', '.join(rope_methods.METHODS)}")
    if eval_cfg.factors and "longrope" not in names:
        names.append("longrope")
    return names


def summarise(results: dict, names: list[str]) -> None:
    """results["perplexity"][method][length] = exp(mean NLL over the documents done so far)."""
    table = {}
    for key, by_method in results["nll"].items():
        for m in names:
            if by_method.get(m):
                table.setdefault(m, {})[key] = float(np.exp(np.mean(by_method[m])))
    results["perplexity"] = table


@register_eval_task
class PerplexityTask(EvalTask):
    name = "perplexity"
    order = 0
    result_sections = ("nll",)

    def enabled(self, eval_cfg) -> bool:
        return True

    def _batches(self, run: TaskRun) -> dict[int, tuple[np.ndarray, list[str]]]:
        docs = load_token_documents(text_source(run.data_cfg, run.eval_cfg.split), run.tokenizer)
        return {length: first_documents(docs, length, run.eval_cfg.documents, run.add_bos, run.cfg.bos_token_id)
                for length in (int(n) for n in as_list(run.eval_cfg.lengths))}

    def check(self, run: TaskRun) -> None:
        self._batches(run)
        for m in perplexity_methods(run.eval_cfg):
            for length in as_list(run.eval_cfg.lengths):
                run.spec(m, int(length))

    def run(self, run: TaskRun) -> None:
        eval_cfg, results = run.eval_cfg, run.results
        names = perplexity_methods(eval_cfg)
        batches = self._batches(run)
        # eval.context_parallel > 1 splits each document over that many devices (ring attention).
        context = context_parallel(make_mesh(context=int(eval_cfg.get("context_parallel", 1))),
                                   run.model.cfg.execution.context_attention)
        evaluator = PerplexityEvaluator(run.model, context)
        results["documents"] = {str(length): batch[1] for length, batch in batches.items()}
        per_batch = max(1, int(eval_cfg.candidates_per_batch))
        todo = [(length, d, names[i:i + per_batch]) for length in batches for d in range(eval_cfg.documents)
                for i in range(0, len(names), per_batch)]
        with tqdm(total=sum(len(group) for *_, group in todo), desc="perplexity", unit="cand·doc") as bar:
            for length, d, group in todo:
                done = results["nll"].setdefault(str(length), {})
                pending = [m for m in group if len(done.get(m, [])) <= d]
                bar.update(len(group) - len(pending))
                if not pending:
                    continue
                tokens = batches[length][0][d:d + 1]
                nll = evaluator.mean_nll(tokens, spec_ropes([run.spec(m, length) for m in pending], length))[:, 0]
                for m, value in zip(pending, nll):
                    done.setdefault(m, []).append(float(value))
                summarise(results, names)
                run.save()
                bar.update(len(pending))
                bar.set_postfix({m: f"{np.exp(v):.1f}" for m, v in zip(pending, nll)})
        summarise(results, names)

    def plot(self, run: TaskRun) -> None:
        results, eval_cfg = run.results, run.eval_cfg
        lengths = [int(n) for n in as_list(eval_cfg.lengths)]
        if not lengths:  # eval.lengths= : a retrieval-only run, nothing of this task to draw
            return
        table = {m: {int(k): v for k, v in by_len.items()} for m, by_len in results["perplexity"].items()}
        if table:
            plots.plot_perplexity_vs_length(table, run.workdir / "perplexity_vs_length.png",
                                            run.cfg.rope.original_length,
                                            title=f"Perplexity vs length "
                                                  f"({', '.join(results['documents'][str(lengths[0])])})")
        target = max(lengths)
        factors = {m: equivalent_factors(rope_methods.method_spec(run.cfg.rope, m, target), target)
                   for m in ("pi", "ntk", "yarn")}
        if eval_cfg.factors:
            factors["longrope (file)"] = np.asarray(rope_methods.read_factors(eval_cfg.factors)["long_factor"])
        plots.plot_factors(factors, run.workdir / "factors.png", title=f"Rescale factors at {target} tokens")
