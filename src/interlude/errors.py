"""User-facing errors.

Every error a user can cause (bad config, bad data, bad checkpoint) is raised as a subclass of
:class:`InterludeError`. The CLI prints these as one line (``error: ...``) instead of a stack trace,
so the message must name the problem *and* the fix.
"""

from __future__ import annotations


class InterludeError(Exception):
    """Base class for errors caused by user input rather than by a bug in interlude."""


class ConfigError(InterludeError, ValueError):
    """A config file or ``key=value`` override is invalid."""


class DataError(InterludeError, ValueError):
    """A dataset is missing, malformed, or cannot support the requested split."""


class CheckpointError(InterludeError):
    """A checkpoint is missing, corrupt, or does not match the current config."""


class TrainingDiverged(InterludeError):
    """The loss became NaN/inf; training stopped and the last good checkpoint was kept."""
