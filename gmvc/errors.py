"""Errors gmvc reports to users: each names the problem; the CLI prints them without a traceback."""


class GmvcError(ValueError):
    """Base class for user-facing errors (bad config, bad data, bad checkpoint)."""


class ConfigError(GmvcError):
    pass


class DataError(GmvcError):
    pass


class CheckpointError(GmvcError):
    pass


class TrainingError(GmvcError):
    """Raised when training produces non-finite values (NaN/inf)."""


class RunError(GmvcError):
    """A run directory that cannot take this run: in use by another process, or holding a run of
    another config."""


class Interrupted(GmvcError):
    """Training stopped on request (Ctrl-C) after saving a checkpoint."""
