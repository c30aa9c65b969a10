"""Interrupt lines: level-triggered wires with listeners, and OR-ed shared lines.

An ``IrqLine`` is QEMU's ``qemu_irq`` with its state kept on the wire: a
device drives it with ``set_level``; whoever listens (an interrupt
controller, a CPU model, a test, a link that forwards interrupts to a peer)
is called on every change of level. A ``SharedIrqLine`` is a wire driven by
several sources at once (PCI INTx sharing, wired-OR): its level is the OR of
its inputs.

A device never calls into a CPU: it only moves a line.

Concurrency: lines are changed with the machine lock held (from MMIO
callbacks, timers and config writes); listeners run synchronously under it
and must not block.
"""

from __future__ import annotations

from collections.abc import Callable

from memexpose.errors import HwModelError

__all__ = ["IrqLine", "IrqListener", "SharedIrqLine"]

IrqListener = Callable[[bool], None]
"""A listener: called with the new level (``True`` = asserted) on each change."""


class IrqLine:
    """A level-triggered interrupt line.

    Args:
        name: a label for messages and ``repr``.

    Invariants:
        * ``level`` is a bool and changes only through ``set_level``;
        * listeners are called once per change, in registration order, with
          the new level; setting the level it already has calls nobody.
    """

    __slots__ = ("_level", "_listeners", "_notifying", "name", "raises")

    def __init__(self, name: str) -> None:
        self.name = name
        self._level = False
        self._listeners: list[IrqListener] = []
        self._notifying = False
        self.raises = 0
        """How many times the line went from low to high (statistics)."""

    @property
    def level(self) -> bool:
        """Whether the line is asserted."""
        return self._level

    def set_level(self, level: bool | int) -> None:
        """Drive the line to ``level`` (truthy = asserted); notify listeners on a change.

        Machine lock held.
        """
        level = bool(level)
        if level == self._level:
            return
        self._level = level
        if level:
            self.raises += 1
        for listener in self._listeners:
            listener(level)

    def raise_irq(self) -> None:
        """Assert the line (QEMU's ``qemu_irq_raise``)."""
        self.set_level(True)

    def lower_irq(self) -> None:
        """Deassert the line (QEMU's ``qemu_irq_lower``)."""
        self.set_level(False)

    def pulse(self) -> None:
        """Raise, then lower: an edge for edge-triggered consumers."""
        self.set_level(True)
        self.set_level(False)

    def add_listener(self, listener: IrqListener) -> None:
        """Call ``listener(level)`` on every future change of level."""
        if not callable(listener):
            raise TypeError(f"IRQ line {self.name!r}: listener must be callable")
        self._listeners.append(listener)

    def remove_listener(self, listener: IrqListener) -> None:
        """Stop calling ``listener``.

        Raises:
            HwModelError: ``listener`` is not registered on this line.
        """
        for i, existing in enumerate(self._listeners):
            if existing == listener:
                del self._listeners[i]
                return
        raise HwModelError(f"IRQ line {self.name!r}: listener {listener!r} is not registered")

    def connect(self, sink: IrqLine) -> None:
        """Forward this line to ``sink``: ``sink`` follows every change from now on.

        ``sink`` takes the current level at once.
        """
        if sink is self:
            raise HwModelError(f"IRQ line {self.name!r} cannot be connected to itself")
        self.add_listener(sink.set_level)
        sink.set_level(self._level)

    def statistics(self) -> dict[str, object]:
        """Return ``{"level", "raises", "listeners"}``."""
        return {"level": self._level, "raises": self.raises, "listeners": len(self._listeners)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'high' if self._level else 'low'}>"


class SharedIrqLine(IrqLine):
    """A line driven by several sources; its level is the OR of their levels.

    Create one input per source with ``new_input``; each input is an
    ``IrqLine`` the source drives as its own. Driving the shared line
    directly raises ``HwModelError``: it has no level of its own.

    Invariants:
        * ``asserted`` counts the inputs that are high;
        * ``level == (asserted > 0)``.
    """

    __slots__ = ("_inputs", "asserted")

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._inputs: list[IrqLine] = []
        self.asserted = 0

    def new_input(self, name: str | None = None) -> IrqLine:
        """Return a new input line; its changes are OR-ed into this line."""
        line = IrqLine(name or f"{self.name}[{len(self._inputs)}]")
        line.add_listener(self._input_changed)
        self._inputs.append(line)
        return line

    @property
    def inputs(self) -> tuple[IrqLine, ...]:
        """The inputs, in creation order."""
        return tuple(self._inputs)

    def _input_changed(self, level: bool) -> None:
        self.asserted += 1 if level else -1
        IrqLine.set_level(self, self.asserted > 0)

    def set_level(self, level: bool | int) -> None:
        """Refuse: a shared line follows its inputs.

        Raises:
            HwModelError: always; drive an input from ``new_input`` instead.
        """
        raise HwModelError(
            f"shared IRQ line {self.name!r} is the OR of its inputs; drive one of them "
            f"(line.new_input()) instead of setting it")

    def _check_invariants(self) -> None:
        assert self.asserted == sum(1 for i in self._inputs if i.level), self
        assert self._level == (self.asserted > 0), self
