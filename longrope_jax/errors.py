"""Errors users see. Each message names the problem and the fix; CLIs turn them into one line and exit 1."""


class LongRopeError(Exception):
    """Base class: anything a user can fix (config, inputs, assets, checkpoints)."""


class ConfigError(LongRopeError, ValueError):
    """A config value is missing, out of range or inconsistent."""


class AssetError(LongRopeError, RuntimeError):
    """A model file, corpus or package could not be found or fetched (e.g. offline)."""


class CheckpointError(LongRopeError, ValueError):
    """A checkpoint is corrupt, incomplete, or does not match the model/config it is restored into."""


class DataError(LongRopeError, ValueError):
    """Input text is unusable, e.g. shorter than the requested length."""
