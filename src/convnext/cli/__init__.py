"""The ``convnext`` command: one module per command group."""

from .root import build_parser, main

__all__ = ["build_parser", "main"]
