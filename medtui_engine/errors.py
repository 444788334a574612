"""Errors that are the user's to fix: shown as one clear message, never as a traceback."""

from __future__ import annotations

# Exit codes scripts can rely on (documented in the README).
EXIT_OK = 0          # done; for checks: clean or warnings only
EXIT_FAILED = 1      # ran, and the answer is "no": problems found, or the job failed
EXIT_USAGE = 2       # could not run: bad arguments, unreadable input, missing model
EXIT_INTERNAL = 3    # a bug in medtui: the message says where the details were written
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
