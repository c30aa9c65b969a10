"""The ``memexpose`` command group and its entry point.

Commands live in their own modules under ``memexpose.cli`` and attach
themselves with ``@cli.command()``::

    # memexpose/cli/demo.py
    import click
    from memexpose.cli.main import cli

    @cli.command()
    def demo() -> None:
        '''Run the two-VM sharing demo.'''

To add one, create the module and append its name to :data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import importlib
import logging

import click

from memexpose import __version__

__all__ = ["COMMAND_MODULES", "cli", "main"]

#: Modules that register commands on :data:`cli` when imported.
COMMAND_MODULES: list[str] = [
    "memexpose.cli.bench",
    "memexpose.cli.demo",
    "memexpose.cli.mtree",
    "memexpose.cli.pci",
    "memexpose.cli.run",
    "memexpose.cli.serve_device",
]

_LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="memexpose")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log output on stderr: -v for INFO, -vv for DEBUG (default: WARNING).",
)
def cli(verbose: int) -> None:
    """memexpose: QEMU-style guest memory, devices and memory sharing between VMs.

    Run `memexpose COMMAND --help` for the options of a command.
    """
    from rich.logging import RichHandler

    level = _LOG_LEVELS[min(verbose, len(_LOG_LEVELS) - 1)]
    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(show_time=False, show_path=False)],
        force=True,
    )


def _load_commands() -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module)


def main(argv: list[str] | None = None) -> None:
    """Run the ``memexpose`` command line (the console-script entry point).

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.
    """
    cli.main(args=argv, prog_name="memexpose")


_load_commands()
