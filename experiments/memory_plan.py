"""Per-chip memory plan for long-context training / evaluation, printed as a table.

  python -m experiments.memory_plan --preset llama2_7b --seq-len 128k --mesh 1,8,1,8 --mode train
  python -m experiments.memory_plan --config-json path/to/config.json --seq-len 32768 --mesh 1,1,1,1 --mode eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longrope_jax.cli import run_main
from longrope_jax.errors import ConfigError


def parse_length(text: str) -> int:
    """'131072', '128k' or '2m' (k = 1024, m = 1024²) -> tokens."""
    text = text.strip().lower()
    scale = {"k": 1024, "m": 1024 ** 2}.get(text[-1:], 1)
    try:
        return int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise ConfigError(f"--seq-len {text!r}: use an integer, optionally with a k or m suffix") from None


def parse_mesh(text: str) -> tuple[int, int, int, int]:
    """'data,fsdp,tensor,context' -> four positive ints."""
    from longrope_jax.sharding import mesh_sizes

    return mesh_sizes(text, "--mesh")


def build_parser() -> argparse.ArgumentParser:
    from longrope_jax.memory_planner import DTYPES, MODES, PRESETS, REMAT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-json", type=Path, help="a Hugging Face config.json")
    source.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--seq-len", required=True, help="tokens per sequence, e.g. 131072 or 128k")
    parser.add_argument("--mesh", default="1,1,1,1", help="data,fsdp,tensor,context sizes (default 1,1,1,1)")
    parser.add_argument("--mode", choices=MODES, default="train")
    parser.add_argument("--remat", choices=REMAT, default="full")
    parser.add_argument("--param-dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--compute-dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--batch-per-replica", type=int, default=1, help="sequences per data×fsdp replica")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def plan() -> None:
        from longrope_jax.memory_planner import PRESETS, format_plan, plan_memory

        config = json.loads(args.config_json.read_text()) if args.config_json else PRESETS[args.preset]
        result = plan_memory(config, parse_length(args.seq_len), parse_mesh(args.mesh), mode=args.mode,
                             remat=args.remat, param_dtype=args.param_dtype, compute_dtype=args.compute_dtype,
                             batch_per_replica=args.batch_per_replica)
        print(json.dumps(result, indent=1, default=str) if args.json else format_plan(result))

    run_main(plan)


if __name__ == "__main__":
    main()
