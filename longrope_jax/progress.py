"""Progress bars that stay readable everywhere: tqdm on a terminal; on a pipe, a file or a terminal that reports
zero columns, one plain line per update at most every `LONGROPE_JAX_PROGRESS_SECONDS` (default 30) seconds."""

from __future__ import annotations

import os
import shutil
import sys

from tqdm import tqdm as _tqdm


def _usable_terminal(stream) -> bool:
    try:
        return stream.isatty() and shutil.get_terminal_size().columns > 0
    except (AttributeError, ValueError, OSError):
        return False


class _LineTqdm(_tqdm):
    """tqdm writing each refresh as its own line (no carriage returns), for logs and CI output."""

    @staticmethod
    def status_printer(file):
        def print_status(text):
            text = text.strip()
            if text:
                file.write(text + "\n")
                file.flush()
        return print_status

    def moveto(self, n):  # nested bars on a terminal move the cursor; a log just gets lines in order
        pass


def tqdm(*args, **kwargs):
    """`tqdm.tqdm` on a usable terminal, else periodic plain lines with the same counts, rates and ETA."""
    stream = kwargs.get("file") or sys.stderr
    if _usable_terminal(stream):
        return _tqdm(*args, **kwargs)
    seconds = float(os.environ.get("LONGROPE_JAX_PROGRESS_SECONDS", "30"))
    kwargs.setdefault("mininterval", seconds)
    kwargs.setdefault("maxinterval", max(seconds, 10.0) * 2)
    kwargs.setdefault("ncols", 100)
    kwargs["dynamic_ncols"] = False
    kwargs.setdefault("bar_format", "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                    "{rate_fmt}{postfix}]")
    if kwargs.get("leave") is False:  # nested bars: their finishing line is still useful in a log
        kwargs["leave"] = True
    return _LineTqdm(*args, **kwargs)
