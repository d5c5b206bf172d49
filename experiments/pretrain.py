"""Pre-train the search bench's fixture model from scratch on the train split; rerun the command to resume.

  python -m experiments.pretrain --config configs/mini_pretrain.py [--workdir runs/mini_pretrain]
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from longrope_jax.cli import run_app, run_main

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mini_pretrain.py", "ml_collections config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and validation logs; default runs/<name>")


def main(argv) -> None:
    del argv

    def pretrain() -> None:
        from longrope_jax.data.documents import demo_texts
        from longrope_jax.data.sources import text_source
        from longrope_jax.errors import ConfigError
        from longrope_jax.loading import model_overrides
        from longrope_jax.train.pretrain import fixture_model_config, run_pretrain

        from longrope_jax.job_settings import parse_job

        config = parse_job(_CONFIG.value)  # every section typed and checked before anything runs
        if config.fixture is None or config.pretrain is None:
            raise ConfigError("experiments.pretrain needs a config with fixture and pretrain sections; use "
                              "--config configs/mini_pretrain.py")

        def texts(split: str) -> dict[str, str]:
            if config.data.source == "demo":
                return demo_texts(split)
            return {r["name"]: r["text"] for r in text_source(config.data, split)}

        cfg = fixture_model_config(config.fixture, **model_overrides(config.model))
        run_pretrain(cfg, config.pretrain, texts(config.data.train_split), texts(config.data.held_out_split),
                     _WORKDIR.value or f"runs/{config.name}", config.pretrain.export)

    run_main(pretrain)


if __name__ == "__main__":
    run_app(main)
