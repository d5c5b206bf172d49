"""Extend a model's context window with LongRoPE, end to end (rerun the same command to resume).

  python -m experiments.extend --config configs/smollm2_135m.py --workdir runs/smollm2

Stages: search_long -> finetune -> search_final -> search_short -> export -> report (see longrope_jax.pipeline).
"""

from __future__ import annotations

import time

from absl import flags
from ml_collections import config_flags

from longrope_jax.cli import run_app, run_main
from longrope_jax.distributed import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/smollm2_135m.py", "ml_collections config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (manifest.json, one folder per stage); "
                                                "default runs/<name>")


def main(argv) -> None:
    del argv

    def extend() -> None:
        from longrope_jax.pipeline import Pipeline

        from longrope_jax.job_settings import parse_job

        config = parse_job(_CONFIG.value)  # every section typed and checked before anything runs
        initialize_distributed(config.get("distributed"))  # no-op unless launched on several hosts
        workdir = _WORKDIR.value or f"runs/{config.name}"
        start = time.time()
        outputs = Pipeline(config, workdir).run()
        if "report" in outputs:
            print(open(outputs["report"]["report"]).read())
        if "export" in outputs:
            print(f"HF model (loadable with transformers): {outputs['export']['hf_dir']}")
        print(f"done in {time.time() - start:.0f} s; everything is in {workdir}")

    run_main(extend)


if __name__ == "__main__":
    run_app(main)
