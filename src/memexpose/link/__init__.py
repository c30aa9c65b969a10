"""The link layer: the memexpose peer protocol between two machines.

Two machines (processes) connect their physical memory: each may *export*
a window of one of its address spaces and *import* the other's as a region
(docs/protocol.md is the specification; docs/architecture.md the picture).

* ``MemexposeEndpoint``: one side of a link, the object a device glues its
  registers to (``enable``/``disable``/``state``, interrupts, ``window``,
  ``statistics``);
* ``Exposure``: what the peer may reach of our memory (a range or region);
* ``UnixTransport`` / ``TcpTransport``: how the two channels are made;
  only UNIX sockets carry fds, so only they map peer RAM directly;
* ``Exporter`` / ``Importer``: the serving and the window halves;
* ``codec``: the wire format (frames, strict decoding, message classes);
* ``InterruptQueue``, ``LinkStatistics``, ``PeerInfo``: what the endpoint
  reports.

Modules: ``codec`` (wire format), ``transport`` (sockets and channels),
``session`` (scheduling, threads), ``exporter``, ``importer``,
``interrupts``, ``stats``, ``endpoint``. Import from this package only.

This layer imports ``memexpose.memory`` and ``memexpose.errors``; it knows
regions and address spaces, never a device register.
"""

from memexpose.link import codec
from memexpose.link.codec import DEFAULT_MAX_BLOCK, PROTOCOL_MAJOR, PROTOCOL_MINOR
from memexpose.link.endpoint import LinkState, MemexposeEndpoint
from memexpose.link.exporter import READONLY_SHARE_POLICIES, Exporter, Exposure
from memexpose.link.importer import Importer, LinkOps, WindowOps
from memexpose.link.interrupts import INTERRUPT_QUEUE_SIZE, InterruptMessage, InterruptQueue
from memexpose.link.session import PeerInfo, Session
from memexpose.link.stats import LinkStatistics
from memexpose.link.transport import Channel, TcpTransport, Transport, UnixTransport

__all__ = [
    "DEFAULT_MAX_BLOCK",
    "INTERRUPT_QUEUE_SIZE",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "READONLY_SHARE_POLICIES",
    "Channel",
    "Exporter",
    "Exposure",
    "Importer",
    "InterruptMessage",
    "InterruptQueue",
    "LinkOps",
    "LinkState",
    "LinkStatistics",
    "MemexposeEndpoint",
    "PeerInfo",
    "Session",
    "TcpTransport",
    "Transport",
    "UnixTransport",
    "WindowOps",
    "codec",
]
