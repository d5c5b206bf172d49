"""Fine-tune with rescaled RoPE on long (and optionally mixed short) sequences; rerun the command to resume.

  python -m experiments.finetune --config configs/smollm2_135m.py --workdir runs/ft16k \
      --config.finetune.factors=runs/search16k/rope_scaling.json --config.finetune.mesh=1,4,2,1
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from longrope_jax.cli import run_app, run_main
from longrope_jax.distributed import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/smollm2_135m.py", "ml_collections config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, loss.png; default runs/<name>/finetune")


def main(argv) -> None:
    del argv

    def finetune() -> None:
        from longrope_jax.train.job import run_finetune

        from longrope_jax.job_settings import parse_job

        config = parse_job(_CONFIG.value)  # every section typed and checked before anything runs
        initialize_distributed(config.get("distributed"))  # no-op unless launched on several hosts
        workdir = _WORKDIR.value or f"runs/{config.name}/finetune"
        summary = run_finetune(config, workdir)
        print(json.dumps({k: summary[k] for k in ("steps", "first_loss", "last_loss")}))
        print(f"fine-tuned model in {workdir}/model")

    run_main(finetune)


if __name__ == "__main__":
    run_app(main)
