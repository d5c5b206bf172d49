"""Long documents as token arrays: the demo corpus splits, tokenisation cache, and document/window selection.

BOS handling is explicit everywhere: `add_bos=True` puts exactly one BOS first and counts it in the length.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

from longrope_jax.cache import cache_dir
from longrope_jax.errors import ConfigError, DataError
from longrope_jax.io import atomic_file

# Named splits of the demo corpus. The search never sees "held_out"; fine-tuning only sees "train".
DEMO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("Sense & Sensibility", "Persuasion", "KJV Bible"),
    "search": ("Pride & Prejudice", "Mansfield Park", "Northanger Abbey"),
    "held_out": ("Emma",),
}


def demo_texts(split: str | None = None) -> dict[str, str]:
    """Texts of the demo corpus (Austen's six novels + the KJV Bible), optionally one named split."""
    from longrope_jax.data.corpus import austen_novels, kjv_bible

    if split is not None and split not in DEMO_SPLITS:  # before any download
        raise ConfigError(f"unknown split {split!r}; the demo corpus has {sorted(DEMO_SPLITS)}")
    texts = dict(austen_novels())
    if split is None or "KJV Bible" in DEMO_SPLITS.get(split, ()):
        texts["KJV Bible"] = kjv_bible()
    if split is None:
        return texts
    return {name: texts[name] for name in DEMO_SPLITS[split]}


def _tokenizer_key(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]


def tokenize_texts(texts: Mapping[str, str], tokenizer, use_cache: bool = True) -> dict[str, np.ndarray]:
    """{name: int32 token ids} (no BOS), cached on disk by tokenizer and text hash (Emma takes ~1 s otherwise)."""
    out = {}
    key = _tokenizer_key(tokenizer)
    for name, text in texts.items():
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = cache_dir("tokens") / f"{key}-{digest}.npy"
        if use_cache and path.exists():
            out[name] = np.load(path)
            continue
        ids = np.asarray(tokenizer.encode(text).ids, np.int32)
        if use_cache:
            with atomic_file(path, binary=True) as handle:
                np.save(handle, ids)
        out[name] = ids
    return out


def _with_bos(ids: np.ndarray, length: int, add_bos: bool, bos_id: int | None) -> np.ndarray:
    if not add_bos:
        return ids[:length]
    if bos_id is None:
        raise ConfigError("add_bos=True but the model has no bos_token_id; set data.add_bos=False")
    return np.concatenate([[bos_id], ids[: length - 1]]).astype(np.int32)


def first_documents(docs: Mapping[str, np.ndarray], length: int, count: int, add_bos: bool = False,
                    bos_id: int | None = None, names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """The first `count` documents (in `names` order) with enough tokens, each truncated to its first `length`.

    Returns (tokens int32 (count, length), chosen names). Raises DataError when fewer documents are long enough,
    naming the longest one and its length.
    """
    names = list(names or docs)
    needed = length - (1 if add_bos else 0)
    chosen = [n for n in names if len(docs[n]) >= needed][:count]
    if len(chosen) < count:
        longest = max(names, key=lambda n: len(docs[n]))
        raise DataError(f"only {len(chosen)} of {len(names)} documents have >= {needed} tokens for length {length} "
                        f"(longest: {longest!r}, {len(docs[longest])} tokens); lower the length or count, or add "
                        f"longer documents")
    return np.stack([_with_bos(docs[n], length, add_bos, bos_id) for n in chosen]), chosen


def random_windows(docs: Mapping[str, np.ndarray], length: int, count: int, seed: int, add_bos: bool = False,
                   bos_id: int | None = None) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """`count` seeded random windows of `length` tokens, documents drawn in proportion to their usable length.

    Returns (tokens int32 (count, length), [(document, start offset)]).
    """
    needed = length - (1 if add_bos else 0)
    usable = {n: len(ids) - needed + 1 for n, ids in docs.items() if len(ids) >= needed}
    if not usable:
        longest = max(docs, key=lambda n: len(docs[n]))
        raise DataError(f"no document has >= {needed} tokens for windows of length {length} (longest: "
                        f"{longest!r}, {len(docs[longest])} tokens); lower the length")
    rng = np.random.default_rng(seed)
    names = sorted(usable)
    weights = np.asarray([usable[n] for n in names], np.float64)
    picks = rng.choice(len(names), size=count, p=weights / weights.sum())
    windows, where = [], []
    for pick in picks:
        name = names[pick]
        start = int(rng.integers(0, usable[name]))
        windows.append(_with_bos(docs[name][start:start + needed], length, add_bos, bos_id))
        where.append((name, start))
    return np.stack(windows), where
