"""VirtualClock and Timer: deterministic virtual time."""

from __future__ import annotations

import pytest

from memexpose.errors import HwModelError
from memexpose.hw import VirtualClock


def test_timers_fire_in_order_at_their_time() -> None:
    clock = VirtualClock()
    fired: list[tuple[str, int]] = []
    a = clock.new_timer(lambda: fired.append(("a", clock.now_ns)), "a")
    b = clock.new_timer(lambda: fired.append(("b", clock.now_ns)), "b")
    b.mod(200)
    a.mod(100)
    assert clock.deadline_ns() == 100
    assert clock.step(150) == 150
    assert fired == [("a", 100)]
    assert b.pending and not a.pending
    clock.step(1000)
    assert fired == [("a", 100), ("b", 200)]
    assert clock.now_ns == 1150
    assert clock.deadline_ns() is None


def test_mod_replaces_and_delete_disarms() -> None:
    clock = VirtualClock()
    fired: list[int] = []
    t = clock.new_timer(lambda: fired.append(clock.now_ns))
    t.mod(100)
    t.mod(300)
    clock.step(200)
    assert fired == []
    t.delete()
    clock.step(1000)
    assert fired == []
    t.mod_in(5)
    clock.step(5)
    assert fired == [1205]
    assert "idle" in repr(t)


def test_step_none_goes_to_next_deadline() -> None:
    clock = VirtualClock()
    clock.step(None)
    assert clock.now_ns == 0
    fired: list[int] = []
    t = clock.new_timer(lambda: fired.append(clock.now_ns))
    t.mod(50)
    clock.step()
    assert fired == [50] and clock.now_ns == 50


def test_callback_can_rearm_but_not_step() -> None:
    clock = VirtualClock()
    count = []
    t = clock.new_timer(lambda: (count.append(1), t.mod_in(10) if len(count) < 3 else None))
    t.mod(10)
    clock.step(100)
    assert len(count) == 3
    bad = clock.new_timer(lambda: clock.step(1))
    bad.mod_in(0)
    with pytest.raises(HwModelError, match="from a timer"):
        clock.step(0)
    with pytest.raises(HwModelError):
        clock.step(-1)
    with pytest.raises(HwModelError):
        t.mod_in(-5)
