"""The tokenizer of a llama-architecture GGUF file, rebuilt as a `tokenizers.Tokenizer` from its metadata."""

from __future__ import annotations

from os import PathLike
from typing import Any

from longrope_jax.convert.gguf import _meta, _open, _require_llama
from longrope_jax.errors import CheckpointError

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token_type values

# llama.cpp's `tokenizer.ggml.pre` names the regex its BPE splits text with (llama-vocab.cpp).
# Ones that split each digit apart, then apply GPT-2's regex (StarCoder-derived vocabularies, SmolLM):
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_GPT2 = {"default", "gpt2", "gpt-2", "mpt", "olmo", "jais"}
_LLAMA3 = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3", "pixtral"}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in _GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre in _LLAMA3:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    known = sorted(_DIGITS_THEN_GPT2 | _GPT2 | _LLAMA3)
    raise CheckpointError(f"GGUF tokenizer.ggml.pre={pre!r} is not supported (known: {known}).")


def gguf_tokenizer(path: str | PathLike[str]) -> Any:
    """A `tokenizers.Tokenizer` rebuilt from a GGUF's byte-level BPE metadata.

    Vocabulary from `tokenizer.ggml.tokens` (id = position), merges from `tokenizer.ggml.merges`,
    pre-tokenizer from `tokenizer.ggml.pre`, control tokens (token_type 3) as special tokens and
    user-defined ones (4) as added tokens. There is no post-processor: `encode` never adds BOS/EOS
    (callers prepend `gguf_config(path)["bos_token_id"]` themselves). `decode` inverts byte-level.

    Raises:
        CheckpointError: missing/corrupt file, non-llama architecture, a tokenizer model other than
            "gpt2" (byte-level BPE), an unknown pre-tokenizer name, or missing vocabulary/merges.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    reader = _open(path)
    _require_llama(reader, path)
    kind = _meta(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: tokenizer.ggml.model={kind!r}; only 'gpt2' (byte-level BPE) is supported.")
    tokens: list[str] = _meta(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _meta(reader, "tokenizer.ggml.merges")]
    types: list[int] = _meta(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    pre = _meta(reader, "tokenizer.ggml.pre", "default")

    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens has duplicate entries; the vocabulary is corrupt.")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    # Matched whole in raw text, before BPE, as llama.cpp does; ids already exist so the vocab size is unchanged.
    kinds = list(zip(tokens, types))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in kinds if k == _CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False) for t, k in kinds if k == _USER_DEFINED])
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise CheckpointError(f"{path}: special tokens do not line up with the vocabulary ({len(tokens)} tokens).")
    return tok
