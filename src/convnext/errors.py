"""The one exception type for bad user input: the CLI prints its message alone, without a traceback."""


class UserError(ValueError):
    """A problem with what the user gave us (a path, a checkpoint, a shape, a name), not a bug.

    A ``ValueError``, so that callers who catch bad values in general catch ours too.
    """


def some(names: list[str], shown: int = 5) -> str:
    """``a, b, c, ... (12 in all)``: enough of a list for a one-line message, saying when it is cut."""
    text = ", ".join(map(str, names[:shown]))
    return f"{text}, ... ({len(names)} in all)" if len(names) > shown else text or "none"
