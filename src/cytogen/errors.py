"""The one exception type for mistakes a user can fix.

Every error a user causes (bad path, wrong shape, unknown recipe key, ...) is raised as
:class:`CytogenError` with a message that names the offending file or value, says what is
wrong and how to fix it. The CLI prints that message without a traceback and exits non-zero.
"""

from __future__ import annotations


class CytogenError(Exception):
    """A problem with the user's input, with a message that says what to change."""
