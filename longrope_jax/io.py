"""Atomic writes: files and directories are replaced whole, never left half-written by a kill."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_file(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """A handle on a temporary file beside `path` that replaces `path` whole when the block ends without error
    (and is removed if it raises). Made readable by all (0644): caches and exports are shared between users."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """An empty directory beside `path` to build its new content in; when the block ends without error it replaces
    `path` by renames (a reader sees the old or the new directory whole, never a mix), and if the block raises it
    is removed and `path` is untouched. A kill between the two renames leaves the old one in `<path>.old-*`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{path.name}.partial-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # mkdtemp makes 0700 and some writers (safetensors, mkstemp) 0600: an exported model is for others to read.
    for entry in [staging, *staging.rglob("*")]:
        os.chmod(entry, entry.stat().st_mode | (0o555 if entry.is_dir() else 0o444))
    if not path.exists():
        os.replace(staging, path)
        return
    backup = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{path.name}.old-"))
    os.replace(path, backup / path.name)
    os.replace(staging, path)
    shutil.rmtree(backup)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in `path` (`default` when it does not exist); a corrupt file is an error that names it."""
    from longrope_jax.errors import CheckpointError

    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); restore it from a backup or delete it (its run then "
                              f"starts that part afresh)") from err


def read_json_lines(path: str | Path) -> list[Any]:
    """The records of a JSON-lines file; a torn last line (a run killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except ValueError as err:
            if i == len(lines) - 1:
                break
            from longrope_jax.errors import CheckpointError
            raise CheckpointError(f"{path} line {i + 1} is corrupt ({err}); delete that line or the file") from err
    return out


def save_figure_atomic(figure, path: str | Path) -> Path:
    """Saves a matplotlib figure as PNG via a temporary file, then closes it."""
    import matplotlib.pyplot as plt

    with atomic_file(path, binary=True) as handle:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return Path(path)


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
