"""memexpose.link.interrupts, and interrupts between two processes."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from memexpose.link import InterruptQueue

pytestmark = pytest.mark.timeout(60)


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


# -- the queue ------------------------------------------------------------------


def test_queue_is_fifo_and_counts_drops() -> None:
    q = InterruptQueue(3)
    assert [q.push(i, bytes([i]) * 128) for i in range(5)] == [True, True, True, False, False]
    assert (q.received, q.dropped, len(q)) == (5, 2, 3)
    assert [q.pop().type for _ in range(3)] == [0, 1, 2]
    assert q.pop() is None
    q._check_invariants()


def test_level_callback_fires_on_transitions_only() -> None:
    levels: list[bool] = []
    q = InterruptQueue(4, levels.append)
    q.push(1, bytes(128))
    q.push(2, bytes(128))
    q.update_level()
    q.update_level()
    assert levels == [True]
    q.pop()
    assert levels == [True]
    q.pop()
    assert levels == [True, False]
    q.push(3, bytes(128))
    q.update_level()
    q.clear()
    assert levels == [True, False, True, False]


def test_queue_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InterruptQueue(0)


# -- two processes ------------------------------------------------------------------


def test_two_interrupts_arrive_in_order(pair) -> None:
    me, other = pair()
    assert other.call("send_irq", 0x1, (0xDEADBEA7).to_bytes(8, "little"))
    assert other.call("send_irq", 0x2, (0xDEADBABA).to_bytes(8, "little"))
    wait_for(lambda: me.ep.pending_interrupts == 2)
    first = me.ep.pop_interrupt()
    second = me.ep.pop_interrupt()
    assert (first.type, first.data[:8]) == (1, (0xDEADBEA7).to_bytes(8, "little"))
    assert (second.type, second.data[:8]) == (2, (0xDEADBABA).to_bytes(8, "little"))
    assert me.ep.pop_interrupt() is None
    assert me.irq_levels == [True, False]
    assert other.call("stats")["interrupts_sent"] == 2


def test_26_interrupts_into_a_queue_of_16_keep_the_first_16_and_count_drops(pair) -> None:
    me, other = pair()
    items = [(i, i.to_bytes(8, "little")) for i in range(26)]
    assert other.call("send_irqs", items) == 26
    wait_for(lambda: me.ep.statistics().interrupts_received == 26)
    got = []
    while (msg := me.ep.pop_interrupt()) is not None:
        got.append((msg.type, int.from_bytes(msg.data[:8], "little")))
    assert got == [(i, i) for i in range(16)]
    st = me.ep.statistics()
    assert (st.interrupts_received, st.interrupts_dropped, st.interrupts_pending) == (26, 10, 0)
    assert me.irq_levels == [True, False]


def test_all_128_data_bytes_arrive_and_short_payloads_are_zero_padded(pair) -> None:
    me, other = pair()
    payload = bytes(range(128))
    assert other.call("send_irq", 0, payload)
    assert other.call("send_irq", 7, b"\xff\xfe")
    wait_for(lambda: me.ep.pending_interrupts == 2)
    assert me.ep.pop_interrupt().data == payload
    short = me.ep.pop_interrupt()
    assert short.type == 7 and short.data == b"\xff\xfe" + bytes(126)


def test_interrupts_flow_both_ways(pair) -> None:
    me, other = pair()
    assert me.ep.send_interrupt(0xFFFF_FFFF_FFFF_FFFF, b"to the peer")
    deadline = time.monotonic() + 5
    while (got := other.call("pop_irq")) is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert got == (0xFFFF_FFFF_FFFF_FFFF, b"to the peer" + bytes(117))
    assert other.call("irq_levels") == [True, False]


def test_sending_when_disconnected_returns_false_and_bad_arguments_raise(pair) -> None:
    me, other = pair(enable=False)
    assert me.ep.send_interrupt(1, b"x") is False
    with pytest.raises(ValueError, match="at most 128"):
        me.ep.send_interrupt(1, bytes(129))
    with pytest.raises(ValueError, match="64-bit"):
        me.ep.send_interrupt(1 << 64)


def test_the_level_rises_as_soon_as_a_busy_machine_lock_is_released(pair) -> None:
    # An interrupt that finds the machine lock busy is reported by the server
    # thread, which takes the lock the moment the holder lets go: no polling
    # retry (the interrupt thread used to retry every 5 ms), and never
    # without the lock.
    me, other = pair()
    queue = me.ep.interrupt_queue
    raised = threading.Event()
    reports: list[tuple[bool, float, bool]] = []

    def on_level(level: bool) -> None:
        reports.append((level, time.perf_counter(), me.lock._is_owned()))
        if level:
            raised.set()

    queue.on_level = on_level
    delays = []
    for i in range(25):
        raised.clear()
        with me.lock:  # a vCPU in an MMIO callback, say
            assert other.call("send_irq", i, b"busy")
            wait_for(lambda: len(queue) == 1)
            # Let the interrupt thread find the lock busy; release at phases
            # spread over 5 ms (a polling retry would show its period).
            time.sleep(0.01 + (i % 5) * 0.001)
            assert not raised.is_set()
            released = time.perf_counter()
        assert raised.wait(2.0), "the level was not reported after the lock was released"
        delays.append(reports[-1][1] - released)
        assert me.ep.pop_interrupt().type == i
    assert all(held for _, _, held in reports), "a level was reported without the lock"
    assert [level for level, _, _ in reports] == [True, False] * 25
    assert statistics.median(delays) < 0.001, f"delays (s): {sorted(delays)}"


def test_a_level_held_back_by_the_lock_is_still_reported_when_the_link_ends(pair) -> None:
    me, other = pair()
    with me.lock:
        assert other.call("send_irq", 5, b"late")
        wait_for(lambda: me.ep._session._level_due)  # handed to the server thread
        me.ep.disable()  # as a device's ENABLE = 0: the server thread never got the lock
        assert me.irq_levels == [True]
    msg = me.ep.pop_interrupt()  # the entry stays, and so did its level
    assert (msg.type, msg.data[:4]) == (5, b"late") and me.irq_levels == [True, False]
