"""Errors that the CLI turns into one line on stderr and exit status 2."""


class UserError(Exception):
    """A problem the user can fix (bad input, missing privilege, missing tool).

    str(err) is the whole message: one line, no traceback.
    """

    exit_code = 2


def first_line(e):
    """An exception's message as one line (at most 300 characters), for a "why" column."""
    text = str(e).strip() or e.__class__.__name__
    return text.splitlines()[0][:300]
