"""The one exception type for bad user input: the CLI prints its message alone, without a traceback."""


class UserError(ValueError):
    """A problem with what the user gave us (a path, a checkpoint, a shape, a name), not a bug.

    A ``ValueError``, so that callers who catch bad values in general catch ours too.
    """
