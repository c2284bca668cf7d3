"""User-facing errors.

Every error a user can cause (bad config, bad data, bad checkpoint) is raised as a subclass of
:class:`InterludeError`. The CLI prints these as one line (``error: ...``) instead of a stack trace,
so the message must name the problem *and* the fix.
"""

from __future__ import annotations

import reprlib


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


SHOWN_CHARS = 80
"""Longest quote of a user value in an error message."""


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` bounded in time and length, for quoting user input in an error message.

    A value from YAML can share sub-lists (anchors/aliases) so that its plain ``repr`` expands to
    billions of items; :mod:`reprlib` stops after a few items per level and a few levels, and
    the text is cut to ``limit`` characters, so quoting input never hangs or floods a terminal.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded_repr() -> reprlib.Repr:
    bounded = reprlib.Repr()
    bounded.maxlevel = 3
    bounded.maxlist = bounded.maxtuple = bounded.maxdict = bounded.maxset = 6
    bounded.maxstring = bounded.maxother = bounded.maxlong = SHOWN_CHARS
    return bounded


_REPR = _bounded_repr()
