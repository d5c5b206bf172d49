"""Training batches from grain: documents concatenated into one token stream, cut into fixed-length sequences.

The reference LongRoPE concatenated shorter samples to reach 64k–256k tokens; we do the same with an EOS (or BOS)
token between documents. The stream's windows form a grain MapDataset (shuffled by seed, repeated, batched), whose
iterator state is a small JSON dict saved in every checkpoint: resume neither repeats nor skips data.
Multi-host: each process reads the windows `process_index::process_count` of every global batch.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain
import jax
import numpy as np

from longrope_jax.errors import DataError


def token_stream(documents: Mapping[str, np.ndarray], separator: int | None) -> np.ndarray:
    """All documents (sorted by name, for determinism) joined into one int32 stream with `separator` between."""
    parts = []
    for name in sorted(documents):
        parts.append(np.asarray(documents[name], np.int32))
        if separator is not None:
            parts.append(np.asarray([separator], np.int32))
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


class StreamWindows(grain.sources.RandomAccessDataSource):
    """Window i = stream[i·L : i·L + L + 1] (inputs and their next-token targets share the window)."""

    def __init__(self, stream: np.ndarray, seq_len: int):
        if len(stream) < seq_len + 1:
            raise DataError(f"the training text has {len(stream)} tokens, fewer than one sequence of {seq_len} + 1; "
                            f"add documents or lower finetune.seq_len")
        self.stream, self.seq_len = stream, seq_len

    def __len__(self) -> int:
        return (len(self.stream) - 1) // self.seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return self.stream[start:start + self.seq_len + 1]


def batch_iterator(stream: np.ndarray, seq_len: int, global_batch: int, seed: int,
                   process_index: int | None = None, process_count: int | None = None) -> grain.DatasetIterator:
    """A checkpointable grain iterator of int32 batches (global_batch / process_count, seq_len + 1)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch % process_count:
        raise DataError(f"global batch {global_batch} is not divisible by {process_count} processes")
    dataset = grain.MapDataset.source(StreamWindows(stream, seq_len)).shuffle(seed=seed).repeat(None)
    dataset = dataset.batch(global_batch, drop_remainder=True)
    local = global_batch // process_count
    dataset = dataset.map(lambda batch: np.asarray(batch)[process_index * local:(process_index + 1) * local])
    return iter(dataset.to_iter_dataset())


def step_is_long(step: int, long_ratio: float, seed: int) -> bool:
    """LongRoPE2 mixed context windows: whether optimizer step `step` trains on a long (rescaled) batch.

    A pure function of (step, seed), so a resumed run makes the same choices.
    """
    if long_ratio >= 1.0:
        return True
    if long_ratio <= 0.0:
        return False
    return bool(np.random.default_rng([seed, step]).random() < long_ratio)


def iterator_state(iterators: Mapping[str, Any]) -> dict[str, Any]:
    return {name: it.get_state() for name, it in iterators.items()}


def restore_iterators(iterators: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    for name, it in iterators.items():
        if name in state:
            it.set_state(state[name])
