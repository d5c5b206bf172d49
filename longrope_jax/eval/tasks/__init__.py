"""Evaluation tasks: one interface that perplexity, passkey, the needle grid and RULER-lite implement.

`experiments.evaluate` runs every registered task its settings enable, in `order`: first every task's `check`
(so a bad setting fails before hours of compute), then `run`, then `plot`. A task keeps its own part of
results.json, saves it after every unit of work (`TaskRun.save`) so a killed run resumes where it stopped, and
names the sections that hold per-method results (recomputed for "longrope" when the factor file changes).
A new task is one module in this package with a `@register_eval_task` class; the runner needs no edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar

from longrope_jax.data.settings import DataSettings
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval.settings import EvalSettings
from longrope_jax.io import write_json_atomic
from longrope_jax.rope import RopeSpec

RESULTS = "results.json"


@dataclasses.dataclass
class TaskRun:
    """What a task is handed: the model, the settings it may read and the results it adds to."""

    eval_cfg: EvalSettings
    data_cfg: DataSettings
    model: Any
    cfg: Any
    tokenizer: Any
    workdir: Path
    results: dict

    @property
    def add_bos(self) -> bool:
        return bool(self.data_cfg.add_bos)

    def spec(self, method: str, length: int) -> RopeSpec:
        """The rope spec `method` runs the model with at `length` tokens (the factor file for "longrope")."""
        return rope_methods.method_spec(self.cfg.rope, method, length, self.eval_cfg.factors or None)

    def save(self) -> None:
        write_json_atomic(self.workdir / RESULTS, self.results)


class EvalTask:
    """One evaluation task. Subclasses set `name`, `order`, `result_sections` and implement the four methods."""

    name: ClassVar[str]
    order: ClassVar[int] = 100
    result_sections: ClassVar[tuple[str, ...]] = ()

    def enabled(self, eval_cfg: EvalSettings) -> bool:
        raise NotImplementedError

    def check(self, run: TaskRun) -> None:
        """Raises ConfigError for settings this task cannot run, before any task runs."""

    def run(self, run: TaskRun) -> None:
        raise NotImplementedError

    def plot(self, run: TaskRun) -> None:
        """Writes this task's PNGs into run.workdir."""


_TASKS: dict[str, EvalTask] = {}


def register_eval_task(cls: type[EvalTask]) -> type[EvalTask]:
    if cls.name in _TASKS:
        raise ValueError(f"evaluation task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls()
    return cls


def eval_tasks() -> list[EvalTask]:
    """Every registered task, in run order (the modules of this package register theirs when imported)."""
    if not _TASKS:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
    return sorted(_TASKS.values(), key=lambda task: task.order)
