"""RULER-lite and passkey results of several `experiments.evaluate` runs, side by side.

  python -m experiments.ruler_report --run base=runs/ruler/base --run "YaRN 16k=runs/ruler/yarn16k" \
      --out experiments/results/ruler_smollm2

Writes <out>/results.json (every run's RULER-lite table, the samples behind each cell, passkey accuracies),
<out>/ruler.png (task × length, one panel per model and method) and prints the markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longrope_jax.cli import run_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="LABEL=WORKDIR of an evaluation run; repeat")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and ruler.png")
    args = parser.parse_args(argv)

    def report() -> None:
        from longrope_jax.errors import ConfigError
        from longrope_jax.eval.ruler_report import collect_runs, passkey_markdown, plot_runs, ruler_markdown
        from longrope_jax.io import write_json_atomic

        runs = {}
        for item in args.run:
            label, sep, workdir = item.partition("=")
            if not sep or not label or not workdir:
                raise ConfigError(f"--run {item!r}: use LABEL=WORKDIR, e.g. --run base=runs/ruler/base")
            runs[label] = workdir
        if not runs:
            raise ConfigError("no --run given; pass one LABEL=WORKDIR per evaluation run")
        collected = collect_runs(runs)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "results.json", collected)
        plot_runs(collected, args.out / "ruler.png")
        print(ruler_markdown(collected))
        if passkey_markdown(collected):
            print()
            print(passkey_markdown(collected))

    run_main(report)


if __name__ == "__main__":
    main()
