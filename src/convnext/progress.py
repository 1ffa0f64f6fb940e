"""Progress of long loops: tqdm's bar on a terminal, and elsewhere (a log file, a CI job, ``nohup``) one plain
line every minute, so that a command whose output goes to a file is never silent for minutes."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LINE_EVERY = 60.0  # seconds between two lines when the output is not a terminal


class LineProgress:
    """The part of tqdm's interface the package uses, written as a line every ``every`` seconds."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, every: float = LINE_EVERY):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.n, self.postfix = initial, ""
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            done = f"{self.n}/{self.total}" if self.total else str(self.n)
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            extra = f", {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {done} {self.unit}{share}, {(now - self.start) / 60:.1f} min{extra}",
                  file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(iterable: Iterable | None = None, *, show: bool = True, **kwargs) -> tqdm | LineProgress:
    """A progress display for a loop: nothing when ``show`` is false, tqdm's bar (``leave=False``) when
    stderr is a terminal, else a `LineProgress`. ``kwargs``: ``total``, ``desc``, ``unit``, ``initial``."""
    if not show:
        return tqdm(iterable, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
    return LineProgress(iterable, **kwargs)
