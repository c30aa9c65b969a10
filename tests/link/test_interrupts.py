"""memexpose.link.interrupts, and interrupts between two processes."""

from __future__ import annotations

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
