"""The error the user can act on.

``XanestrackError`` is raised for problems with the user's input files, options or
output folder. Its message is one line that names the file (or option) and says what
to do; the command line prints it as it is (``--debug`` shows the traceback). It is a
``ValueError``, so code that catches bad input as ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["XanestrackError", "one_line"]


class XanestrackError(ValueError):
    """Bad input, options or output folder; the message names the file and what to do."""


def one_line(text, limit: int = 400) -> str:
    """``text`` as a single line (whitespace runs collapsed), cut at ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
