"""Compare rope methods on held-out long documents: perplexity vs length (+ passkey), resumable.

  python -m experiments.evaluate --config configs/smollm2_135m.py --workdir runs/eval \
      --config.eval.lengths=8192,16384,32768 --config.eval.factors=experiments/results/smollm2_16k/rope_scaling.json
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from longrope_jax.cli import run_app, run_main
from longrope_jax.distributed import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/smollm2_135m.py", "ml_collections config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (results.json, PNG plots); default runs/<name>/eval")


def main(argv) -> None:
    del argv

    def evaluate() -> None:
        from longrope_jax.eval.runner import format_table, run_evaluation

        from longrope_jax.job_settings import parse_job

        config = parse_job(_CONFIG.value)  # every section typed and checked before anything runs
        initialize_distributed(config.get("distributed"))  # no-op unless launched on several hosts
        workdir = _WORKDIR.value or f"runs/{config.name}/eval"
        results = run_evaluation(config, workdir)
        print(format_table(results))
        if results.get("passkey"):
            print("passkey accuracy:", results["passkey"])
        print(f"results and plots in {workdir}")

    run_main(evaluate)


if __name__ == "__main__":
    run_app(main)
