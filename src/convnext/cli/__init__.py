"""The ``convnext`` command: the root parser here, what commands share in `common`, one module per command group
(`models`, `classify`, `deploy`, `segment`, `detect`, `robustness`), each importing only `common`; `demo` gathers
the four tasks' demos under one spelling."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import classify, demo, deploy, detect, models, robustness, segment
from .common import commands, run, tolerant_output


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the command's usage is one ``--help`` away), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="convnext", description="ConvNeXt models: build, train, evaluate, "
                                     "benchmark and export (A ConvNet for the 2020s).")
    sub = commands(parser, dest="command", metavar="COMMAND")
    for add in (models.add_models, models.add_info, demo.add_demo, classify.add_train, classify.add_evaluate,
                classify.add_predict, deploy.add_export, models.add_roadmap, deploy.add_benchmark,
                robustness.add_parser, segment.add_parser, detect.add_parser, deploy.add_quantize):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (None: this process's own, ``sys.argv``).

    From the command line the process is the command's: when it runs on the CPU, glibc keeps freed memory for
    it, so each step reuses its big activation buffers instead of page-faulting fresh ones in (training steps
    10-20% faster), except in `benchmark`, whose ``--keep-freed-memory`` decides for every contender alike. A
    Python caller that passes ``argv`` keeps its allocator as it is (`convnext.keep_freed_memory` opts in).
    """
    tolerant_output()
    args = build_parser().parse_args(argv)
    args.own_process = argv is None
    return run(args)
