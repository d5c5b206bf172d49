"""HF logit checker: our model vs transformers on an exported (or any) HF directory, on real text.

  python -m experiments.check_hf --hf-dir runs/smollm2_135m/export/hf --lengths 8192,16384

Prints max |Δlogit|, top-1 agreement and perplexity at each length for both, and writes check_hf.json beside
the model (or to --out). Needs torch + transformers (requirements-test.txt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longrope_jax.cli import run_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", type=Path, required=True)
    parser.add_argument("--lengths", default="4096", help="comma-separated token counts")
    parser.add_argument("--split", default="held_out", help="demo corpus split; its longest document is used")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path (default <hf-dir>/../check_hf.json)")
    args = parser.parse_args(argv)

    def check() -> None:
        from longrope_jax.data.sources import demo_source, load_token_documents
        from longrope_jax.errors import ConfigError
        from longrope_jax.eval.hf_check import compare_with_transformers, format_report
        from longrope_jax.io import write_json_atomic
        from longrope_jax.tokenizer import load_tokenizer

        if not (args.hf_dir / "config.json").exists():
            raise ConfigError(f"{args.hf_dir} is not a Hugging Face model directory (no config.json); pass the "
                              f"export's hf folder, e.g. runs/<name>/export/hf")
        lengths = [int(v) for v in args.lengths.split(",") if v]
        docs = load_token_documents(demo_source(args.split), load_tokenizer(args.hf_dir))
        name = max(docs, key=lambda n: len(docs[n]))
        report = compare_with_transformers(args.hf_dir, docs[name], lengths)
        report["document"] = name
        out = args.out or args.hf_dir.parent / "check_hf.json"
        write_json_atomic(out, report)
        print(f"document: {name}\n" + format_report(report) + f"\nwritten to {out}")

    run_main(check)


if __name__ == "__main__":
    main(sys.argv[1:])
