"""Real-asset tests of the offline corpus: fetched from Debian's package mirror (CI reaches it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from longrope_jax.data import corpus
from longrope_jax.data.corpus import AUSTEN_TITLES, CORPUS_DIR_ENV, austen_novels, kjv_bible
from longrope_jax.errors import AssetError

EXPECTED_TITLES = (
    "Sense & Sensibility",
    "Pride & Prejudice",
    "Mansfield Park",
    "Emma",
    "Northanger Abbey",
    "Persuasion",
)


def _no_subprocess(*args: object, **kwargs: object) -> None:
    """Stands in for subprocess.run where the network/apt must not be touched."""
    raise AssertionError(f"subprocess.run called: {args!r}")


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own LONGROPE_JAX_CORPUS_DIR must not leak into these tests."""
    monkeypatch.delenv(CORPUS_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def austen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus cache dir filled by one real fetch (shared by the module: a fetch takes seconds)."""
    path = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(CORPUS_DIR_ENV, raising=False)
        austen_novels(cache_dir=path)
    return path


@pytest.fixture(scope="module")
def novels(austen_dir: Path) -> dict[str, str]:
    return austen_novels(cache_dir=austen_dir)


def test_six_novels_with_package_titles(novels: dict[str, str]) -> None:
    assert tuple(novels) == EXPECTED_TITLES == AUSTEN_TITLES
    assert all(len(text) > 400_000 for text in novels.values())


def test_emma_is_long(novels: dict[str, str]) -> None:
    assert len(novels["Emma"]) > 850_000
    # Mansfield Park is a few hundred characters longer; Emma must be within 1% of the longest.
    assert len(novels["Emma"]) >= 0.99 * max(len(t) for t in novels.values())


def test_known_lines(novels: dict[str, str]) -> None:
    emma = novels["Emma"]
    assert emma.startswith("EMMA\n")
    assert "Emma Woodhouse, handsome, clever, and rich" in emma
    assert "It is a truth universally acknowledged" in novels["Pride & Prejudice"]
    assert novels["Persuasion"].startswith("Persuasion")
    assert "Catherine Morland" in novels["Northanger Abbey"]


def test_lines_joined_with_paragraph_breaks(novels: dict[str, str]) -> None:
    emma = novels["Emma"]
    assert "\n\n" in emma  # blank lines (paragraph breaks) survive
    assert "Emma Woodhouse, handsome, clever, and rich, with a comfortable home\nand happy disposition" in emma
    assert "\r" not in emma and "NA\n" not in emma[:1000]


def test_second_call_served_from_cache(
    austen_dir: Path, novels: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus.subprocess, "run", _no_subprocess)
    assert austen_novels(cache_dir=austen_dir) == novels
    cached = sorted(p.name for p in (austen_dir / "austen").iterdir())
    assert cached == sorted(f"{t}.txt" for t in EXPECTED_TITLES)  # no leftover temp files


def test_default_cache_dir_follows_env(
    austen_dir: Path, novels: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # LONGROPE_JAX_CACHE=<root> puts the corpus in <root>/corpus, the layout austen_dir already has.
    root = austen_dir.parent / "cache_root"
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    link = root / "corpus" / "austen"
    if not link.exists():
        link.symlink_to(austen_dir / "austen")
    monkeypatch.setenv("LONGROPE_JAX_CACHE", str(root))
    monkeypatch.setattr(corpus.subprocess, "run", _no_subprocess)
    assert austen_novels() == novels


def test_partial_cache_is_refetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {t: f"text of {t}" for t in EXPECTED_TITLES}
    calls: list[str] = []
    monkeypatch.setattr(corpus, "_austen_from_debian", lambda hint: calls.append(hint) or dict(fake))
    (tmp_path / "austen").mkdir()
    (tmp_path / "austen" / "Emma.txt").write_text("stale half-written set", encoding="utf-8")
    assert austen_novels(cache_dir=tmp_path) == fake
    assert len(calls) == 1
    assert austen_novels(cache_dir=tmp_path) == fake
    assert len(calls) == 1  # now complete: served from cache


def test_corpus_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Persuasion.txt").write_text("Persuasion\n\nby Jane Austen", encoding="utf-8")
    (tmp_path / "Emma.txt").write_text("EMMA\n\nBy Jane Austen", encoding="utf-8")
    (tmp_path / "My Notes.txt").write_text("other", encoding="utf-8")
    (tmp_path / "kjv.txt").write_text("not a novel", encoding="utf-8")
    monkeypatch.setenv(CORPUS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("LONGROPE_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus.subprocess, "run", _no_subprocess)
    got = austen_novels()
    assert list(got) == ["Emma", "Persuasion", "My Notes"]
    assert got["Emma"] == "EMMA\n\nBy Jane Austen"
    assert kjv_bible() == "not a novel"


def test_corpus_dir_override_empty_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CORPUS_DIR_ENV, str(tmp_path))
    with pytest.raises(AssetError, match=CORPUS_DIR_ENV):
        austen_novels()


_APT_ERROR = subprocess.CalledProcessError(100, ["apt-get"], b"", b"E: Unable to locate package r-cran-janeaustenr")


@pytest.mark.parametrize("error", [_APT_ERROR, FileNotFoundError("apt-get")], ids=["apt-error", "no-apt-get"])
def test_fetch_failure_is_asset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def failing_run(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setenv("LONGROPE_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus.subprocess, "run", failing_run)
    with pytest.raises(AssetError) as info:
        austen_novels()
    msg = str(info.value)
    assert "r-cran-janeaustenr" in msg
    assert str(tmp_path / "corpus" / "austen") in msg  # says where to put the files
    assert CORPUS_DIR_ENV in msg and "LONGROPE_JAX_CACHE" in msg
    with pytest.raises(AssetError, match="bible-kjv-text"):
        kjv_bible()
    assert not list((tmp_path / "corpus").rglob("*.txt"))  # nothing half-cached


@pytest.fixture(scope="module")
def kjv(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("kjv")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(CORPUS_DIR_ENV, raising=False)
        return kjv_bible(cache_dir=path), path


def test_kjv_text(kjv: tuple[str, Path]) -> None:
    text, _ = kjv
    assert len(text) > 4_000_000
    assert text.startswith("Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n")
    assert "In the beginning God created the heaven and the earth" in text
    assert "\nJohn 3\n" in text and "16 For God so loved the world" in text
    assert text.rstrip().endswith("21 The grace of our Lord Jesus Christ be with you all. Amen.")


def test_kjv_cached(kjv: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    text, path = kjv
    monkeypatch.setattr(corpus.subprocess, "run", _no_subprocess)
    assert kjv_bible(cache_dir=path) == text
