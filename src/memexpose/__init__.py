"""memexpose: a QEMU-style guest memory model, and memory sharing between VMs.

The package is layered. From the bottom up:

- ``memexpose.memory``: host memory, regions, flat views, address spaces,
  listeners and ``info mtree`` text. Knows nothing of devices, sockets or CPUs.
- ``memexpose.hw``: IRQ lines, sysbus, PCI (config space, BARs, buses, host
  bridges, DMA, MSI).
- ``memexpose.link``: the memexpose peer protocol (codec, transport, session,
  exporter, importer).
- ``memexpose.devices``: concrete device models (memexpose-pci,
  memexpose-platform, edu, uart, ivshmem).
- ``memexpose.remote``: a PCI device served from another process, in the wire
  format of QEMU's multi-process proxy.
- ``memexpose.qemu``: stock QEMU: launcher, QMP/qtest clients, ``info mtree``
  parser, ivshmem server, vhost-user memory import.
- ``memexpose.machine``: memory + CPU (Unicorn) + devices + run loop, boards,
  loader and a QMP-subset monitor.
- ``memexpose.cli``: the ``memexpose`` command.

Each layer imports only layers below it, and only through the package itself
(``from memexpose.memory import AddressSpace``), never its private modules.
``memexpose.errors`` holds every exception and may be imported from anywhere.
``memexpose.bench`` (benchmarks) sits beside ``cli`` and may import any layer.
``tests/test_exports.py`` checks all of this.

This module stays import-light: it does not import any subpackage.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
