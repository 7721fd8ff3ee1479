"""The one exception type the core raises for anything a user can fix."""


class CoopsynthError(Exception):
    """A problem with the user's input, options or files.

    The message is one line that names the file (when there is one) and the problem;
    the CLI prints it in red and exits with code 1.
    """
