"""Passkey retrieval accuracy per (method, length): results["passkey"], every trial saved in passkey_records."""

from __future__ import annotations

from longrope_jax.errors import ConfigError
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval import plots
from longrope_jax.eval.tasks import EvalTask, TaskRun, register_eval_task
from longrope_jax.progress import tqdm
from longrope_jax.settings import as_list


def check_retrieval_methods(run: TaskRun, methods: list[str], lengths: list[int], field: str) -> None:
    """Every method is known and has a spec at every length (a bad factor file fails here, not hours later)."""
    for m in methods:
        if m not in rope_methods.METHODS:
            raise ConfigError(f"unknown method {m!r} in eval.{field}; use {', '.join(rope_methods.METHODS)}")
        for length in lengths:
            run.spec(m, int(length))


@register_eval_task
class PasskeyTask(EvalTask):
    name = "passkey"
    order = 10
    result_sections = ("passkey", "passkey_records")

    def enabled(self, eval_cfg) -> bool:
        return bool(eval_cfg.passkey_lengths)

    def check(self, run: TaskRun) -> None:
        check_retrieval_methods(run, as_list(run.eval_cfg.passkey_methods), as_list(run.eval_cfg.passkey_lengths),
                                "passkey_methods")

    def run(self, run: TaskRun) -> None:
        from longrope_jax.eval.passkey import passkey_accuracy

        eval_cfg, results = run.eval_cfg, run.results
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
                run.save()

            outcome = passkey_accuracy(run.model, run.tokenizer, run.spec(m, length), length,
                                       trials=eval_cfg.passkey_trials, seed=eval_cfg.seed, add_bos=run.add_bos,
                                       done=list(saved), on_trial=save, progress=bar.update)
            results["passkey"].setdefault(m, {})[str(length)] = outcome["accuracy"]
            run.save()
        bar.close()

    def plot(self, run: TaskRun) -> None:
        if run.results["passkey"]:
            plots.plot_passkey({m: {int(k): v for k, v in by_len.items()}
                                for m, by_len in run.results["passkey"].items()}, run.workdir / "passkey.png")
