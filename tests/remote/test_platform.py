"""RemotePlatform: the device's view of guest RAM, replaced by each RAM map."""

from __future__ import annotations

import os

import pytest

from memexpose.devices import EduDevice
from memexpose.errors import ConfigError, ProtocolError
from memexpose.remote import RemotePlatform

from .helpers import open_fds

pytestmark = pytest.mark.timeout(10)


def _memfd(size: int, fill: bytes = b"") -> int:
    fd = os.memfd_create("guest-ram")
    os.ftruncate(fd, size)
    if fill:
        os.pwrite(fd, fill, 0)
    return fd


def test_ram_map_is_the_dma_target_and_superseded_fds_are_closed() -> None:
    before = open_fds()
    plat = RemotePlatform()
    edu = plat.plug(EduDevice(plat.clock))
    backing = _memfd(0x200000, b"hello")
    first = [os.dup(backing), os.dup(backing)]
    assert plat.set_ram_map([(0x100000, 0x100000, 0x100000), (0, 0xC0000, 0)], first)
    plat._check_invariants()
    assert plat.ram_map() == [(0, 0xC0000, 0), (0x100000, 0x100000, 0x100000)]
    edu.config_write(0x04, 0x0004, 2)  # bus mastering on
    data, result = edu.dma_read(0, 5)
    assert (data, result) == (b"hello", 0)
    edu.dma_write(0x100000 + 8, b"dma!")
    assert os.pread(backing, 4, 0x100008) == b"dma!"  # zero copy into the VM's RAM
    # The same map again: mappings kept, the new fds closed at once.
    again = [os.dup(backing), os.dup(backing)]
    assert not plat.set_ram_map([(0, 0xC0000, 0), (0x100000, 0x100000, 0x100000)], again)
    for fd in again:
        with pytest.raises(OSError):
            os.fstat(fd)
    # A new map: the old mappings and their fds go.
    assert plat.set_ram_map([(0, 0x200000, 0)], [os.dup(backing)])
    for fd in first:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert edu.dma_read(0x180000, 2)[1] == 0
    assert plat.ram_syncs == 2
    plat.close()
    os.close(backing)
    assert open_fds() == before


@pytest.mark.parametrize(("entries", "error"), [
    ([(0, 0x2000, 0), (0x1000, 0x2000, 0)], "overlap"),
    ([(0, 0, 0)], "empty"),
    ([((1 << 64) - 0x1000, 0x2000, 0)], "outside"),
    ([(0, 0x1000, 0x10000000)], "cannot map"),
])
def test_a_bad_ram_map_is_refused_and_keeps_the_old_one(entries: list[tuple[int, int, int]],
                                                        error: str) -> None:
    plat = RemotePlatform()
    plat.plug(EduDevice(plat.clock))
    backing = _memfd(0x4000)
    plat.set_ram_map([(0, 0x4000, 0)], [os.dup(backing)])
    before = open_fds()
    fds = [os.dup(backing) for _ in entries]
    with pytest.raises(ProtocolError, match=error):
        plat.set_ram_map(entries, fds)
    assert open_fds() == before - set(fds)
    assert plat.ram_map() == [(0, 0x4000, 0)]
    plat._check_invariants()
    plat.close()
    os.close(backing)


def test_fds_must_match_entries_and_be_mappable() -> None:
    plat = RemotePlatform()
    r, w = os.pipe()
    with pytest.raises(ProtocolError, match="2 regions came with 1 fds"):
        plat.set_ram_map([(0, 0x1000, 0), (0x1000, 0x1000, 0)], [r])
    with pytest.raises(ProtocolError, match="cannot map"):
        plat.set_ram_map([(0, 0x1000, 0)], [w])
    plat.close()


def test_one_device_per_platform() -> None:
    plat = RemotePlatform("p")
    plat.plug(EduDevice(plat.clock))
    with pytest.raises(ConfigError, match="one server process per device"):
        plat.plug(EduDevice(plat.clock))
    assert "edu" in repr(plat)
    plat.close()
    plat.close()  # idempotent
