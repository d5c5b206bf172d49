"""Progress bars that stay readable everywhere: tqdm on a terminal; on a pipe, a file or a terminal that reports
zero columns, one plain line per update at most every `LONGROPE_JAX_PROGRESS_SECONDS` (default 30) seconds."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

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


class StepClock:
    """Shows, inside one long step (a fine-tuning step can take minutes on a CPU), how long it has run and, once a
    step has been timed, about how long is left in it; refreshed every `interval` seconds from a helper thread.

    with StepClock(bar, last_seconds) as clock:   # last_seconds: the previous step's duration, or None
        run_the_step()
    clock.seconds                                 # this step's duration
    """

    def __init__(self, bar, last_seconds: float | None, interval: float | None = None, label: str = "step"):
        self.bar, self.last, self.label = bar, last_seconds, label
        if interval is None:  # a log gets a line per tick, so it ticks at the log's pace
            default = os.environ.get("LONGROPE_JAX_PROGRESS_SECONDS", "30") if isinstance(bar, _LineTqdm) else "5"
            interval = float(os.environ.get("LONGROPE_JAX_STEP_CLOCK_SECONDS", default))
        self.interval = max(float(interval), 0.01)
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def text(self, elapsed: float) -> str:
        step = f"{self.label} {self.bar.n + 1}/{self.bar.total}" if self.bar.total else f"{self.label} {self.bar.n + 1}"
        if self.last:
            return f"{step} running {elapsed:.0f} s, about {max(self.last - elapsed, 0.0):.0f} s left in it"
        return f"{step} running {elapsed:.0f} s (the first step includes compilation)"

    def _tick(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(self.interval):
            self.bar.set_description_str(f"{self.bar.desc.split(' [')[0]} [{self.text(time.perf_counter() - start)}]")

    def __enter__(self) -> "StepClock":
        self._start = time.perf_counter()
        self._active = not getattr(self.bar, "disable", False)  # a disabled bar (other hosts of a pod) has no text
        if self._active:
            self._desc = self.bar.desc
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        if self._active:
            self._stop.set()
            self._thread.join()
            self.bar.set_description_str(self._desc, refresh=False)
