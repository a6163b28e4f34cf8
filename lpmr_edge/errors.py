"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""
