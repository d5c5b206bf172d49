"""Shared CLI behaviour: user errors become one clear line on stderr and exit status 1 (no traceback)."""

from __future__ import annotations

import errno
import logging
import sys
import traceback
from typing import Callable

from longrope_jax.errors import LongRopeError


class _DropOrbaxThreadErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname.replace("\\", "/"))


def _quiet_background_failures() -> None:
    """A save that fails in Orbax's background threads (a full disk) is logged there with a traceback per thread,
    tens of them, and then raised in the main thread, where it becomes our one `error:` line. Keep only that."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxThreadErrors) for f in absl.filters):
        absl.addFilter(_DropOrbaxThreadErrors())
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception was never retrieved", the same error


_INTERRUPTED = "interrupted; rerun the same command to resume"
_interrupt_reported = False
_wakeup_sockets: list = []
# After Ctrl-C, how long the main thread gets to stop by itself before the process is ended for it.
INTERRUPT_GRACE_SECONDS = 3.0


def _exit_on_interrupt(signum, frame) -> None:
    """SIGINT: the resume line and exit 130 at once. Raising KeyboardInterrupt instead would surface wherever the
    main thread happens to be, e.g. inside a garbage-collection callback, where Python prints it as a traceback."""
    import os

    global _interrupt_reported
    _interrupt_reported = True
    print(_INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(130)


def _exit_promptly_on_interrupt() -> None:
    """Ctrl-C ends a run with one line and status 130. The Python-level handler runs only between bytecodes, and a
    compiled step (minutes on a CPU) returns to Python only when it ends; so a helper thread is also told of the
    signal at once (signal.set_wakeup_fd) and, if the process is still there after the grace time, ends it. Every
    state file is written atomically, the fitness cache is SQLite (a transaction in flight rolls back) and an
    unfinished Orbax save is a temporary directory discarded on the next run, so nothing is left half-written."""
    import os
    import signal
    import socket
    import threading
    import time

    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _exit_on_interrupt)
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    try:
        signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        return

    def watch() -> None:
        while True:
            if receiver.recv(1) == bytes([signal.SIGINT]):
                time.sleep(INTERRUPT_GRACE_SECONDS)
                if not _interrupt_reported:
                    print(_INTERRUPTED, file=sys.stderr, flush=True)
                os._exit(130)

    _wakeup_sockets.extend((receiver, sender))  # the signal module holds only the fd number
    threading.Thread(target=watch, name="interrupt-watch", daemon=True).start()


def run_main(main: Callable[[], int | None]) -> None:
    """Runs `main`; LongRopeError / ValueError from bad input print `error: ...` and exit 1."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save step at INFO
    _quiet_background_failures()
    _exit_promptly_on_interrupt()
    try:
        code = main()
    except (LongRopeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:  # a read-only workdir, a full disk: the path and the cause, not a traceback
        if err.errno == errno.ENOENT or "No such file" in str(err):
            import re

            # ml_collections words a missing --config file over several lines; the path is in its last one.
            named = re.search(r"No such file or directory: '([^']+)'", str(err))
            path = err.filename or (named.group(1) if named else None)
            detail = "" if named or not str(err) else f" ({' '.join(str(err).split())})"
            print(f"error: {path + ': ' if path else ''}no such file or directory{detail}; check the path",
                  file=sys.stderr)
            sys.exit(1)
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}; check that the path is writable and the disk has room, then "
              f"rerun the same command to resume", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        global _interrupt_reported
        _interrupt_reported = True
        print(_INTERRUPTED, file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(code or 0)


def run_app(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)`, with a --config.* override naming a field the config lacks reported as one line."""
    from absl import app

    try:
        app.run(main)
    except AttributeError as err:
        flag = _unknown_config_flag(err)
        if flag is None:
            raise
        field, suggestion = _field_and_suggestion(err)
        hint = f"did you mean {suggestion!r}?" if suggestion else "check its spelling against the config file"
        print(f"error: {flag}: the config has no field {field!r}; {hint} (--helpfull lists every --config.* "
              f"flag)", file=sys.stderr)
        sys.exit(1)


def _field_and_suggestion(err: AttributeError) -> tuple[str, str | None]:
    """The missing field ml_collections names in `err`, and the field it suggests instead, if any."""
    import re

    text = str(err).replace("\\", "")
    field = re.search(r"'([^']+)'", text)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    return (field.group(1) if field else text.strip("\"'")), (suggestion.group(1) if suggestion else None)


def _unknown_config_flag(err: AttributeError) -> str | None:
    """The --config.* flag naming a field the config lacks, when `err` came from applying config overrides."""
    frames = traceback.extract_tb(err.__traceback__)
    if not any("ml_collections" in frame.filename for frame in frames):
        return None
    field = _field_and_suggestion(err)[0]
    for arg in sys.argv[1:]:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and field in name.split("."):
            return name
    return "a --config.* flag"
