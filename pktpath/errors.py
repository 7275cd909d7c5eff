"""Errors that the CLI turns into one line on stderr and exit status 2."""


class UserError(Exception):
    """A problem the user can fix (bad input, missing privilege, missing tool).

    str(err) is the whole message: one line, no traceback.
    """

    exit_code = 2
