"""Shared CLI behaviour: user errors become one clear line on stderr and exit status 1 (no traceback)."""

from __future__ import annotations

import sys
from typing import Callable

from longrope_jax.errors import LongRopeError


def run_main(main: Callable[[], int | None]) -> None:
    """Runs `main`; LongRopeError / ValueError from bad input print `error: ...` and exit 1."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save step at INFO
    try:
        code = main()
    except (LongRopeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:  # a read-only workdir, a full disk: the path and the cause, not a traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}; check that the path is writable and the disk has room, then "
              f"rerun the same command to resume", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
