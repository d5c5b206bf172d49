"""The needle grid: passkey accuracy per (length, depth) for each passkey method, results["needle"] and
needle_<method>.png. Every finished cell is saved, so a killed run resumes at the next cell."""

from __future__ import annotations

import numpy as np

from longrope_jax.errors import ConfigError
from longrope_jax.eval import plots
from longrope_jax.eval.tasks import RESULTS, EvalTask, TaskRun, register_eval_task
from longrope_jax.eval.tasks.passkey import check_retrieval_methods
from longrope_jax.progress import tqdm
from longrope_jax.settings import as_list


@register_eval_task
class NeedleGridTask(EvalTask):
    name = "needle"
    order = 20
    result_sections = ("needle",)

    def enabled(self, eval_cfg) -> bool:
        return bool(eval_cfg.get("needle_lengths"))

    def check(self, run: TaskRun) -> None:
        eval_cfg = run.eval_cfg
        check_retrieval_methods(run, as_list(eval_cfg.passkey_methods), as_list(eval_cfg.needle_lengths),
                                "passkey_methods")
        if not all(0.0 <= float(d) <= 1.0 for d in as_list(eval_cfg.needle_depths)):
            raise ConfigError(f"eval.needle_depths={eval_cfg.needle_depths}: depths are fractions of the prompt, "
                              f"0 to 1")

    def run(self, run: TaskRun) -> None:
        from longrope_jax.eval.passkey import needle_grid

        eval_cfg = run.eval_cfg
        lengths = [int(n) for n in as_list(eval_cfg.needle_lengths)]
        depths = [float(d) for d in as_list(eval_cfg.needle_depths)]
        methods = as_list(eval_cfg.passkey_methods)
        store = run.results.setdefault("needle", {})
        bar = tqdm(total=len(methods) * len(lengths) * len(depths), desc="needle grid", unit="cell")
        for m in methods:
            entry = store.setdefault(m, {"lengths": lengths, "depths": depths, "trials": int(eval_cfg.needle_trials),
                                         "accuracy": [[None] * len(depths) for _ in lengths]})
            if (entry["lengths"], entry["depths"], entry["trials"]) != (lengths, depths, int(eval_cfg.needle_trials)):
                raise ConfigError(f"{run.workdir / RESULTS} holds a needle grid for {m} with other lengths/depths/"
                                  f"trials; use a new --workdir or delete its 'needle' entry")
            done = np.array([[np.nan if v is None else v for v in row] for row in entry["accuracy"]], np.float64)
            bar.update(int(np.sum(~np.isnan(done))))
            bar.set_postfix(method=m)

            def save(grid, entry=entry):
                entry["accuracy"] = [[None if np.isnan(v) else float(v) for v in row] for row in grid]
                run.save()

            needle_grid(run.model, run.tokenizer, lambda n, m=m: run.spec(m, n), lengths, depths,
                        int(eval_cfg.needle_trials), int(eval_cfg.seed), add_bos=run.add_bos, progress=bar.update,
                        done=done, on_cell=save)
        bar.close()

    def plot(self, run: TaskRun) -> None:
        for m, entry in run.results.get("needle", {}).items():
            grid = np.array([[np.nan if v is None else v for v in row] for row in entry["accuracy"]], np.float64)
            plots.plot_needle_heatmap(grid, entry["lengths"], entry["depths"], run.workdir / f"needle_{m}.png",
                                      title=f"Passkey retrieval accuracy by depth ({m})")
