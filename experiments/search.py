"""Evolutionary search of LongRoPE rescale factors (resumable: rerun the same command after a kill).

  python -m experiments.search --config configs/smollm2_135m.py --workdir runs/search16k \
      --config.search.target_length=16384 --config.search.evo_scale=0.25
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from longrope_jax.cli import run_app, run_main
from longrope_jax.distributed import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/smollm2_135m.py", "ml_collections config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "state and outputs; default runs/<name>/search")


def main(argv) -> None:
    del argv

    def search() -> None:
        from longrope_jax.search.job import run_search

        from longrope_jax.job_settings import parse_job

        config = parse_job(_CONFIG.value)  # every section typed and checked before anything runs
        initialize_distributed(config.get("distributed"))  # no-op unless launched on several hosts
        workdir = _WORKDIR.value or f"runs/{config.name}/search"
        summary = run_search(config, workdir)
        print(json.dumps({k: summary[k] for k in ("target_length", "best_perplexity", "budget", "stats")}, indent=1))
        if "verdict" in summary:
            print("held-out perplexity:", json.dumps(summary["verdict"]["perplexity"]))
        print(f"factors and plots in {workdir}")

    run_main(search)


if __name__ == "__main__":
    run_app(main)
