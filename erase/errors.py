"""Errors that the CLI turns into one line on stderr and an exit code (2: the user's input, 1: ours)."""


class EraseError(Exception):
    """An error with a message meant for the user; never shown as a traceback."""

    exit_code = 1


class UserError(EraseError):
    """Bad input from the user: a missing file, a wrong option value, a model of the wrong kind."""

    exit_code = 2


class NonFiniteLossError(EraseError):
    """Training diverged: a loss became NaN or infinite, so nothing is exported."""

    exit_code = 1
