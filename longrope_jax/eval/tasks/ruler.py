"""RULER-lite (eval.ruler_tasks × eval.ruler_lengths × eval.ruler_methods): results["ruler"] and ruler.png,
every decoded sample saved in ruler_records."""

from __future__ import annotations

from longrope_jax.eval.tasks import EvalTask, TaskRun, register_eval_task
from longrope_jax.eval.tasks.passkey import check_retrieval_methods
from longrope_jax.progress import tqdm
from longrope_jax.settings import as_list


@register_eval_task
class RulerTask(EvalTask):
    name = "ruler"
    order = 30
    result_sections = ("ruler", "ruler_records")

    def enabled(self, eval_cfg) -> bool:
        return bool(eval_cfg.get("ruler_tasks"))

    def check(self, run: TaskRun) -> None:
        from longrope_jax.eval.ruler_eval import check_ruler_settings, ruler_methods

        check_ruler_settings(run.eval_cfg)
        check_retrieval_methods(run, ruler_methods(run.eval_cfg), as_list(run.eval_cfg.ruler_lengths),
                                "ruler_methods")

    def run(self, run: TaskRun) -> None:
        from longrope_jax.eval.ruler_eval import decoded_samples, ruler_methods, run_ruler

        eval_cfg = run.eval_cfg
        cells = len(ruler_methods(eval_cfg)) * len(as_list(eval_cfg.ruler_tasks)) * len(as_list(eval_cfg.ruler_lengths))
        samples = int(eval_cfg.ruler_samples)
        done = decoded_samples(eval_cfg, run.results)  # a resumed run's bar starts at what is reused
        with tqdm(total=cells * samples, initial=done, desc="ruler", unit="sample") as bar:
            run_ruler(eval_cfg, run.add_bos, run.results, run.save, run.model, run.tokenizer, run.spec, bar.update)

    def plot(self, run: TaskRun) -> None:
        from longrope_jax.eval.ruler_eval import plot_ruler

        if run.results.get("ruler"):
            plot_ruler(run.results["ruler"], run.workdir / "ruler.png")
