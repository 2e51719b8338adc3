"""The ``phalanx`` command: ``main`` dispatches to one module per subcommand in this package."""

from node.cli.main import main

__all__ = ["main"]
