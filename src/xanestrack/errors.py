"""The error the user can act on.

``XanestrackError`` is raised for problems with the user's input files, options or
output folder. Its message is one line that names the file (or option) and says what
to do. Options are named as the library's parameters, in backquotes (```min_radius```);
the command line prints the message with its flags instead (:func:`for_cli`: ``--min-radius``),
and ``--debug`` shows the traceback. It is a
``ValueError``, so code that catches bad input as ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["XanestrackError", "one_line", "for_cli"]


class XanestrackError(ValueError):
    """Bad input, options or output folder; the message names the file and what to do."""


def one_line(text, limit: int = 400) -> str:
    """``text`` as a single line (whitespace runs collapsed), cut at ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def for_cli(text) -> str:
    """A library message as the command line says it: each backquoted parameter becomes its flag.

    >>> for_cli("`min_radius` 0.5 px: too small")
    '--min-radius 0.5 px: too small'
    """
    import re

    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: "--" + m.group(1).replace("_", "-"), str(text))
