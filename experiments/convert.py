"""Convert a model between formats.

  python -m experiments.convert --src model.gguf --dst out_dir --format hf
  python -m experiments.convert --src hf_dir --dst out_dir --format orbax [--rope_scaling rope_scaling.json]
  python -m experiments.convert --src hf_dir --dst out.gguf --format gguf [--rope_scaling F] [--outtype q8_0]

--src: a .gguf file, a Hugging Face directory or a longrope-jax Orbax directory. The tokenizer is carried along
when the source has one. --rope_scaling: a HF rope_scaling JSON block (e.g. a search result) to install, with
--max_position_embeddings for the extended context. --format gguf writes one llama.cpp file (llama architecture,
LongRoPE as its rope_factors_long/short tensors); --outtype picks f32 (default, exact), f16 or q8_0 weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longrope_jax.cli import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help=".gguf file, HF directory or Orbax model directory")
    parser.add_argument("--dst", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--format", choices=("hf", "orbax", "gguf"), required=True)
    parser.add_argument("--outtype", choices=("f32", "f16", "q8_0"), default="f32",
                        help="GGUF weight type for 2-D tensors (norms and rope factors stay f32)")
    parser.add_argument("--rope_scaling", help="JSON file with a HF rope_scaling block to install")
    parser.add_argument("--max_position_embeddings", type=int, help="context length to record with --rope_scaling")
    parser.add_argument("--drop_n_hat", action="store_true",
                        help="export factors searched with n_hat > 0 to hf without n_hat (which HF cannot apply)")
    args = parser.parse_args()

    from longrope_jax.errors import CheckpointError, ConfigError

    # Settings are checked before the model code (and JAX) is imported, so a mistyped command fails at once.
    if args.max_position_embeddings is not None and args.max_position_embeddings < 1:
        raise ConfigError(f"--max_position_embeddings={args.max_position_embeddings}: pass the extended context "
                          f"length in tokens, e.g. 32768")
    if args.format == "gguf" and not args.dst.endswith(".gguf"):
        raise ConfigError(f"--dst={args.dst}: a GGUF export is one file; name it with a .gguf suffix")
    if args.format != "gguf" and args.outtype != "f32":
        raise ConfigError(f"--outtype={args.outtype} applies to --format gguf only; drop it for {args.format}")
    from longrope_jax.checkpoint import save_model_dir
    from longrope_jax.convert.hf import save_hf_dir
    from longrope_jax.convert.rope_install import install_rope_scaling
    from longrope_jax.loading import load_params
    from longrope_jax.tokenizer import load_tokenizer

    cfg, params = load_params(args.src)
    if args.rope_scaling:
        cfg = install_rope_scaling(cfg, args.rope_scaling, args.format, args.max_position_embeddings,
                                   args.drop_n_hat)
    try:
        tokenizer = load_tokenizer(args.src)
    except CheckpointError:
        tokenizer = None  # a source without a tokenizer converts fine; the output simply has none either
    if args.format == "hf":
        out = save_hf_dir(cfg, params, Path(args.dst), tokenizer=tokenizer)
    elif args.format == "gguf":
        from longrope_jax.convert.gguf_export import save_gguf
        out = save_gguf(cfg, params, Path(args.dst), tokenizer=tokenizer, outtype=args.outtype,
                        name=Path(args.src).stem)
    else:
        out = save_model_dir(cfg, params, Path(args.dst), tokenizer=tokenizer)
    print(f"wrote {args.format} model ({cfg.architecture}, {cfg.num_layers} layers, rope {cfg.rope.rope_type}) "
          f"to {out}")


if __name__ == "__main__":
    run_main(main)
