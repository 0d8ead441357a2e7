"""The errors a user can fix, as one small hierarchy.

Every exception that means "the input, a setting or the environment needs changing" derives from
``UserError``; its ``str()`` is written for the person who made the request (short, no stack
trace, no server paths), so the CLI prints it as its ``error:`` line and the app shows it next to
the control that caused it. Anything else is a bug: logged with its traceback, shown generically.

``UserError`` derives from ``ValueError`` because most of these began life as ``ValueError`` and
callers still catch that.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; the message is safe to show as is."""


class InputError(UserError):
    """A value, a setting or an upload that cannot be used (class names, settings, image files)."""


class FewShotError(InputError):
    """Bad few-shot input or a failed step of a few-shot run."""


class ResourceError(UserError, RuntimeError):
    """Something outside the request is missing or unreachable (the Hub, a model, a token)."""


class TrainingStopped(RuntimeError):
    """The user stopped a run before anything was trained (nothing was saved). Not an error to report."""


__all__ = ["FewShotError", "InputError", "ResourceError", "TrainingStopped", "UserError"]
