"""The ``memexpose`` command line (click). Top layer: may import every layer.

Each command lives in its own module here and registers itself on
:data:`cli` with ``@cli.command()``; see :mod:`memexpose.cli.main`.
"""

from memexpose.cli.main import cli, main

__all__ = ["cli", "main"]
