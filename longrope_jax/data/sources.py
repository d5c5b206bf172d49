"""Text sources as grain random-access data sources: TFDS (e.g. pg19), local files, and the offline demo corpus.

Every source yields records {"name": str, "text": str}; `load_token_documents` runs one through a grain
MapDataset and returns {name: token ids} for evaluation and search.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Sequence

import grain
import numpy as np

from longrope_jax.data.settings import DataSettings
from longrope_jax.errors import ConfigError, DataError


class TextRecords(grain.sources.RandomAccessDataSource):
    """In-memory text documents ({"name", "text"} records) behind grain's random-access interface."""

    def __init__(self, records: Sequence[dict[str, str]]):
        self._records = list(records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, str]:
        return self._records[index]


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return _decode(value.item())
    return str(value)


def local_text_source(patterns: Sequence[str] | str, text_key: str = "text") -> TextRecords:
    """Documents from globs of .txt (one document per file), .jsonl (one per line, field `text_key`) and
    .array_record files (each record UTF-8 text or a JSON object with `text_key`)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = sorted({f for p in patterns for f in glob.glob(str(Path(p).expanduser()), recursive=True)})
    if not files:
        raise DataError(f"no files match {patterns}; check the data.files globs")
    records = []
    for file in files:
        path = Path(file)
        if path.suffix == ".txt":
            records.append({"name": path.stem, "text": path.read_text(encoding="utf-8")})
        elif path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    records.append({"name": f"{path.stem}:{i}", "text": _record_text(json.loads(line), text_key,
                                                                                     path)})
        elif path.suffix == ".array_record":
            source = grain.sources.ArrayRecordDataSource([str(path)])
            for i in range(len(source)):
                raw = _decode(source[i])
                text = _record_text(json.loads(raw), text_key, path) if raw.lstrip().startswith("{") else raw
                records.append({"name": f"{path.stem}:{i}", "text": text})
        else:
            raise DataError(f"unsupported file type {path.suffix!r} ({path}); use .txt, .jsonl or .array_record")
    return TextRecords(records)


def _record_text(record: dict, text_key: str, where: Any) -> str:
    if text_key not in record:
        raise DataError(f"record in {where} has no field {text_key!r} (fields: {sorted(record)}); set data.text_key")
    return _decode(record[text_key])


class TfdsTextSource(grain.sources.RandomAccessDataSource):
    """A TFDS dataset through `tfds.data_source` (array_record, no TensorFlow needed), e.g. pg19's book_text."""

    def __init__(self, name: str = "pg19", split: str = "test", text_key: str = "book_text",
                 name_key: str | None = "short_book_title", data_dir: str | None = None):
        import tensorflow_datasets as tfds

        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        except Exception as err:  # tfds raises many types for missing/unprepared datasets
            raise DataError(f"cannot open TFDS dataset {name!r} split {split!r}: {type(err).__name__}: {err}. "
                            f"Prepare it first (tfds build {name} --file_format=array_record) on a machine with "
                            f"internet access, or use data.source='demo' / 'files'") from err
        self._text_key, self._name_key, self._name = text_key, name_key, name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, str]:
        record = self._source[index]
        name = _decode(record[self._name_key]) if self._name_key and self._name_key in record else \
            f"{self._name}:{index}"
        return {"name": name, "text": _record_text(record, self._text_key, self._name)}


def demo_source(split: str | None = None) -> TextRecords:
    """The offline demo corpus (Austen + KJV), optionally one named split (train / search / held_out)."""
    from longrope_jax.data.documents import demo_texts

    return TextRecords([{"name": n, "text": t} for n, t in demo_texts(split).items()])


def text_source(data: DataSettings | Any, split: str | None = None) -> grain.sources.RandomAccessDataSource:
    """The source the data settings name (`data.source`: "demo", "files" or "tfds"), optionally one split."""
    data = DataSettings.parse(data)
    if data.source == "demo":
        return demo_source(split)
    if data.source == "files":
        source = local_text_source(data.files, data.text_key)
        return source if split is None else TextRecords(split_records(source, data, split))
    return TfdsTextSource(data.tfds_name, split or data.tfds_split, data.text_key, data.name_key,
                          data.tfds_data_dir or None)


FILE_SPLIT_FRACTIONS = {"train": 0.8, "search": 0.1, "held_out": 0.1}


def split_assignment(names: Sequence[str], seed: int, explicit: Any = None) -> dict[str, list[str]]:
    """{split: document names} for local files: `explicit` ({split: names}) where it names any document, else a
    seeded shuffle cut 80/10/10 (at least one document in each split), so train, search and held-out text never
    overlap."""
    from longrope_jax.settings import as_list

    names = sorted(dict.fromkeys(names))
    chosen = {k: as_list(v) for k, v in dict(explicit or {}).items() if as_list(v)}
    if chosen:
        unknown = sorted({n for v in chosen.values() for n in v} - set(names))
        if unknown:
            raise ConfigError(f"data.split_names names documents that data.files does not hold: {unknown[:4]}; "
                              f"names are file stems (.txt) or <stem>:<line> (.jsonl); known: {names[:6]}")
        return {k: chosen.get(k, []) for k in FILE_SPLIT_FRACTIONS}
    if len(names) < len(FILE_SPLIT_FRACTIONS):
        raise ConfigError(f"data.files holds {len(names)} document(s); a seeded train/search/held_out split needs "
                          f"at least 3: add files or name each split's documents with "
                          f"--config.data.split_names.held_out=NAME (and .search, .train)")
    order = [names[i] for i in np.random.default_rng(int(seed)).permutation(len(names))]
    held = max(1, int(round(len(names) * FILE_SPLIT_FRACTIONS["held_out"])))
    search = max(1, int(round(len(names) * FILE_SPLIT_FRACTIONS["search"])))
    return {"held_out": order[:held], "search": order[held:held + search], "train": order[held + search:]}


def split_records(source: TextRecords, data: DataSettings | Any, split: str) -> list[dict[str, str]]:
    """The records of one split ("train", "search" or "held_out") of a local-files source."""
    if split not in FILE_SPLIT_FRACTIONS:
        raise ConfigError(f"unknown split {split!r} for data.source='files'; use {', '.join(FILE_SPLIT_FRACTIONS)}")
    records = [source[i] for i in range(len(source))]
    data = DataSettings.parse(data)
    assignment = split_assignment([r["name"] for r in records], data.split_seed, data.split_names)
    wanted = set(assignment[split])
    return [r for r in records if r["name"] in wanted]


def check_splits_apart(data: DataSettings | Any, fitness_split: str, judged_split: str) -> None:
    """Stops a run whose fitness documents would also be the documents it is judged on."""
    if fitness_split == judged_split:
        raise ConfigError(f"data.search_split and data.held_out_split are both {fitness_split!r}: the verdict would "
                          f"judge the search on the text it was fitted to; give them different splits")
    data = DataSettings.parse(data)
    if data.source == "tfds":
        return  # TFDS splits are disjoint by construction
    names = [{r["name"] for r in text_source(data, split)} for split in (fitness_split, judged_split)]
    if names[0] & names[1]:
        raise ConfigError(f"documents {sorted(names[0] & names[1])[:4]} are in both the {fitness_split!r} and the "
                          f"{judged_split!r} split; list each document in one split only (data.split_names)")


def load_token_documents(source: grain.sources.RandomAccessDataSource, tokenizer,
                         max_documents: int | None = None) -> dict[str, np.ndarray]:
    """{name: int32 token ids} of a source's documents (no BOS), tokenised through a grain MapDataset."""
    from longrope_jax.data.documents import tokenize_texts

    dataset = grain.MapDataset.source(source)
    if max_documents is not None:
        dataset = dataset[:max_documents]
    out: dict[str, np.ndarray] = {}
    for name, ids in dataset.map(lambda r: (r["name"], tokenize_texts({r["name"]: r["text"]}, tokenizer)[r["name"]])):
        unique, copy = name, 1
        while unique in out:  # two books with one title (pg19) or one file stem in two folders: keep both
            copy += 1
            unique = f"{name} #{copy}"
        out[unique] = ids
    return out
