"""The one error type the command line turns into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (path, config, flag, file): reported in one line, exit 2."""
