"""Text sources (local files, TFDS, demo corpus) and document / window selection with explicit BOS handling."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from longrope_jax.data.documents import DEMO_SPLITS, first_documents, random_windows
from longrope_jax.data.sources import TfdsTextSource, load_token_documents, local_text_source, text_source
from longrope_jax.errors import DataError


class CharTokenizer:
    """Stand-in tokenizer: one token per character (enough to test plumbing)."""

    def encode(self, text):
        return type("Encoding", (), {"ids": [ord(c) % 1000 for c in text]})()

    def to_str(self):
        return "char-tokenizer"


def test_local_files_txt_jsonl_array_record(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    writer = ArrayRecordWriter(str(tmp_path / "c.array_record"), "group_size:1")
    writer.write(b"fourth as raw text")
    writer.write(json.dumps({"text": "fifth"}).encode())
    writer.close()
    source = local_text_source([str(tmp_path / "*")])
    assert [source[i]["text"] for i in range(len(source))] == \
        ["first document", "second", "third", "fourth as raw text", "fifth"]
    docs = load_token_documents(source, CharTokenizer())
    assert list(docs) == ["a", "b:0", "b:2", "c:0", "c:1"] and len(docs["a"]) == len("first document")
    with pytest.raises(DataError, match="no files match"):
        local_text_source(str(tmp_path / "*.none"))
    (tmp_path / "other").mkdir()  # the same file stem in two folders: both documents kept, told apart
    (tmp_path / "other" / "a.txt").write_text("another a")
    twins = load_token_documents(local_text_source([str(tmp_path / "a.txt"), str(tmp_path / "other" / "a.txt")]),
                                 CharTokenizer())
    assert list(twins) == ["a", "a #2"] and len(twins["a #2"]) == len("another a")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(DataError, match="no field 'text'"):
        local_text_source(str(tmp_path / "d.jsonl"))


def test_tfds_source_reads_records_and_reports_missing_datasets():
    def fake_source(builder, *args, **kwargs):
        return [{"book_text": f"book {i} text".encode(), "short_book_title": f"Book {i}".encode()} for i in range(3)]

    with tfds.testing.mock_data(as_data_source_fn=fake_source):
        source = TfdsTextSource("pg19", "test")
        assert len(source) == 3 and source[2] == {"name": "Book 2", "text": "book 2 text"}
    with pytest.raises(DataError, match="cannot open TFDS dataset 'no_such_dataset_xyz'"):
        TfdsTextSource("no_such_dataset_xyz", "test")


def test_first_documents_and_bos():
    docs = {"short": np.arange(5, dtype=np.int32), "long": np.arange(100, 120, dtype=np.int32),
            "longer": np.arange(200, 230, dtype=np.int32)}
    tokens, names = first_documents(docs, 10, 2)
    assert names == ["long", "longer"] and tokens.shape == (2, 10) and tokens[0, 0] == 100
    tokens, _ = first_documents(docs, 10, 1, add_bos=True, bos_id=1)
    assert list(tokens[0]) == [1] + list(range(100, 109))  # exactly one BOS, counted in the length
    with pytest.raises(DataError, match="longest: 'longer', 30 tokens"):
        first_documents(docs, 64, 1)


def test_random_windows_are_seeded_and_in_range():
    docs = {"a": np.arange(1000, dtype=np.int32), "b": np.arange(5000, 5100, dtype=np.int32)}
    w1, where1 = random_windows(docs, 50, 8, seed=3)
    w2, where2 = random_windows(docs, 50, 8, seed=3)
    np.testing.assert_array_equal(w1, w2)
    assert where1 == where2
    for window, (name, start) in zip(w1, where1):
        np.testing.assert_array_equal(window, docs[name][start:start + 50])
    assert not np.array_equal(random_windows(docs, 50, 8, seed=4)[0], w1)
    with pytest.raises(DataError, match="no document has"):
        random_windows(docs, 5000, 1, seed=0)


def test_demo_splits_are_disjoint_and_hold_out_emma():
    names = [n for split in DEMO_SPLITS.values() for n in split]
    assert len(names) == len(set(names)) == 7
    assert DEMO_SPLITS["held_out"] == ("Emma",)
    import ml_collections
    source = text_source(ml_collections.ConfigDict({"source": "demo"}), "held_out")
    assert len(source) == 1 and source[0]["text"].startswith("EMMA")


def test_local_files_are_split_and_overlapping_splits_stop_a_search(tmp_path):
    """data.source=files: a seeded split keeps held-out text out of the search; a search on held-out is refused."""
    import ml_collections

    from configs.common import base_config
    from longrope_jax.data.sources import check_splits_apart, split_assignment, text_source
    from longrope_jax.errors import ConfigError

    for i in range(10):
        (tmp_path / f"book{i}.txt").write_text(f"text of book {i} " * 50)
    data = base_config().data
    data.source, data.files = "files", (str(tmp_path / "*.txt"),)
    splits = {s: sorted(r["name"] for r in text_source(data, s)) for s in ("train", "search", "held_out")}
    assert [len(splits[s]) for s in ("train", "search", "held_out")] == [8, 1, 1]
    assert sorted(sum(splits.values(), [])) == sorted(f"book{i}" for i in range(10))
    assert splits == {s: sorted(v) for s, v in split_assignment([f"book{i}" for i in range(10)], 0).items()}
    check_splits_apart(data, "search", "held_out")
    with pytest.raises(ConfigError, match="both 'held_out'"):
        check_splits_apart(data, "held_out", "held_out")
    data.split_names = ml_collections.ConfigDict(dict(train=("book1",), search=("book2", "book3"),
                                                      held_out=("book3",)))
    with pytest.raises(ConfigError, match="book3"):
        check_splits_apart(data, "search", "held_out")
    data.split_names.held_out = ("book9",)
    assert [r["name"] for r in text_source(data, "held_out")] == ["book9"]
    data.split_names.held_out = ("nope",)
    with pytest.raises(ConfigError, match="nope"):
        text_source(data, "held_out")
    single = base_config().data
    single.source, single.files = "files", (str(tmp_path / "book0.txt"),)
    with pytest.raises(ConfigError, match="at least 3"):
        text_source(single, "search")
