"""Writing files so that a crash, a full disk or a refused folder never costs the file that was there.

Every file this package writes (run checkpoints, metrics, exported models, weights) goes through
``atomic_write``: the new content goes to a temporary file in the same folder, is flushed to the disk, takes the
permissions the user's umask gives new files, and only then replaces the target in one ``os.replace``. On any
failure the temporary file is removed and the old target is untouched; a full disk or a folder we may not write
in becomes one ``UserError`` line naming the folder. It sits below every other module (it imports none), so
``weights``, ``export`` and the training engine all use this one copy.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError

TEMP_SUFFIX = ".tmp"
# A writer that failed while less than this was free on its disk most likely ran out of space: torch.save and
# others report a short write as a RuntimeError that has lost the errno.
_NEARLY_FULL = 1 << 20

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


def natural_key(path: Path) -> list:
    """Sort key that orders file names as people number them: ``2.jpg`` before ``10.jpg``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


NAME_MAX = 255  # bytes in one file name on the usual file systems


def check_distinct_outputs(inputs: list[Path], output_name: Callable[[Path], str]) -> None:
    """One line, before any work, when two inputs would write the same output file (``a/x.png`` and ``b/x.jpg``
    both give ``x_overlay.png``): one result would silently replace the other."""
    seen: dict[str, Path] = {}
    for path in inputs:
        name = output_name(path)
        if name in seen and seen[name] != path:
            raise UserError(f"{seen[name]} and {path} would both be written as {name}: rename one, or predict "
                            "them in two runs with different --output folders")
        seen[name] = path


def temp_path(path: Path, pid: int | None = None) -> Path:
    """The temporary file for ``path``: hidden, beside it, named by the writing process, ending in ``path``'s own
    suffix (some writers pick the format from it): ``.last.pt.4242.tmp.pt``. A name too long for that keeps its
    start and a hash of the whole (a 250-character name is legal, its temp name must be too)."""
    pid = os.getpid() if pid is None else pid
    tail = f".{pid}{TEMP_SUFFIX}{path.suffix}"
    stem = path.name
    if len(f".{stem}{tail}".encode()) > NAME_MAX:
        digest = hashlib.sha1(stem.encode()).hexdigest()[:12]
        keep = NAME_MAX - len(tail.encode()) - len(digest) - 3
        stem = f"{stem.encode()[:keep].decode(errors='ignore')}~{digest}"
    return path.with_name(f".{stem}{tail}")


_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp(\.[^.]*)?$")


def is_temp(path: Path) -> bool:
    """Whether ``path`` is a temporary file ``atomic_write`` left (after a ``kill -9``)."""
    return bool(_TEMP_NAME.match(path.name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def remove_dead_temps(path: Path) -> None:
    """Remove what killed writers of ``path`` left beside it (its temp files or folders, named by a process
    that no longer runs): a rerun cleans up after a ``kill -9``. Another live writer's temp stays."""
    prefix = temp_path(path, 0).name.split(".0" + TEMP_SUFFIX)[0] + "."
    for entry in path.parent.glob(glob.escape(prefix) + "*") if path.parent.is_dir() else ():
        match = _TEMP_NAME.match(entry.name)
        if match and temp_path(path, int(match.group(1))).name == entry.name and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_problem(path: Path, err: BaseException, free: int | None = None) -> UserError | None:
    """The one-line error for a failed write, or None when the failure is not about the disk or the folder."""
    folder = path.parent
    code = getattr(err, "errno", None)
    if code is None and free is None:  # a library's own error (RuntimeError): judge by the space left
        free = _free(folder)
    if code in _DISK_FULL or (code is None and free is not None and free < _NEARLY_FULL):
        return UserError(f"cannot write {path}: the disk holding {folder} is full ({free_text(folder)}); "
                         "free some space and rerun the same command")
    if code in _REFUSED:
        reason = "the file system is read-only" if code == errno.EROFS else "permission denied"
        return UserError(f"cannot write in {folder}: {reason}; choose a folder you can write in")
    if code == errno.ENAMETOOLONG:
        return UserError(f"cannot write {path.name[:40]}...: the name is too long for the file system "
                         f"({len(path.name.encode())} bytes; most allow 255); rename the input or choose a shorter "
                         "output name")
    if code == errno.EISDIR or path.is_dir():
        return UserError(f"cannot write {path}: it is a folder; name a file")
    if code == errno.ENOENT and not folder.is_dir():
        return UserError(f"cannot write {path}: the folder {folder} does not exist")
    return None


def free_text(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; when the block succeeds it becomes ``path`` (synced, umask permissions),
    when it fails it is removed and ``path`` keeps its old content."""
    path = check_output_file(path)
    make_folder(path.parent)
    remove_dead_temps(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # some writers create 0600 files; ours follow the umask
        _fsync(tmp)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself is durable once the folder is synced
            _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (OSError, RuntimeError) as err:
        free = _free(path.parent) if tmp.exists() else None  # measured before the partial file is removed
        problem = write_problem(path, err, free)
        if problem is None:
            raise
        raise problem from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` as a file a writer may replace: one line when its name is too long for the file system, or when
    a folder, device, pipe or socket is in its place (a rename would replace a device node)."""
    path = Path(path)
    if any(len(part.encode()) > NAME_MAX for part in path.parts):
        raise write_problem(path, OSError(errno.ENAMETOOLONG, "File name too long"))
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; name a file")
    if path.exists() and not path.is_file():
        raise UserError(f"cannot write {path}: it is not a regular file; name a file")
    return path


def make_folder(folder: Path) -> None:
    """Create an output folder (and those above it) as `mkdir -p` does: every command writing a file creates
    where it goes; one line when it cannot (a file in the way, no permission, a full disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create the folder {folder}: a file of that name is in the way") from None
    except OSError as err:
        problem = write_problem(folder, err)
        raise (problem or UserError(f"cannot create the folder {folder}: {err.strerror or err}")) from None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files a killed writer left in ``folder``; call it only while holding the folder's lock
    (``engine.checkpoints.RunLock``), when no other writer can be at work there."""
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        if is_temp(entry) and entry.is_file():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed
