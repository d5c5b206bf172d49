"""Tokenizers: read from GGUF metadata, HF directories (tokenizer.json) or our Orbax directories; write HF files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from longrope_jax.errors import CheckpointError


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a GGUF file, a HF directory, or a longrope-jax Orbax directory (all hold tokenizer.json).

    Encoding never adds BOS by itself: callers prepend `bos_token_id` explicitly where they want it.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from longrope_jax.convert.gguf_tokenizer import gguf_tokenizer
        return gguf_tokenizer(path)
    candidate = path / "tokenizer.json"
    if path.is_dir() and candidate.exists():
        try:
            tokenizer = Tokenizer.from_file(str(candidate))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"cannot read {candidate}: {err}") from err
        tokenizer.post_processor = None  # no implicit BOS/EOS: BOS handling is explicit in longrope-jax
        return tokenizer
    raise CheckpointError(f"no tokenizer at {path}: expected a .gguf file or a directory with tokenizer.json")


def save_tokenizer_files(tokenizer: Tokenizer, directory: Path, cfg: Any) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json, loadable by transformers' AutoTokenizer."""
    directory = Path(directory)
    tokenizer.save(str(directory / "tokenizer.json"))

    def token(token_id):
        return None if token_id is None else tokenizer.id_to_token(int(token_id))

    special = {"bos_token": token(cfg.bos_token_id), "eos_token": token(cfg.eos_token_id)}
    if cfg.pad_token_id is not None:
        special["pad_token"] = token(cfg.pad_token_id)
    special = {k: v for k, v in special.items() if v is not None}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": cfg.rope.max_position_embeddings, **special,
    }, indent=2))


def byte_tokenizer() -> Tokenizer:
    """A 256-token byte-level tokenizer (one token per UTF-8 byte) for tiny test models."""
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
