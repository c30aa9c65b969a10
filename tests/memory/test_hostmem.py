"""Tests for memexpose.memory.hostmem: the bytes behind RAM and ROM."""

from __future__ import annotations

import mmap
import os

import pytest

from memexpose.errors import HostMemoryError
from memexpose.memory import HostMemory, HostMemoryKind

PAGE = mmap.PAGESIZE


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_memfd_is_shareable_and_a_second_mapping_sees_the_same_bytes() -> None:
    with HostMemory.memfd("shm0", 2 * PAGE) as mem:
        assert mem.kind is HostMemoryKind.MEMFD
        assert mem.shareable and mem.fd is not None
        assert len(mem.view) == 2 * PAGE and mem.size == 2 * PAGE
        mem.view[0:4] = b"\x11\x22\x33\x44"
        # A peer would get the fd over a socket; /proc/self/fd is the same file.
        fd2 = os.open(f"/proc/self/fd/{mem.fd}", os.O_RDWR)
        try:
            other = mmap.mmap(fd2, 2 * PAGE, flags=mmap.MAP_SHARED)
            try:
                assert other[0:4] == b"\x11\x22\x33\x44"
                other[PAGE + 7] = 0x5A
                assert mem.view[PAGE + 7] == 0x5A
            finally:
                other.close()
        finally:
            os.close(fd2)
        # And a second mmap of the very same fd.
        third = mmap.mmap(mem.fd, PAGE, flags=mmap.MAP_SHARED)
        try:
            assert third[0:4] == b"\x11\x22\x33\x44"
        finally:
            third.close()


def test_memfd_host_address_points_at_the_mapping() -> None:
    import ctypes

    with HostMemory.memfd("ram", PAGE) as mem:
        mem.view[10] = 0xAB
        addr = mem.host_address()
        assert ctypes.c_ubyte.from_address(addr + 10).value == 0xAB


def test_anonymous_memory_is_not_shareable() -> None:
    with HostMemory.anonymous("anon", PAGE) as mem:
        assert mem.kind is HostMemoryKind.ANONYMOUS
        assert not mem.shareable
        assert mem.fd is None
        mem.view[0] = 1
        assert mem.view[0] == 1
        with pytest.raises(HostMemoryError):
            mem.seal_future_writes()


def test_file_memory_maps_the_file_shared(tmp_path) -> None:
    path = tmp_path / "nv.img"
    with HostMemory.file("nv1", path, PAGE) as mem:
        assert mem.kind is HostMemoryKind.FILE
        assert mem.shareable
        assert os.path.getsize(path) == PAGE  # grown to the size
        mem.view[0:5] = b"hello"
    assert path.read_bytes()[:5] == b"hello"
    # Mapping it again sees the persisted bytes.
    with HostMemory.file("nv1", path, PAGE, readonly=True) as again:
        assert again.readonly
        assert bytes(again.view[:5]) == b"hello"
        with pytest.raises(TypeError):
            again.view[0] = 0  # read-only mapping


def test_file_memory_missing_file_read_only_is_refused(tmp_path) -> None:
    with pytest.raises(HostMemoryError):
        HostMemory.file("x", tmp_path / "absent", PAGE, readonly=True)


def test_foreign_fd_mapped_at_a_non_page_aligned_offset() -> None:
    with HostMemory.memfd("src", 3 * PAGE) as src:
        for i in range(3 * PAGE):
            src.view[i] = i % 251
        offset = PAGE + 100
        mem = HostMemory.foreign("peer", os.dup(src.fd), PAGE, offset=offset)
        try:
            assert mem.kind is HostMemoryKind.FOREIGN
            assert mem.fd_offset == offset
            assert len(mem.view) == PAGE
            assert mem.view[0] == offset % 251
            assert bytes(mem.view[:16]) == bytes(src.view[offset:offset + 16])
            mem.view[PAGE - 1] = 0xEE
            assert src.view[offset + PAGE - 1] == 0xEE
            # host_address accounts for the in-page offset too.
            import ctypes

            assert ctypes.c_ubyte.from_address(mem.host_address()).value == offset % 251
        finally:
            mem.close()


def test_foreign_mapping_failure_closes_the_fd_and_raises() -> None:
    with HostMemory.memfd("src", PAGE) as src:
        ro_fd = os.open(f"/proc/self/fd/{src.fd}", os.O_RDONLY)
        with pytest.raises(HostMemoryError):
            HostMemory.foreign("peer", ro_fd, PAGE)  # read-only fd, writable mapping
        assert not _fd_is_open(ro_fd)


def test_seal_future_writes_forbids_new_writable_mappings() -> None:
    with HostMemory.memfd("ro-share", PAGE) as mem:
        mem.view[0] = 7
        mem.seal_future_writes()
        with pytest.raises(PermissionError):
            mmap.mmap(mem.fd, PAGE, flags=mmap.MAP_SHARED,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
        # A read-only mapping still works and sees our (still writable) mapping.
        ro = mmap.mmap(mem.fd, PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        try:
            mem.view[1] = 8
            assert ro[0:2] == b"\x07\x08"
        finally:
            ro.close()
        # A peer mapping it writable through HostMemory gets HostMemoryError.
        with pytest.raises(HostMemoryError):
            HostMemory.foreign("peer", os.dup(mem.fd), PAGE)
        # The size is sealed too.
        with pytest.raises(OSError):
            os.ftruncate(mem.fd, 2 * PAGE)


def test_close_releases_mapping_and_fd_exactly_once() -> None:
    mem = HostMemory.memfd("once", PAGE)
    fd = mem.fd
    assert _fd_is_open(fd)
    mem.close()
    assert mem.closed
    assert mem.view is None and mem.fd is None
    assert not _fd_is_open(fd)
    # Reuse the number: a second close must not close someone else's fd.
    r, w = os.pipe()
    try:
        mem.close()
        assert _fd_is_open(r) and _fd_is_open(w)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(HostMemoryError):
        mem.host_address()


def test_close_with_a_live_export_does_not_raise() -> None:
    mem = HostMemory.memfd("busy", PAGE)
    fd = mem.fd
    mem.host_address()  # a ctypes export of the mmap
    mem.close()
    assert mem.closed
    assert not _fd_is_open(fd)


@pytest.mark.parametrize("size", [0, -1])
def test_non_positive_size_is_refused(tmp_path, size: int) -> None:
    with pytest.raises(HostMemoryError):
        HostMemory.memfd("zero", size)
    with pytest.raises(HostMemoryError):
        HostMemory.anonymous("zero", size)
    with pytest.raises(HostMemoryError):
        HostMemory.file("zero", tmp_path / "z", size)


def test_zero_size_foreign_closes_the_fd() -> None:
    with HostMemory.memfd("src", PAGE) as src:
        fd = os.dup(src.fd)
        with pytest.raises(HostMemoryError):
            HostMemory.foreign("peer", fd, 0)
        assert not _fd_is_open(fd)


def test_repr_names_kind_and_state() -> None:
    mem = HostMemory.anonymous("r", PAGE)
    assert "anonymous" in repr(mem) and "'r'" in repr(mem)
    mem.close()
    assert "closed" in repr(mem)


def test_pin_keeps_pages_mapped_across_close() -> None:
    import ctypes

    from memexpose.memory import HostMemory

    hm = HostMemory.memfd("pinned", 4096)
    hm.view[0:4] = b"\x01\x02\x03\x04"
    pin = hm.pin()
    hm.close()
    assert hm.closed and hm.fd is None
    # The CPU's mapping still reads the old pages: nothing was unmapped.
    assert ctypes.string_at(pin.address, 4) == b"\x01\x02\x03\x04"
    pin.release()
    pin.release()
    assert pin.released
