"""The ``tidings`` command line. ``main`` parses and dispatches; ``common`` holds
what the command modules share."""

from engine.cli.main import main

__all__ = ["main"]
