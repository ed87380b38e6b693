"""`UserError`: the one exception type for mistakes a user can fix.

Raise it with a one-line message that names the file and what is wrong; the CLI prints
`bert <command>: error: <message>` without a traceback and exits with `exit_code`.
"""


class UserError(Exception):
    """Bad input or a missing file: printed as one line, exit status `exit_code` (default 2)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
