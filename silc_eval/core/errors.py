"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A mistake in the user's input: a bad name, path, file or configuration.

    The message must say what was wrong and what was expected, in one line.
    """
