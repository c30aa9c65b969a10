"""Fixtures for the flagship tests: a private socket directory, a trusted VM, a rich peer.

Every fixture tears down what it started (machines closed, endpoints
closed, the socket directory removed); the repository-wide autouse
fixture checks that no child process is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from .helpers import FakeRich, TrustedVm


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short private directory for UNIX sockets (paths must stay under 108 bytes)."""
    path = tempfile.mkdtemp(prefix="mxf-")
    yield path
    leftovers = [name for name in os.listdir(path) if name.endswith(".sock")]
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"socket files left behind: {leftovers}"


@pytest.fixture
def trusted(sockdir: str) -> Iterator[TrustedVm]:
    """The example trusted VM, running, listening at ``sockdir``/link.sock."""
    vm = TrustedVm(os.path.join(sockdir, "link.sock"))
    try:
        vm.wait_console("window onto the rich RAM")
        yield vm
    finally:
        vm.close()


@pytest.fixture
def rich(trusted: TrustedVm, sockdir: str) -> Iterator[FakeRich]:
    """A CPU-less rich peer connected to ``trusted``."""
    peer = FakeRich(os.path.join(sockdir, "link.sock"))
    try:
        yield peer
    finally:
        peer.close()
