"""Link statistics: plain counters on the hot path, frozen snapshots outside."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["LinkCounters", "LinkStatistics"]


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """A snapshot of one endpoint's counters (``MemexposeEndpoint.statistics()``).

    Counters run over the endpoint's life, across reconnections, unless
    they say "current".

    Attributes:
        state: the endpoint state name when the snapshot was taken.
        connects: successful ``enable()`` calls.
        forwarded_reads, forwarded_writes: 1..8-byte accesses sent to the peer.
        forwarded_block_reads, forwarded_block_writes: block transfers sent.
        forwarded_bytes: bytes moved by forwarded accesses and blocks.
        served_requests: access requests of the peer served by our exporter.
        refused_requests: of those, refused (out of window, read-only, recursion).
        deferred_requests: peer requests put off while a higher wait was open.
        shares_sent: replies that carried an fd to the peer.
        shares_received: fds received with replies.
        shares_refused: received fds not mapped (bad range, overlap, no seal).
        direct_mappings: current direct mappings of peer memory.
        direct_bytes: current bytes mapped directly.
        mappings_created, mappings_removed: direct mappings over time.
        bytes_mapped_total: bytes ever mapped directly.
        invalidations_sent: INVALIDATEs we sent (and got acknowledged).
        invalidations_received: INVALIDATEs the peer sent us.
        revoked_in_commit: mappings revoked while our own commit was running
            (docs/protocol.md, P15), removed just after it.
        interrupts_sent, interrupts_received, interrupts_dropped: interrupt channel.
        interrupts_pending: current entries in the receive queue.
        link_errors: links that ended in an error (EOF without BYE, malformed
            frame, timeout, I/O error).
    """

    state: str = "DISABLED"
    connects: int = 0
    forwarded_reads: int = 0
    forwarded_writes: int = 0
    forwarded_block_reads: int = 0
    forwarded_block_writes: int = 0
    forwarded_bytes: int = 0
    served_requests: int = 0
    refused_requests: int = 0
    deferred_requests: int = 0
    shares_sent: int = 0
    shares_received: int = 0
    shares_refused: int = 0
    direct_mappings: int = 0
    direct_bytes: int = 0
    mappings_created: int = 0
    mappings_removed: int = 0
    bytes_mapped_total: int = 0
    invalidations_sent: int = 0
    invalidations_received: int = 0
    revoked_in_commit: int = 0
    interrupts_sent: int = 0
    interrupts_received: int = 0
    interrupts_dropped: int = 0
    interrupts_pending: int = 0
    link_errors: int = 0

    def as_dict(self) -> dict[str, int | str]:
        """Return the snapshot as a plain dict (for JSON and pickling)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class LinkCounters:
    """The mutable counters behind ``LinkStatistics`` (incremented in place).

    Written with the machine lock held, except the interrupt counters,
    which the interrupt thread and senders update (``+=`` on an int
    attribute under the GIL; a snapshot may lag by one).
    """

    __slots__ = tuple(f.name for f in fields(LinkStatistics)
                      if f.name not in ("state", "direct_mappings", "direct_bytes",
                                        "interrupts_pending", "interrupts_received",
                                        "interrupts_dropped"))

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self, **current: int | str) -> LinkStatistics:
        """Return a frozen copy, with the ``current`` values filled in."""
        values: dict[str, int | str] = {name: getattr(self, name) for name in self.__slots__}
        values.update(current)
        return LinkStatistics(**values)  # type: ignore[arg-type]
