"""The one exception type for bad user input: the CLI prints its message alone, without a traceback."""


class UserError(Exception):
    """A problem with what the user gave us (a path, a checkpoint, a shape, a name), not a bug."""
