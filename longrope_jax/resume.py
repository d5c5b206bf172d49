"""One resume mechanism for every long job: pipeline stages, the search, evaluation and fine-tuning.

A job keeps its progress beside a fingerprint: the settings that change its results, JSON-normalised. Resuming
compares the stored fingerprint with the current one (`refuse_changed`), and a mismatch is refused with one
message naming the changed fields and the fix, never silently mixed in. State files are written atomically
(`JobState.save`: a temporary file renamed into place), so a kill leaves the old state or the new one, never part
of one. Fine-tuning keeps its state in Orbax checkpoints (whose metadata holds the fingerprint) and uses the same
comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from longrope_jax.errors import ConfigError
from longrope_jax.io import read_json, write_json_atomic

NEW_WORKDIR = "use a new --workdir or restore the old settings"


def normalised(fingerprint: Any) -> Any:
    """The value as JSON gives it back (tuples become lists, keys strings), so stored and current compare."""
    return json.loads(json.dumps(fingerprint))


def changed_fields(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The top-level fields whose values differ (present in one only counts), sorted."""
    return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


def refuse_changed(subject: str, stored: Mapping[str, Any], current: Mapping[str, Any], fix: str = NEW_WORKDIR,
                   what: str = "different settings", error: type[Exception] = ConfigError) -> None:
    """Raises `error` "{subject} with {what} ({changed fields}); {fix}" unless the fingerprints are equal.

    subject: what was written and where, e.g. "/w/search_state.json was written".
    """
    if stored == current:
        return
    raise error(f"{subject} with {what} ({', '.join(changed_fields(stored, current))}); {fix}")


def refuse_other_version(path: Path, stored: Mapping[str, Any], current: Mapping[str, Any], what: str) -> None:
    """Raises ConfigError when the fingerprints carry different `version`s: a state this code cannot read."""
    if stored.get("version") == current.get("version"):
        return
    raise ConfigError(f"{path} was written by another longrope-jax version ({what} version "
                      f"{stored.get('version', 1)}, this one reads {current.get('version')}); its results cannot be "
                      f"reused: remove it or use a new --workdir")


class JobState:
    """A job's state: one JSON file holding `fingerprint` and whatever progress the job records.

    `load` returns the stored state after checking its fingerprint (or `fresh()` when there is none); `save`
    writes it atomically.
    """

    def __init__(self, path: str | Path, fingerprint: Mapping[str, Any], what: str = "different settings",
                 fix: str = NEW_WORKDIR, version_of: str | None = None):
        """what / fix: the refusal's wording; version_of: names the state in a version-mismatch refusal (None:
        the fingerprint has no version)."""
        self.path, self.fingerprint = Path(path), normalised(fingerprint)
        self.what, self.fix, self.version_of = what, fix, version_of

    def load(self, fresh: Callable[[], dict],
             stored_fingerprint: Callable[[dict], Mapping[str, Any]] = lambda state: state.get("fingerprint", {})
             ) -> dict:
        """The stored state (its fingerprint checked) or `fresh()` (with the fingerprint set) when there is none.

        stored_fingerprint: reads the fingerprint from a stored state, e.g. filling in a field older files lacked.
        """
        state = read_json(self.path, default=None)
        if state is None:
            return {**fresh(), "fingerprint": self.fingerprint}
        stored = normalised(stored_fingerprint(state))
        if self.version_of is not None:
            refuse_other_version(self.path, stored, self.fingerprint, self.version_of)
        refuse_changed(f"{self.path} was written", stored, self.fingerprint, self.fix, self.what)
        state["fingerprint"] = self.fingerprint
        return state

    def save(self, state: dict) -> None:
        write_json_atomic(self.path, state)
