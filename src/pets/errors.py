"""The one exception type a user can act on."""


class PetsError(Exception):
    """A problem in the user's input or params: shown as one line, exit status 1, no traceback."""
