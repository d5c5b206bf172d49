"""The search bench: a LongRoPE search at `--ratio` × the fixture's native length, judged on held-out windows.

  python -m experiments.search_bench --config configs/mini.py:bench --ratio 8
  python -m experiments.search_bench --config configs/mini.py:bench --ratio 32 --name mini_32x_longrope2 \
      --config.search.space=longrope2

Search state and its fitness cache live in runs/bench/<name> (rerun to resume); results (rope_scaling.json,
summary.json, fitness.png, factors.png) go to experiments/results/<name>.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from longrope_jax.cli import run_app, run_main

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mini.py:bench", "ml_collections config file")
_RATIO = flags.DEFINE_integer("ratio", 8, "target length = ratio × the model's native length")
_NAME = flags.DEFINE_string("name", None, "result name; default mini_<ratio>x")
_WORKDIR = flags.DEFINE_string("workdir", None, "search state and cache; default runs/bench/<name>")
_RESULTS = flags.DEFINE_string("results", "experiments/results", "folder that receives <name>/")
_REPORT = flags.DEFINE_bool("table", False, "instead of a search: print the markdown table of every "
                            "<results>/mini_* result")
_TABLE = flags.DEFINE_list("closed_form_ratios", None, "instead of a search: the classic methods' held-out "
                           "perplexity at these ratios (e.g. 1,4,8,16,32,64), written to <results>/<name>")


def main(argv) -> None:
    del argv

    def bench() -> None:
        from pathlib import Path

        from longrope_jax.errors import ConfigError
        from longrope_jax.job_settings import parse_job
        from longrope_jax.search.bench import bench_table, closed_form_table, run_bench

        if _REPORT.value:
            print(bench_table(_RESULTS.value))
            return

        if _TABLE.value:
            closed_form_table(parse_job(_CONFIG.value), [int(r) for r in _TABLE.value],
                              Path(_RESULTS.value) / (_NAME.value or "mini_closed_forms"))
            return

        if _RATIO.value < 1:
            raise ConfigError(f"--ratio={_RATIO.value}: the target must be at least the native length (ratio >= 1)")
        name = _NAME.value or f"mini_{_RATIO.value}x"
        run_bench(parse_job(_CONFIG.value), _RATIO.value, Path(_WORKDIR.value or f"runs/bench/{name}"),
                  Path(_RESULTS.value) / name)

    run_main(bench)


if __name__ == "__main__":
    run_app(main)
