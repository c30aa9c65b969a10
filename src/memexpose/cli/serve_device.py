"""``memexpose serve-device``: serve one PCI device to a VM over QEMU's multi-process protocol.

Also registers the ``remote-pci`` device type for ``memexpose run``
configurations (``[[device]] type = "remote-pci", socket = "PATH"``): the
machine connects to a ``serve-device --socket PATH`` process.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from typing import Any

import click

from memexpose.cli.main import cli
from memexpose.errors import ConfigError, MemexposeError, ProtocolError
from memexpose.machine import DeviceSpec, Machine, register_device_type
from memexpose.remote import (
    REMOTE_DEVICES,
    RemoteDeviceServer,
    RemotePCIDevice,
    RemotePlatform,
    build_remote_device,
)

__all__ = ["serve_device"]

log = logging.getLogger(__name__)


def _parse_opts(opts: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--opt {item!r}: expected KEY=VALUE (e.g. --opt "
                                   "dma_mask=0xffffffff)")
        options[key] = value
    return options


def _inherited_socket(fd: int) -> socket.socket:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise click.UsageError(f"--fd {fd}: not an open descriptor ({exc.strerror}); the "
                               "parent must pass it (e.g. subprocess pass_fds)") from exc
    if not stat.S_ISSOCK(mode):
        raise click.UsageError(f"--fd {fd}: not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise click.UsageError(f"--fd {fd}: need an AF_UNIX stream socket (fds travel with "
                               "the messages)")
    return sock


def _accept_one(path: str) -> socket.socket:
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            probe.close()
            raise click.UsageError(f"--socket {path}: another server listens there")
        finally:
            probe.close()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a temporary name and rename once listening, so the socket
    # file appearing means a connect succeeds (no bind-to-listen race).
    staging = f"{path}.{os.getpid()}.tmp"
    try:
        srv.bind(staging)
        srv.listen(1)
        os.rename(staging, path)
        log.info("waiting for the VM side on %s", path)
        conn, _ = srv.accept()
    finally:
        srv.close()
        for name in (staging, path):
            try:
                os.unlink(name)
            except OSError:
                pass
    return conn


def _device_help() -> str:
    return "\n".join(f"  {t.name}: {t.description} (options: "
                     f"{', '.join(sorted(t.options)) or 'none'})"
                     for t in REMOTE_DEVICES.values())


class _ServeDeviceCommand(click.Command):
    """``--help`` ends with the device types registered when it is shown."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section("Device types"):
            formatter.write_dl([(t.name, f"{t.description} (options: "
                                         f"{', '.join(sorted(t.options)) or 'none'})")
                                for t in REMOTE_DEVICES.values()])


@cli.command("serve-device", cls=_ServeDeviceCommand,
             short_help="Serve a PCI device to a VM (QEMU x-pci-proxy-dev or remote-pci).")
@click.argument("device")
@click.option("--fd", "fd", type=int, default=None,
              help="Serve this inherited AF_UNIX stream socket (how stock QEMU connects: "
                   "-device x-pci-proxy-dev,fd=N with the other end of a socketpair).")
@click.option("--socket", "path", type=click.Path(dir_okay=False), default=None,
              help="Listen on this UNIX socket path, serve the first VM that connects, "
                   "then exit.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="A device option; repeat for more.")
@click.option("--trace", is_flag=True, help="Log every message (with -vv).")
def serve_device(device: str, fd: int | None, path: str | None, opts: tuple[str, ...],
                 trace: bool) -> None:
    """Serve DEVICE over one socket in QEMU 7.2's multi-process wire format.

    The same process serves stock QEMU (`-device x-pci-proxy-dev,fd=N`) and
    memexpose machines (`remote-pci`). Config and BAR accesses, guest RAM
    (SYNC_SYSMEM), INTx through eventfds and resets are handled; the device's
    DMA lands in the VM's RAM when that RAM is a shared memfd.

    Exits 0 when the VM side closes the socket, 1 on a malformed message
    (logged with what arrived), 2 on a usage or device error.

    \b
    Examples:
      memexpose serve-device edu --fd 3
      memexpose serve-device edu --socket /tmp/edu.sock --opt dma_mask=0xffffffff
      memexpose serve-device memexpose-pci --fd 3 --opt socket=/tmp/mx.sock \\
          --opt bar64=off --opt msi=off --opt shm_size=0x10000000
    """
    if (fd is None) == (path is None):
        raise click.UsageError("give exactly one of --fd N and --socket PATH")
    options = _parse_opts(opts)
    platform = RemotePlatform(f"remote-{device}")
    try:
        build_remote_device(device, platform, options)
    except ConfigError as exc:
        platform.close()
        raise click.UsageError(f"{exc}\ndevice types:\n{_device_help()}") from exc
    sock = _inherited_socket(fd) if fd is not None else _accept_one(str(path))
    server = RemoteDeviceServer(platform, sock, trace=trace)
    code = 0
    try:
        server.serve()
    except ProtocolError:
        code = 1  # logged by the server with what arrived
    except MemexposeError as exc:
        log.error("serve-device %s: %s", device, exc)
        code = 1
    finally:
        if trace:
            log.debug("serve-device %s: %s", device, server.statistics())
        server.close()
        platform.close()
    sys.exit(code)


# -- remote-pci in machine configurations ---------------------------------------------------

def _make_remote_pci(machine: Machine, spec: DeviceSpec) -> Any:
    allowed = {"socket", "slot", "id", "timeout"}
    unknown = sorted(set(spec.options) - allowed)
    if unknown:
        raise ConfigError(f"{spec.where}: unknown key {unknown[0]!r} for a 'remote-pci' "
                          f"device; known keys: {', '.join(sorted(allowed | {'type'}))}")
    path = spec.options.get("socket")
    if not isinstance(path, str):
        raise ConfigError(f"{spec.where}.socket: the UNIX socket of a `memexpose "
                          "serve-device --socket PATH` process is required")
    if machine.pci_bus is None:
        raise ConfigError(f"{spec.where}: board {machine.board.name!r} has no PCI bus")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{spec.where}.socket: cannot connect to {path}: {exc.strerror}; "
                          "start `memexpose serve-device DEVICE --socket PATH` first") from exc
    timeout = spec.options.get("timeout", 5.0)
    dev = RemotePCIDevice(sock, id=spec.options.get("id"), timeout=float(timeout))
    with machine.memory.transaction():
        machine.pci_bus.add_device(dev, spec.options.get("slot"))
    machine.add_closer(dev.close)
    return machine.add_device(dev)


register_device_type("remote-pci", _make_remote_pci)
