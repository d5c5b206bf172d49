"""The `data` section: where text comes from and how it is split into train / search / held-out documents."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from longrope_jax.errors import ConfigError
from longrope_jax.settings import Section

SOURCES = ("demo", "files", "tfds")


@dataclasses.dataclass(frozen=True)
class DataSettings(Section):
    """source: "demo" (Austen + KJV, fetched from Debian), "files" (the `files` globs) or "tfds" (e.g. pg19).

    Local files are split into train/search/held_out by a seeded 80/10/10 shuffle of their names (`split_seed`)
    unless `split_names` lists each split's documents; tfds uses its own splits by name. `add_bos` puts the
    tokenizer's BOS token before every scored document.
    """

    SECTION: ClassVar[str] = "data"
    RANGES: ClassVar = {"split_seed": (int, 0, None, "0")}

    source: str = "demo"
    files: tuple = ()
    text_key: str = "text"
    tfds_name: str = "pg19"
    tfds_split: str = "test"
    tfds_data_dir: str = ""
    name_key: str = "short_book_title"
    add_bos: bool = False
    train_split: str = "train"
    search_split: str = "search"
    held_out_split: str = "held_out"
    split_seed: int = 0
    split_names: dict = dataclasses.field(default_factory=lambda: {"train": (), "search": (), "held_out": ()})

    def check(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"unknown data.source {self.source!r}; use 'demo', 'files' or 'tfds'")
