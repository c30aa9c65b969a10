"""Fixtures for the machine tests (helpers live in ``helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memexpose.machine import Arch

from .helpers import Rig


@pytest.fixture(params=[Arch.AARCH64, Arch.X86_64], ids=["aarch64", "x86_64"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A ``Rig`` for each of the two main architectures."""
    r = Rig(request.param)
    yield r
    r.close()


@pytest.fixture
def a64() -> Iterator[Rig]:
    """An AArch64 ``Rig``."""
    r = Rig(Arch.AARCH64)
    yield r
    r.close()


@pytest.fixture
def x64() -> Iterator[Rig]:
    """An x86_64 ``Rig``."""
    r = Rig(Arch.X86_64)
    yield r
    r.close()
