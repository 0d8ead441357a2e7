"""One error policy for every UI event: the message goes next to the control that caused it.

``shown_beside(fn, n_outputs, action)`` wraps a handler for wiring with one extra output, a
message component placed beside the control (the upload, the class table, the Predict button,
...). On success the message is cleared and the handler's outputs go out as usual. On failure

- what the user can fix (``dpt_core.errors.UserError``, a ``gr.Error`` raised by a handler,
  any other ``ValueError`` written for users) is shown in that message, which stays until the
  next run of the same event, and as a toast;
- anything else is a bug: logged with its traceback, shown as a short generic message;
- every output component is left as it was (``gr.update()``), never turned into an error
  badge, so inputs stay editable and earlier outputs stay readable.

Handlers themselves keep raising: tests and the public API (``/predict``, ``/explain``, where
a client should get an error) call them directly.
"""
from __future__ import annotations

import functools
import logging
import traceback
from typing import Any, Callable, TypeVar

import gradio as gr

from dpt_core.errors import UserError

from . import formatting as fmt

log = logging.getLogger(__name__)


def user_message(exc: BaseException, action: str) -> str:
    """The text to show for ``exc`` (HTML-escaped); unexpected errors are logged with their traceback."""
    if isinstance(exc, gr.Error):
        return str(exc.message)  # already escaped by whoever raised it
    if isinstance(exc, UserError):
        return fmt.escape(fmt.clip_message(str(exc).strip() or type(exc).__name__))
    message = fmt.friendly_error(exc)
    if message is not None:
        return message
    log_unexpected(action, exc)
    return f"Something went wrong while trying to {action}; the error was logged."


def log_unexpected(action: str, exc: BaseException) -> None:
    """A bug: its type and traceback at ERROR. The exception's own text goes to DEBUG only, since
    decoder messages can quote file contents (patient data) and client errors can quote tokens."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s failed: %s\n%s", action, type(exc).__name__, frames.rstrip())
    log.debug("%s failed", action, exc_info=exc)


def message_markdown(text: str) -> str:
    """The visible note beside the control (Markdown; ``text`` is already escaped)."""
    return f"⚠️ {text}" if text else ""


def shown_beside(fn: Callable[..., Any], n_outputs: int, action: str) -> Callable[..., Any]:
    """``fn`` with one more output (the message beside the control); never raises.

    ``functools.wraps`` keeps ``fn``'s signature visible to Gradio, which injects
    ``gr.Request`` / ``gr.SelectData`` parameters by annotation.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> tuple:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the one place where every failure becomes a message
            text = user_message(exc, action)
            gr.Warning(text)
            return (*([gr.update()] * n_outputs), message_markdown(text))
        values = tuple(result) if isinstance(result, (tuple, list)) and n_outputs != 1 else (result,)
        if n_outputs == 0:
            values = ()
        return (*values, "")

    return wrapper


F = TypeVar("F", bound=Callable[..., Any])


def user_errors(action: str) -> Callable[[F], F]:
    """Expected errors -> gr.Error with their message; unexpected ones -> a generic gr.Error."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - the one place where everything becomes a message
                message = fmt.friendly_error(exc)
                if message is None:
                    log_unexpected(action, exc)
                    message = f"Something went wrong while trying to {action}; the error was logged."
                raise gr.Error(message, print_exception=False) from None

        return inner  # type: ignore[return-value]

    return wrap


__all__ = ["log_unexpected", "message_markdown", "shown_beside", "user_errors", "user_message"]
