"""What every command of the `convnext` command line shares: sub-commands whose arguments are added only when they
run, the device parser, the common arguments, and the one-line handling of user errors.

Nothing here (or in the command modules, at import time) imports PyTorch or a task: ``convnext --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda when available)"


class Commands(argparse._SubParsersAction):
    """Sub-commands whose arguments are added when one of them is chosen: ``fill(parser)`` imports what the
    command's arguments need (recipe names, formats), so listing the commands imports none of it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fillers: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def add(self, name: str, fill: Callable[[argparse.ArgumentParser], None], **kwargs) -> None:
        """``convnext ... NAME``: ``kwargs`` as for ``add_parser`` (``help``, ``description``); the help line is
        also the command's own ``--help`` description unless one is given."""
        kwargs.setdefault("description", kwargs.get("help"))
        self.add_parser(name, **kwargs)
        self._fillers[name] = fill

    def __call__(self, parser, namespace, values, option_string=None):
        fill = self._fillers.pop(values[0], None)
        if fill is not None:
            chosen = self._name_parser_map[values[0]]
            fill(chosen)
            is_group = any(isinstance(action, Commands) for action in chosen._actions)
            if not is_group and "--threads" not in chosen._option_string_actions:
                chosen.add_argument("--threads", type=int, help=THREADS_HELP)
        super().__call__(parser, namespace, values, option_string)


def commands(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Commands:
    """The sub-commands of ``parser`` (one is required), chosen into ``args.<dest>``."""
    return parser.add_subparsers(dest=dest, required=True, metavar=metavar, action=Commands)


def parse_device(name: str | None) -> torch.device:
    """The CLI's one device parser: ``--device`` as given (cpu, cuda, cuda:1, ...), or cuda when available."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from ..engine.runtime import check_device

    return check_device(name)


def add_device(p: argparse.ArgumentParser, help: str = DEVICE_HELP, **kwargs) -> None:
    p.add_argument("--device", help=help, **kwargs)


def add_settings(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE ...`` into ``args.settings``: several after one --set, and --set may repeat."""
    p.add_argument("--set", dest="settings", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=help)


def add_output(p: argparse.ArgumentParser, help: str | None = None, *, metavar: str = "RUN_DIR", **kwargs) -> None:
    """``--output``: the folder a command writes (a run folder unless ``metavar`` says otherwise)."""
    p.add_argument("--output", metavar=metavar, help=help, **kwargs)


def add_weights(p: argparse.ArgumentParser) -> None:
    """--model and where its weights come from, as `convnext.tasks.loading.load_model` takes them."""
    p.add_argument("--model", help="model name, e.g. convnext_tiny or convnext_tiny.in22k_ft_in1k (not needed "
                   "with a checkpoint `convnext train` wrote: it records its model)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", metavar="CKPT", help="weights file of any supported layout; its head "
                         "decides the number of classes")
    weights.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="TAG",
                         help="released weights (the model's default tag when TAG is left out)")


def tolerant_output() -> None:
    """Characters the terminal's encoding lacks (a unicode file name under LANG=C) print as escapes, not as a
    crash."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


THREADS_HELP = ("CPU threads (default: one per idle core, judged by the load average, so a busy machine is not "
                "slowed further by threads waiting on each other; OMP_NUM_THREADS, when set, decides instead)")


def choose_threads(given: int | None, cores: int, load: float, env: str | None) -> int | None:
    """The CPU threads a command runs with: ``--threads`` as given; else None (leave PyTorch's) when the user
    set OMP_NUM_THREADS; else one per core not already busy (the 1-minute load average), at least one.
    OpenMP threads that wait on each other on cores other processes use slow a run several-fold."""
    if given is not None:
        if given < 1:
            raise UserError(f"--threads must be at least 1, got {given}")
        return given
    if env and env.strip():  # OpenMP would ignore a malformed value, and so would PyTorch: say so instead
        if not all(part.strip().isdigit() and int(part) >= 1 for part in env.split(",")):
            raise UserError(f"OMP_NUM_THREADS={env!r}: must be a whole number of threads, at least 1 (or unset)")
        return None
    return max(1, min(cores, round(cores - load)))


def cores_and_load() -> tuple[int, float]:
    """The cores this process may run on and the 1-minute load average (0 where the system has none)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _use_threads(given: int | None) -> int | None:
    """Set PyTorch's thread count for this command; returns the count to restore afterwards (or None)."""
    import torch

    cores, load = cores_and_load()
    threads = choose_threads(given, cores, load, os.environ.get("OMP_NUM_THREADS"))
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        return None
    torch.set_num_threads(threads)
    return previous


def _keep_freed_memory_on_cpu(args: argparse.Namespace) -> None:
    """For a command that owns its process (`convnext.cli.main` from the command line) and runs on the CPU, where
    reusing freed memory saves page faults every step; on a GPU it would only hold host memory at its peak."""
    if getattr(args, "own_process", False) and parse_device(getattr(args, "device", None)).type == "cpu":
        from ..deploy.allocator import keep_freed_memory

        keep_freed_memory()


def run(args: argparse.Namespace) -> int:
    """Run the chosen command: a user error is one line on stderr (exit 2), never a traceback. The thread
    count is set for the command (see `choose_threads`) and restored after it, for callers in-process."""
    warnings.simplefilter("default")
    previous = None
    try:
        if not getattr(args, "own_threads", False):  # `benchmark` sets its threads as its settings say
            previous = _use_threads(getattr(args, "threads", None))
            _keep_freed_memory_on_cpu(args)
        return args.func(args)
    except UserError as err:
        print(f"convnext {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumes = getattr(args, "resumes", False)  # training commands: their run folder keeps the last checkpoint
        resume = " (rerun the same command to resume from its last checkpoint)" if resumes else ""
        print(f"convnext {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `convnext ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)


def workers_within_cores(requested: int) -> int:
    """``--workers`` no more than this process's CPU cores, said on stderr when lowered (stdout may be JSON), as
    training says it."""
    from ..engine.runtime import capped_workers

    workers, note = capped_workers(requested)
    if note:
        print(note, file=sys.stderr)
    return workers


def comma_list(text: str, flag: str) -> list[str]:
    """The non-empty items of a comma-separated flag value; one line when there is none (``--model ,``)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"{flag} names nothing: give one or more, comma-separated, got {text!r}")
    return items
