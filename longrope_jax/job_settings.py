"""A whole config, parsed once at the CLI boundary into typed sections (`parse_job`).

Every `experiments.*` CLI calls `parse_job(config)` on its ml_collections config before doing anything, so a bad
or unknown field in any section is one `error:` line naming it and a legal value, before a model is read or a
workdir written. The jobs (`run_search`, `run_finetune`, `run_evaluation`, the pipeline, the bench) read only the
sections they use from the `JobSettings` they are handed; library functions below them take single sections.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from longrope_jax.data.settings import DataSettings
from longrope_jax.distributed import DistributedSettings
from longrope_jax.errors import ConfigError
from longrope_jax.eval.settings import EvalSettings
from longrope_jax.loading import ModelSection
from longrope_jax.search.settings import BenchSettings, SearchSettings
from longrope_jax.settings import Section
from longrope_jax.train.settings import FinetuneSettings, FixtureSettings, PretrainSettings


@dataclasses.dataclass(frozen=True)
class PipelineSettings(Section):
    """The progressive pipeline (`experiments.extend`): λ1 at first_target and fine-tuning there, λ2 at
    final_target, short factors at short_length (0: the native length) with bound short_upper and budget
    short_evo_scale; the report's retrieval checks (0 / () turn them off)."""

    SECTION: ClassVar[str] = "pipeline"
    # The lengths and report settings are checked against the model's native length when it is loaded
    # (`pipeline._check_targets`).
    RANGES: ClassVar = {"short_upper": (float, 1.0, None, "1.25"), "short_evo_scale": (float, 1e-9, None, "0.125")}

    stages: Any = "search_long,finetune,search_final,search_short,export,report"
    first_target: int = 16384
    final_target: int = 32768
    short_length: int = 0
    short_upper: float = 1.25
    short_evo_scale: float = 0.125
    report_passkey_trials: int = 2
    report_ruler_tasks: Any = ("niah_single_1",)
    report_ruler_samples: int = 2


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection, "data": DataSettings, "eval": EvalSettings, "search": SearchSettings,
    "finetune": FinetuneSettings, "pipeline": PipelineSettings, "distributed": DistributedSettings,
    "bench": BenchSettings, "fixture": FixtureSettings, "pretrain": PretrainSettings,
}
OPTIONAL_SECTIONS = ("bench", "fixture", "pretrain")  # only the configs of those jobs have them


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """Every section of a config, typed. `in`, `[]` and `get` read it the way they read the ConfigDict."""

    name: str = "run"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    search: SearchSettings = dataclasses.field(default_factory=SearchSettings)
    finetune: FinetuneSettings = dataclasses.field(default_factory=FinetuneSettings)
    pipeline: PipelineSettings = dataclasses.field(default_factory=PipelineSettings)
    distributed: DistributedSettings = dataclasses.field(default_factory=DistributedSettings)
    bench: BenchSettings | None = None
    fixture: FixtureSettings | None = None
    pretrain: PretrainSettings | None = None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and getattr(self, name, None) is not None

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def replace(self, **sections: Any) -> "JobSettings":
        """A copy with some sections replaced (typed sections, or mappings parsed here)."""
        return dataclasses.replace(self, **{k: v if k == "name" else SECTIONS[k].parse(v)
                                            for k, v in sections.items()})


def parse_job(config: Any) -> JobSettings:
    """The typed settings of an ml_collections config (or a mapping of sections); an unknown section or field,
    or a value out of range, raises ConfigError naming it."""
    if isinstance(config, JobSettings):
        return config
    names = list(config.keys())
    unknown = sorted(set(names) - set(SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(f"config.{unknown[0]} is not a config section; remove it or use one of "
                          f"{', '.join(SECTIONS)}")
    sections = {name: cls.parse(config[name] if name in names else None) for name, cls in SECTIONS.items()
                if name in names or name not in OPTIONAL_SECTIONS}
    return JobSettings(name=str(config["name"]) if "name" in names else "run", **sections)
