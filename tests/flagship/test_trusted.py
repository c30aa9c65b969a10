"""The trusted OS (firmware/trusted, AArch64) serving calls from a CPU-less rich peer.

Each test runs ``examples/trusted.toml`` in the test process and calls it
over a real memexpose link, as the rich VM's driver would: one interrupt
per call (type = function id, x1 = message argument, x2 = call id), buffers
in the peer's RAM, reached by the trusted OS at window base + physical
address.
"""

from __future__ import annotations

import os

import pytest

from memexpose.machine import MxteeFunction, TeeStatus, siphash24
from memexpose.machine.flagship import MXTEE_API_VERSION, MXTEE_PUBLIC_MAGIC
from memexpose.memory import MemTxResult

from .helpers import FAKE_RAM, FakeRich, TrustedVm

pytestmark = pytest.mark.timeout(60)

F = MxteeFunction
S = TeeStatus


def store(rich: FakeRich, key: int, data: bytes) -> tuple[int, int, int]:
    buf = rich.payload(data)
    msg = rich.message(F.STORE, key=key, buf=buf, length=len(data))
    status, value, _ = rich.call(F.STORE, msg)
    return status, value, msg


def load(rich: FakeRich, key: int, capacity: int) -> tuple[int, int, bytes, int]:
    buf = rich.alloc(capacity + 8)
    msg = rich.message(F.LOAD, key=key, buf=buf, length=capacity)
    status, value, _ = rich.call(F.LOAD, msg)
    return status, value, rich.read(buf, value if status == S.SUCCESS else 0), msg


def sign(rich: FakeRich, data: bytes, misalign: int = 0) -> tuple[int, int, int]:
    buf = rich.payload(data, misalign)
    msg = rich.message(F.SIGN, buf=buf, length=len(data))
    status, value, _ = rich.call(F.SIGN, msg)
    return status, value, msg


def test_version(rich: FakeRich, trusted: TrustedVm) -> None:
    status, value, _ = rich.call(F.VERSION)
    assert (status, value) == (S.SUCCESS, MXTEE_API_VERSION)
    trusted.wait_console("call 1 VERSION -> ok")


@pytest.mark.parametrize("function", [0xF200_00EE, 0x8400_0000, 0, (1 << 63) - 1])
def test_unknown_function_is_not_supported_and_touches_nothing(
        rich: FakeRich, trusted: TrustedVm, function: int) -> None:
    msg = rich.message(F.STORE, key=7, buf=rich.payload(b"x" * 8), length=8)
    before = rich.read(msg, 48)
    status, value, _ = rich.call(function, msg)
    assert (status, value) == (S.NOT_SUPPORTED, 0)  # SMCCC's -1
    assert rich.read(msg, 48) == before
    assert trusted.stats()["unknown"] == 1
    assert store(rich, 7, b"y")[0] == S.SUCCESS  # still serving


@pytest.mark.parametrize("size", [0, 1, 7, 8, 4096, 65536])
def test_load_returns_what_store_put(rich: FakeRich, size: int) -> None:
    data = os.urandom(size)
    status, value, msg = store(rich, 0x1001, data)
    assert (status, value) == (S.SUCCESS, size)
    assert (rich.msg(msg).ret, rich.msg(msg).out) == (S.SUCCESS, size)
    status, value, loaded, msg = load(rich, 0x1001, 65536)
    assert (status, value, loaded) == (S.SUCCESS, size, data)
    assert rich.msg(msg).out == size


def test_store_replaces_and_keys_are_separate(rich: FakeRich) -> None:
    assert store(rich, 1, b"first")[0] == S.SUCCESS
    assert store(rich, 2, b"other")[0] == S.SUCCESS
    assert store(rich, 1, b"second, longer")[0] == S.SUCCESS
    assert load(rich, 1, 64)[2] == b"second, longer"
    assert load(rich, 2, 64)[2] == b"other"


def test_load_errors(rich: FakeRich) -> None:
    assert load(rich, 0x9999, 64)[:2] == (S.ITEM_NOT_FOUND, 0)
    store(rich, 5, bytes(100))
    status, value, loaded, msg = load(rich, 5, 99)
    assert (status, value, loaded) == (S.SHORT_BUFFER, 100, b"")  # says what is needed
    assert (rich.msg(msg).ret, rich.msg(msg).out) == (S.SHORT_BUFFER, 100)
    assert load(rich, 0, 64)[0] == S.BAD_PARAMETERS


def test_store_errors(rich: FakeRich) -> None:
    assert store(rich, 0, b"no key")[0] == S.BAD_PARAMETERS
    assert store(rich, 1, bytes(65537))[0] == S.BAD_PARAMETERS
    for key in range(1, 9):
        assert store(rich, key, bytes([key]))[0] == S.SUCCESS
    assert store(rich, 9, b"ninth")[:2] == (S.OUT_OF_MEMORY, 0)  # 8 slots
    assert store(rich, 8, b"replacing is fine")[0] == S.SUCCESS


def test_bad_messages_are_refused(rich: FakeRich) -> None:
    # the message outside the rich RAM, misaligned, or for another function
    assert rich.call(F.SIGN, FAKE_RAM - 8)[:2] == (S.BAD_PARAMETERS, 0)
    assert rich.call(F.SIGN, 0x7FFF_FFFF_F000)[:2] == (S.BAD_PARAMETERS, 0)
    msg = rich.message(F.SIGN, buf=rich.payload(b"abc"), length=3)
    assert rich.call(F.SIGN, msg + 4)[:2] == (S.BAD_PARAMETERS, 0)
    assert rich.call(F.STORE, msg)[:2] == (S.BAD_PARAMETERS, 0)  # cmd says SIGN
    # a payload that runs past the rich RAM
    msg = rich.message(F.SIGN, buf=FAKE_RAM - 16, length=17)
    assert rich.call(F.SIGN, msg)[:2] == (S.BAD_PARAMETERS, 0)
    assert rich.msg(msg).ret == S.BAD_PARAMETERS
    msg = rich.message(F.STORE, key=3, buf=(1 << 64) - 8, length=16)  # wraps
    assert rich.call(F.STORE, msg)[:2] == (S.BAD_PARAMETERS, 0)


@pytest.mark.parametrize(("size", "misalign"), [(0, 0), (1, 0), (7, 0), (8, 0), (9, 5),
                                                (1000, 3), (65536, 0)])
def test_sign_is_siphash_under_the_trusted_key(rich: FakeRich, trusted: TrustedVm,
                                               size: int, misalign: int) -> None:
    data = os.urandom(size)
    status, value, msg = sign(rich, data, misalign)
    assert status == S.SUCCESS
    assert value == siphash24(trusted.key, data)
    assert rich.msg(msg).out == value  # written back into the rich buffer
    assert sign(rich, data)[1] == value
    assert sign(rich, data + b"!")[1] != value


def test_key_exists_only_in_trusted_ram(rich: FakeRich, trusted: TrustedVm) -> None:
    key = trusted.key
    assert len(set(key)) > 4  # derived at boot, not zero
    # the rich side's window shows the public page and nothing past it
    data, result = rich.endpoint.read_bytes(0, 8)
    assert (int.from_bytes(data, "little"), result) == (MXTEE_PUBLIC_MAGIC, MemTxResult.OK)
    data, result = rich.endpoint.read_bytes(0x1000, 8)
    assert result == MemTxResult.DECODE_ERROR and data == bytes(8)
    assert rich.endpoint.write_bytes(0x1000, b"overwrite") == MemTxResult.DECODE_ERROR
    assert rich.endpoint.importer.limit == 0x1000


def test_after_the_first_call_buffers_are_reached_directly(rich: FakeRich,
                                                           trusted: TrustedVm) -> None:
    endpoint = trusted.device.endpoint

    def forwarded() -> int:
        s = endpoint.statistics()
        return s.forwarded_reads + s.forwarded_writes + s.forwarded_block_reads \
            + s.forwarded_block_writes

    assert forwarded() == 0
    store(rich, 1, bytes(4096))
    first = forwarded()
    assert 1 <= first <= 4
    stats = endpoint.statistics()
    assert stats.direct_mappings == 1 and stats.direct_bytes == FAKE_RAM
    for size in (16, 4096, 65536):
        sign(rich, os.urandom(size))
        load(rich, 1, 4096)
    assert forwarded() == first
    assert trusted.stats()["ns_read_bytes"] > 65536
