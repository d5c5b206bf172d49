"""Settings: every config section parsed once into a frozen, typed `Section`, checked field by field.

A CLI hands its ml_collections config to `longrope_jax.job_settings.parse_job` once; every job and library
function below it receives typed sections (`DataSettings`, `SearchSettings`, ...) and reads only the ones it
uses. Each section class's defaults are the shipped defaults (`configs/common.py` builds its ConfigDict from
them), so a field is declared in one place.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, TypeVar

from longrope_jax.model.config import without_speed_settings
from longrope_jax.resume import normalised


def as_list(value: Any) -> list:
    """A config list field; `--config.x=a,b` arrives as ("a,b",) or "a,b" for string fields, so split on commas."""
    items = [value] if isinstance(value, (str, int, float)) else list(value)
    out = []
    for item in items:
        out.extend(part.strip() for part in item.split(",") if part.strip()) if isinstance(item, str) \
            else out.append(item)
    return out


def model_record(model_section: Any) -> dict:
    """The model settings that change values (path, dtype, ...; not the speed-only ones), stored beside results so
    others can tell whether they were measured on the same model (`search.verdict_results`). param_dtype is
    recorded once it is not the default float32, so records written before it could be set still match."""
    record = without_speed_settings(normalised(model_section.to_dict()))
    if record.get("param_dtype") == "float32":
        record.pop("param_dtype")
    return record


def check_ranges(section: Any, name: str, ranges: Mapping[str, tuple[type, float, float | None, str]]) -> None:
    """Raises ConfigError for the first field of `section` outside its range.

    ranges: {field: (int or float, lowest legal value, highest legal value or None, an example of a good value)}.
    """
    from longrope_jax.errors import ConfigError

    for field, (kind, low, high, example) in ranges.items():
        if field not in section:
            continue
        value = section[field]
        try:
            number = kind(value)
            legal = (not isinstance(value, bool) and math.isfinite(number) and number >= low
                     and (high is None or number <= high) and (kind is float or number == value))
        except (TypeError, ValueError):
            legal = False
        if not legal:
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"{name}.{field}={value!r} must be {'an integer' if kind is int else 'a number'} "
                              f"{bounds}; e.g. --config.{name}.{field}={example}")


SectionT = TypeVar("SectionT", bound="Section")
Ranges = Mapping[str, tuple[type, float, "float | None", str]]


def _frozen(value: Any) -> Any:
    """Config values as immutable Python values: lists become tuples, nested sections plain dicts."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _frozen(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class Section:
    """A frozen, typed config section. Subclasses are frozen dataclasses naming `SECTION` (the config key) and
    `RANGES` (numeric checks: {field: (int or float, lowest, highest or None, an example)}); `check` adds the
    cross-field rules. Reading is by attribute; `get`, `in`, `[]` and `to_dict` read like the ConfigDict section
    it was parsed from, so fingerprints of a typed section equal those of the ConfigDict."""

    SECTION: ClassVar[str] = ""
    RANGES: ClassVar[Ranges] = {}
    # Fields left out of `to_dict` while None (settings only some configs have, e.g. model.tiny).
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls: type[SectionT], section: Any) -> SectionT:
        """The typed section of a ConfigDict section, a mapping or an already parsed one (returned as is);
        raises ConfigError naming the first unknown or out-of-range field and a legal value."""
        if isinstance(section, cls):
            return section
        from longrope_jax.errors import ConfigError

        values = _frozen(section if section is not None else {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{cls.SECTION}.{unknown[0]} is not a {cls.SECTION} setting; remove it or use one of "
                              f"{', '.join(known)}")
        check_ranges(values, cls.SECTION, cls.RANGES)
        parsed = cls(**values)
        parsed.check()
        return parsed

    def check(self) -> None:
        """Cross-field rules of the section; raises ConfigError."""

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default) if name in self else default

    def __contains__(self, name: object) -> bool:
        return name in self.to_dict()

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise KeyError(name)
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.name in self.OMIT_WHEN_NONE and getattr(self, f.name) is None)}

    def replace(self: SectionT, **changes: Any) -> SectionT:
        """A copy with `changes`, checked like a parsed section."""
        return type(self).parse({**self.to_dict(), **changes})
