"""Passkey retrieval (LongRoPE / landmark-attention prompt) and the needle-in-a-haystack accuracy grid.

The prompt is the reference one: a task description, repeated filler ("The grass is green. ..."), the pass-key
sentence at a chosen depth, and "What is the pass key? The pass key is". It is sized in tokens, not characters:
filler sentences are counted with the model's own tokenizer, so a prompt is within a few tokens of its target.
Filler is laid down sentence by sentence (the five reference sentences, cycled) so the needle can sit at any
depth with a granularity of one short sentence rather than one 25-token filler block.

Decoding is greedy through the KV-cache `generate`, with the rope fixed from prompt + max_new_tokens tokens; the
answer is the first integer in the decoded continuation.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from tokenizers import Tokenizer

from longrope_jax.errors import ConfigError, DataError
from longrope_jax.model.generate import generate
from longrope_jax.model.transformer import Transformer
from longrope_jax.rope import RopeSpec, rope_inputs

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)  # inclusive, as in the reference

_INTEGER = re.compile(r"\d+")


def _count(tokenizer: Tokenizer, piece: str, first: bool = False) -> int:
    # Pieces are joined with single spaces, so every piece but the first is counted with its leading space
    # (byte-level BPE folds the space into the next word's token).
    return len(tokenizer.encode(piece if first else " " + piece).ids)


def _layout(tokenizer: Tokenizer, target_length: int, key: int, depth: float, bos: int) -> tuple[int, int]:
    """(filler sentences in all, filler sentences before the needle) for a prompt of ~target_length tokens."""
    head = bos + _count(tokenizer, TASK, first=True)
    fixed = head + _count(tokenizer, NEEDLE.format(key=key)) + _count(tokenizer, QUESTION)
    budget = target_length - fixed
    if budget < 0:
        raise DataError(f"target_length {target_length} is shorter than the passkey prompt without filler "
                        f"({fixed} tokens); use a longer length")
    costs = [_count(tokenizer, s) for s in FILLER]
    cumulative = [0]  # cumulative[n]: tokens of the first n filler sentences
    while cumulative[-1] <= budget:
        cumulative.append(cumulative[-1] + costs[(len(cumulative) - 1) % len(costs)])
    # The last entry overshoots the budget; keep it only if it lands closer to the target than the one before.
    if cumulative[-1] - budget >= budget - cumulative[-2]:
        cumulative.pop()
    total = len(cumulative) - 1
    # The needle's start lands as close as the sentence grid allows to depth · length (clamped to the haystack).
    desired = depth * target_length
    before = min(range(total + 1), key=lambda k: abs(head + cumulative[k] - desired))
    return total, before


def _prompt_text(key: int, total: int, before: int) -> str:
    filler = [FILLER[i % len(FILLER)] for i in range(total)]
    return " ".join([TASK, *filler[:before], NEEDLE.format(key=key), *filler[before:], QUESTION])


def passkey_prompt(tokenizer: Tokenizer, target_length: int, key: int | None = None, depth: float | None = None,
                   rng: np.random.Generator | None = None, bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference passkey prompt of ~target_length tokens with the key at relative depth `depth`.

    Args:
      tokenizer: the model's tokenizer (it never adds BOS itself).
      target_length: tokens of the whole prompt, BOS included.
      key: the pass key; None draws one uniformly from [1, 50000] with `rng`.
      depth: 0..1, where the needle sentence starts as a fraction of the prompt; clamped to the filler region
        (it cannot precede the task description or follow the question). None draws it uniformly with `rng`.
      rng: numpy Generator for a missing key or depth.
      bos_id: if given, exactly one BOS is put first (and counted in the length).

    Returns:
      (prompt_ids int32 (P,), answer_ids int32 (A,)): P is target_length within a few tokens; answer_ids are the
      tokens of " {key}", the continuation a correct model produces.
    """
    if key is None or depth is None:
        rng = rng if rng is not None else np.random.default_rng()
        key = int(rng.integers(KEY_RANGE[0], KEY_RANGE[1] + 1)) if key is None else key
        depth = float(rng.uniform(0.0, 1.0)) if depth is None else depth
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"passkey depth must be in [0, 1]; got {depth}")
    bos = [] if bos_id is None else [int(bos_id)]
    total, before = _layout(tokenizer, target_length, int(key), float(depth), len(bos))
    # Piece counts predict the joined text's tokens exactly for space-splitting tokenizers; for others, a few
    # rounds of correction bring the length back to within one filler sentence of the target.
    for _ in range(4):
        ids = bos + tokenizer.encode(_prompt_text(key, total, before)).ids
        excess = len(ids) - target_length
        if abs(excess) <= 3:
            break
        step = max(1, round(abs(excess) / 5))
        total = max(0, total - step) if excess > 0 else total + step
        before = min(before, total)
    answer = tokenizer.encode(" " + str(key)).ids
    return np.asarray(ids, np.int32), np.asarray(answer, np.int32)


def parse_first_integer(text: str) -> int | None:
    """The first run of digits in `text` as an int ("  12345." -> 12345), or None if there is none."""
    match = _INTEGER.search(text)
    return int(match.group()) if match else None


def score_continuation(continuation: str, key: int) -> tuple[int | None, bool]:
    """(parsed answer, whether it equals the key) for a decoded continuation."""
    answer = parse_first_integer(continuation)
    return answer, answer == key


def _bos(model: Transformer, add_bos: bool) -> int | None:
    if not add_bos:
        return None
    if model.cfg.bos_token_id is None:
        raise ConfigError("add_bos=True but the model has no bos_token_id; pass add_bos=False")
    return model.cfg.bos_token_id


def passkey_accuracy(model: Transformer, tokenizer: Tokenizer, spec: RopeSpec | None, length: int, trials: int,
                     seed: int, max_new_tokens: int = 8, depths: Sequence[float] | None = None,
                     progress: Callable[[], None] | None = None, add_bos: bool = False,
                     done: Sequence[dict] = (), on_trial: Callable[[dict], None] | None = None) -> dict:
    """Greedy passkey retrieval accuracy at one prompt length.

    Keys are uniform in [1, 50000] (seeded numpy rng); trial t uses depths[t % len(depths)], or a uniform random
    depth when `depths` is None. Each prompt is decoded with `rope_inputs(spec, prompt_len + max_new_tokens)`
    (spec None: the model's own). `progress` is called after each trial. Prompt lengths vary by a few tokens
    with the key's digit count, so `generate` compiles once per distinct length.

    Resuming (a 32k trial is minutes of CPU): `done` holds records of trials already run with the same seed and
    settings; they are kept and not run again (their keys and depths are checked against the seeded draws), and
    `on_trial(record)` is called after each new trial so a caller can save progress.

    Returns {"accuracy", "length", "trials", "records"}: records are dicts with key, depth, answer (int or None),
    correct, prompt_tokens and the decoded continuation.
    """
    if trials < 1:
        raise ConfigError(f"trials must be >= 1; got {trials}")
    spec = spec if spec is not None else model.cfg.rope
    bos_id = _bos(model, add_bos)
    rng = np.random.default_rng(seed)
    draws = []  # every trial's (key, depth) first, so trial t's draw does not depend on which trials already ran
    for trial in range(trials):
        key = int(rng.integers(KEY_RANGE[0], KEY_RANGE[1] + 1))
        depth = float(depths[trial % len(depths)]) if depths is not None else float(rng.uniform(0.0, 1.0))
        draws.append((key, depth))
    records = list(done)[:trials]  # fewer trials than saved: the first ones, as a fresh run draws them
    if any(not isinstance(r, dict) or (r.get("key"), r.get("depth")) != draw for r, draw in zip(records, draws)):
        raise ConfigError(f"the saved passkey trials at {length} tokens were not drawn with seed {seed} (keys and "
                          f"depths differ); use the original seed, or delete them (results.json "
                          f"passkey_records) to run them again")
    records = [dict(r) for r in records]
    for key, depth in draws[len(records):]:
        ids, _ = passkey_prompt(tokenizer, length, key, depth, bos_id=bos_id)
        rope = rope_inputs(spec, len(ids) + max_new_tokens)
        out = np.asarray(generate(model, jnp.asarray(ids[None]), max_new_tokens, rope=rope))
        continuation = tokenizer.decode(out[0, len(ids):].tolist())
        answer, correct = score_continuation(continuation, key)
        records.append({"key": key, "depth": depth, "answer": answer, "correct": bool(correct),
                        "prompt_tokens": int(len(ids)), "continuation": continuation})
        if on_trial is not None:
            on_trial(records[-1])
        if progress is not None:
            progress()
    accuracy = sum(r["correct"] for r in records) / trials
    return {"accuracy": accuracy, "length": length, "trials": trials, "records": records}


def needle_grid(model: Transformer, tokenizer: Tokenizer, spec: RopeSpec | Callable[[int], RopeSpec] | None,
                lengths: Sequence[int], depths: Sequence[float], trials_per_cell: int, seed: int,
                max_new_tokens: int = 8, add_bos: bool = False,
                progress: Callable[[], None] | None = None, done: np.ndarray | None = None,
                on_cell: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Passkey accuracy float64 (len(lengths), len(depths)), one cell per (length, depth).

    `spec` may be a function of the length (e.g. `lambda n: method_spec(base, "pi", n)`), since most methods
    scale with their target. Each cell has its own seed derived from (seed, row, column), so cells are
    independent and a cell's keys do not change when the grid grows. `done`: a grid from an interrupted run,
    NaN where a cell is still to do; `on_cell(grid)` is called after every finished cell (to save it).
    """
    grid = np.full((len(lengths), len(depths)), np.nan) if done is None else np.array(done, np.float64)
    if grid.shape != (len(lengths), len(depths)):
        raise ConfigError(f"a saved needle grid of shape {grid.shape} does not fit {len(lengths)} lengths × "
                          f"{len(depths)} depths; delete it (results.json needle) to run the grid again")
    for i, length in enumerate(lengths):
        cell_spec = spec(length) if callable(spec) else spec
        for j, depth in enumerate(depths):
            if not np.isnan(grid[i, j]):
                continue
            cell_seed = int(np.random.default_rng([seed, i, j]).integers(2**31))
            result = passkey_accuracy(model, tokenizer, cell_spec, length, trials_per_cell, cell_seed,
                                      max_new_tokens, depths=[depth], add_bos=add_bos)
            grid[i, j] = result["accuracy"]
            if on_cell is not None:
                on_cell(grid)
            if progress is not None:
                progress()
    return grid
