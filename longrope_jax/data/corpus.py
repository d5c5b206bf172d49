"""Long real English documents that work offline: Jane Austen's novels and the King James Bible.

No model hub or dataset host is reachable from the machines this project runs on, but Debian's
package mirror is, and two Debian packages carry public-domain book-length texts:

* ``r-cran-janeaustenr``: the six novels as R character vectors (one element per line) in the
  package's lazy-load database ``data/Rdata.rdb``/``.rdx``, read here with PyPI ``rdata`` (no R).
* ``bible-kjv-text`` + ``bible-kjv``: the KJV in a custom compressed format, decoded by the
  ``bible`` program of the second package, run straight from the unpacked ``.deb`` (nothing is
  installed system-wide).

Packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` in a temp dir;
the decoded texts are cached as ``.txt`` files, so only the first call needs the network.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

from longrope_jax.cache import cache_dir as _default_cache_dir
from longrope_jax.errors import AssetError
from longrope_jax.io import write_text_atomic

__all__ = ["AUSTEN_TITLES", "CORPUS_DIR_ENV", "austen_novels", "kjv_bible"]

# Env var naming a directory of ready-made .txt files (title as stem); skips the cache and fetching.
CORPUS_DIR_ENV = "LONGROPE_JAX_CORPUS_DIR"

# Dataset name in the R package -> title, in publication order. The titles are the factor levels
# that janeaustenr's own austen_books() assigns (read from R/janeaustenr.rdb of version 1.0.0).
_AUSTEN_DATASETS: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
AUSTEN_TITLES: tuple[str, ...] = tuple(_AUSTEN_DATASETS.values())

_KJV_FILE = "kjv.txt"
# The whole text is ~4.3M characters; anything much shorter means the decoder misbehaved.
_KJV_MIN_CHARS = 4_000_000
_APT_TIMEOUT_S = 600


def _resolve_dir(cache_dir: Path | None) -> Path:
    """The corpus cache directory: the argument, else ``longrope_jax.cache.cache_dir("corpus")``."""
    if cache_dir is None:
        return _default_cache_dir("corpus")
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run a command, raising CalledProcessError/OSError/TimeoutExpired for the caller to translate."""
    return subprocess.run(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=_APT_TIMEOUT_S
    )


def _fetch_deb(package: str, workdir: Path, hint: str) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` one package into ``workdir``; returns the unpack root."""
    try:
        try:
            _run(["apt-get", "download", package], workdir)
        except subprocess.CalledProcessError:
            # A fresh container has no package lists ("Unable to locate package"): refresh once.
            _run(["apt-get", "update"], workdir)
            _run(["apt-get", "download", package], workdir)
        debs = sorted(workdir.glob(f"{package}_*.deb"))
        if not debs:
            raise FileNotFoundError(f"apt-get download left no {package}_*.deb in {workdir}")
        root = workdir / package
        _run(["dpkg-deb", "-x", str(debs[-1]), str(root)], workdir)
    except (OSError, subprocess.SubprocessError) as e:
        detail = ""
        if isinstance(e, subprocess.CalledProcessError) and e.stderr:
            detail = ": " + e.stderr.decode("utf-8", "replace").strip().splitlines()[-1]
        raise AssetError(
            f"could not fetch Debian package {package} (offline, or no apt-get/dpkg-deb?) "
            f"[{type(e).__name__}{detail}]; {hint}"
        ) from e
    return root


def _read_lazyload(rdb: Path, rdx: Path) -> dict[str, object]:
    """Every object of an R lazy-load database (``.rdb`` blobs indexed by a ``.rdx`` RDS file)."""
    import rdata  # imported here: only a fresh fetch needs it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns "Unknown file type: assumed RDS" for blobs
        index = rdata.read_rds(rdx)
        blob = rdb.read_bytes()
        out: dict[str, object] = {}
        for name, (offset, length) in index["variables"].items():
            chunk = blob[int(offset) : int(offset) + int(length)]
            # Each blob: 4-byte big-endian raw length, then zlib data (R's compress=TRUE, as
            # index["compressed"] says); types 2/3 (bzip2/xz) add a type byte we don't expect here.
            if int(index["compressed"][0]) != 1:
                raise ValueError(f"unsupported lazy-load compression {index['compressed']!r}")
            raw = zlib.decompress(chunk[4:])
            parsed = rdata.parser.parse_data(raw, extension=".rds")
            out[str(name)] = rdata.conversion.convert(parsed)
    return out


def _austen_from_debian(hint: str) -> dict[str, str]:
    """Fetch r-cran-janeaustenr and decode the six novels (one "\\n"-joined string each)."""
    with tempfile.TemporaryDirectory(prefix="longrope_jax_austen_") as tmp:
        root = _fetch_deb("r-cran-janeaustenr", Path(tmp), hint)
        rdbs = sorted(root.glob("usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")) or sorted(
            root.rglob("Rdata.rdb")
        )
        if not rdbs:
            raise AssetError(f"r-cran-janeaustenr holds no data/Rdata.rdb (package layout changed?); {hint}")
        try:
            objects = _read_lazyload(rdbs[0], rdbs[0].with_suffix(".rdx"))
        except Exception as e:  # a format surprise must say what failed, not surface as a numpy error
            raise AssetError(f"could not decode r-cran-janeaustenr's R data with rdata: {e}; {hint}") from e
    novels: dict[str, str] = {}
    for dataset, title in _AUSTEN_DATASETS.items():
        if dataset not in objects:
            raise AssetError(f"r-cran-janeaustenr lacks dataset {dataset!r}; {hint}")
        # One vector element per printed line; empty elements are the paragraph breaks. R's NA
        # (None after conversion) would only ever be a missing line, so it becomes an empty one.
        lines = ["" if s is None else str(s) for s in objects[dataset]]
        novels[title] = "\n".join(lines)
    return novels


def austen_novels(cache_dir: Path | None = None) -> dict[str, str]:
    """Jane Austen's six novels, title -> full text (lines joined with "\\n", blank lines kept).

    Titles are ``AUSTEN_TITLES`` (janeaustenr's): "Sense & Sensibility", "Pride & Prejudice",
    "Mansfield Park", "Emma", "Northanger Abbey", "Persuasion".

    Lookup order: ``$LONGROPE_JAX_CORPUS_DIR`` (every ``*.txt`` there except ``kjv.txt``, keyed by
    file stem; no fetching), then ``<cache_dir>/austen/<title>.txt`` (default cache dir:
    ``longrope_jax.cache.cache_dir("corpus")``), else the Debian package ``r-cran-janeaustenr``,
    whose decoded novels are then cached.

    Raises:
        AssetError: the override dir has no .txt files, or the package cannot be fetched/decoded.
    """
    override = os.environ.get(CORPUS_DIR_ENV)
    if override:
        files = sorted(p for p in Path(override).expanduser().glob("*.txt") if p.name != _KJV_FILE)
        if not files:
            raise AssetError(f"{CORPUS_DIR_ENV}={override} holds no .txt files; put one <title>.txt per novel there")
        # Known titles first, in publication order, then any others alphabetically.
        files.sort(key=lambda p: (AUSTEN_TITLES.index(p.stem) if p.stem in AUSTEN_TITLES else len(AUSTEN_TITLES)))
        return {p.stem: p.read_text(encoding="utf-8") for p in files}

    austen_dir = _resolve_dir(cache_dir) / "austen"
    paths = {title: austen_dir / f"{title}.txt" for title in AUSTEN_TITLES}
    # All six or refetch: a run killed between two atomic writes leaves a partial set behind.
    if all(p.is_file() for p in paths.values()):
        return {title: p.read_text(encoding="utf-8") for title, p in paths.items()}

    hint = f"put the novels as <title>.txt files in {austen_dir} (or in ${CORPUS_DIR_ENV}) or set LONGROPE_JAX_CACHE"
    novels = _austen_from_debian(hint)
    for title, text in novels.items():
        write_text_atomic(paths[title], text)
    return novels


def _tidy_kjv(raw: str) -> str:
    """Strip the verse-number indentation and outer blank lines of ``bible``'s pretty output.

    The output is "Genesis 1", blank line, then one verse per line ("  1 In the beginning ..."),
    with a blank line before each new chapter heading.
    """
    lines = [line.strip() for line in raw.splitlines()]
    return "\n".join(lines).strip("\n") + "\n"


def _kjv_from_debian(hint: str) -> str:
    """Fetch bible-kjv-text (compressed data) and bible-kjv (its decoder) and dump the whole text."""
    with tempfile.TemporaryDirectory(prefix="longrope_jax_kjv_") as tmp:
        work = Path(tmp)
        data_root = _fetch_deb("bible-kjv-text", work, hint)
        prog_root = _fetch_deb("bible-kjv", work, hint)
        data = next(data_root.rglob("bible.data"), None)
        prog = next(prog_root.rglob("bin/bible"), None)
        if data is None or prog is None:
            raise AssetError(f"bible-kjv/bible-kjv-text lack usr/bin/bible or bible.data (layout changed?); {hint}")
        # -p: look for bible.data(.conc) in the unpacked dir (a space-separated list, so the temp
        # path must have no spaces: mkdtemp's names don't). -l: pretty-print (book/chapter headings,
        # numbered verses) with a line width no verse reaches, i.e. no hard wrapping inside a verse.
        cmd = [str(prog), "-l", "100000", "-p", str(data.parent), "Gen1:1-Rev22:21"]
        try:
            proc = _run(cmd, work)
        except (OSError, subprocess.SubprocessError) as e:
            raise AssetError(f"the bible program of Debian bible-kjv failed to decode the KJV ({e}); {hint}") from e
    text = _tidy_kjv(proc.stdout.decode("utf-8", "replace"))
    if len(text) < _KJV_MIN_CHARS or not text.startswith("Genesis 1"):
        raise AssetError(f"bible-kjv decoded only {len(text):,} characters (expected > {_KJV_MIN_CHARS:,}); {hint}")
    return text


def kjv_bible(cache_dir: Path | None = None) -> str:
    """The King James Bible as one string (~4.3M characters), Genesis 1:1 to Revelation 22:21.

    Layout: a "Book N" heading line per chapter, a blank line, then one "V text" line per verse
    (e.g. "1 In the beginning God created the heaven and the earth."); chapters are separated by
    a blank line. Lookup order: ``$LONGROPE_JAX_CORPUS_DIR/kjv.txt`` if that file exists, then
    ``<cache_dir>/kjv.txt``, else decoded from Debian ``bible-kjv-text`` with ``bible-kjv``'s
    ``bible`` program (run from the unpacked package, nothing installed) and cached.

    Raises:
        AssetError: the packages cannot be fetched or the decoder fails.
    """
    override = os.environ.get(CORPUS_DIR_ENV)
    if override and (Path(override).expanduser() / _KJV_FILE).is_file():
        return (Path(override).expanduser() / _KJV_FILE).read_text(encoding="utf-8")

    path = _resolve_dir(cache_dir) / _KJV_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    hint = f"put the text as {path} (or ${CORPUS_DIR_ENV}/{_KJV_FILE}) or set LONGROPE_JAX_CACHE"
    text = _kjv_from_debian(hint)
    write_text_atomic(path, text)
    return text
