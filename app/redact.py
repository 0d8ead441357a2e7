"""Server paths out of messages shown to visitors.

An error raised deep in a library may name a file on the server (the Hub cache, a
session folder, a typed path). The visitor needs the file's name at most, never where
it lives; ``hide_paths`` keeps the last part of every absolute path.
"""
from __future__ import annotations

import re

# An absolute POSIX or Windows path, starting a message or after a space, quote, bracket or "=".
_PATH = re.compile(r"""(?:(?<=^)|(?<=[\s'"(=`]))(?:/|[A-Za-z]:\\)(?:[^\s'"()`]*[/\\])*([^\s'"()`/\\]*)""")


def hide_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last part (e.g. ``/tmp/x/scan.dcm`` -> ``scan.dcm``)."""
    return _PATH.sub(lambda m: m[1] or "<path>", text)


def example_at(examples: list, index: object) -> dict:
    """The gallery example a select event names; any other index (forged by a client) is a ValueError."""
    if isinstance(index, (list, tuple)) and len(index) == 1:
        index = index[0]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(examples):
        raise ValueError("no such example")
    return examples[index]
