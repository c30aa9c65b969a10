"""``memexpose run CONFIG.toml``: build a machine from a TOML file and run it.

The guest console goes to standard output as the guest writes it. The run
ends when the guest shuts down or halts (exit status 0), faults, hits a
breakpoint or runs out of time (1), or when the configuration or firmware
is bad (2). Ctrl-C shuts the machine down. A QMP monitor socket named in
the file exists while the machine runs and is removed afterwards, whatever
the outcome.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import click

from memexpose.cli.main import cli
from memexpose.errors import ConfigError, MachineError
from memexpose.machine import (
    QmpMonitor,
    StopKind,
    build_machine,
    load_config,
)

__all__ = ["run"]

EXIT_OK = 0
EXIT_GUEST = 1
EXIT_CONFIG = 2


def _console(data: bytes) -> None:
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    if out is not None:
        out.write(data)
        out.flush()
    else:  # click's test runner gives a text stream
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--timeout", type=float, default=None,
              help="Stop after this many seconds (overrides machine.timeout).")
@click.option("--monitor", "monitor_path", type=click.Path(dir_okay=False), default=None,
              help="QMP socket path (overrides machine.monitor).")
def run(config: str, timeout: float | None, monitor_path: str | None) -> None:
    """Run the machine described by CONFIG (a TOML file) and print its console."""
    try:
        cfg = load_config(config)
        machine = build_machine(cfg)
    except (ConfigError, MachineError) as exc:
        click.echo(f"memexpose run: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    monitor = None
    previous = None
    try:
        machine.console = _console
        path = monitor_path or cfg.monitor
        if path is not None:
            try:
                monitor = QmpMonitor(machine, path)
            except MachineError as exc:
                click.echo(f"memexpose run: {exc}", err=True)
                sys.exit(EXIT_CONFIG)
            monitor.start()
        if threading.current_thread() is threading.main_thread():
            def _interrupt(signum: int, frame: FrameType | None) -> None:
                machine.request_shutdown(f"signal {signal.Signals(signum).name}")

            previous = {sig: signal.signal(sig, _interrupt)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
        reason = machine.run(timeout if timeout is not None else cfg.timeout)
    finally:
        if previous is not None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if monitor is not None:
            monitor.close()
        machine.close()
    if reason.kind in (StopKind.SHUTDOWN, StopKind.HALT):
        click.echo(f"memexpose run: {reason.message}", err=True)
        sys.exit(EXIT_OK)
    click.echo(f"memexpose run: {reason.describe()}", err=True)
    sys.exit(EXIT_GUEST)
