"""The loader: ELF and raw images, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from memexpose.errors import LoaderError
from memexpose.machine import Arch, load_elf, load_image, load_raw

from .helpers import Rig, firmware


def test_elf_segments_land_in_ram(a64: Rig) -> None:
    image = load_elf(a64.memory, firmware("hello-aarch64.elf"), Arch.AARCH64, cpu=a64.cpu)
    assert image.kind == "elf" and image.entry == 0x4008_0000
    assert image.segments and image.end > image.entry
    first, _ = a64.memory.read(image.entry, 4)
    assert first != 0


def test_wrong_architecture_is_named(a64: Rig) -> None:
    with pytest.raises(LoaderError, match=r"hello-x86_64\.elf is an x86-64 ELF.*aarch64") as e:
        load_elf(a64.memory, firmware("hello-x86_64.elf"), Arch.AARCH64)
    assert e.value.path is not None and e.value.path.endswith("hello-x86_64.elf")


def test_missing_file_is_named(a64: Rig, tmp_path: Path) -> None:
    missing = tmp_path / "nope.elf"
    with pytest.raises(LoaderError, match="nope.elf' not found"):
        load_image(a64.memory, missing, Arch.AARCH64)


def test_raw_image_needs_an_address(a64: Rig, tmp_path: Path) -> None:
    raw = tmp_path / "code.bin"
    raw.write_bytes(b"\x00\x00\x40\xd4")  # hlt #0
    with pytest.raises(LoaderError, match="give the address"):
        load_image(a64.memory, raw, Arch.AARCH64)
    image = load_image(a64.memory, raw, Arch.AARCH64, addr=0x4000_1000, cpu=a64.cpu)
    assert (image.kind, image.entry) == ("raw", 0x4000_1000)
    assert a64.memory.read(0x4000_1000, 4)[0] == 0xD440_0000


def test_image_outside_ram_is_refused(a64: Rig, tmp_path: Path) -> None:
    raw = tmp_path / "code.bin"
    raw.write_bytes(bytes(16))
    with pytest.raises(LoaderError, match=r"0x8000000 is nothing"):
        load_raw(a64.memory, raw, 0x0800_0000)
    with pytest.raises(LoaderError, match="do not fit"):
        load_raw(a64.memory, raw, a64.ram_base + a64.ram.size - 8)


def test_not_an_elf_but_asked_as_one(a64: Rig, tmp_path: Path) -> None:
    junk = tmp_path / "junk.elf"
    junk.write_bytes(b"hello")
    with pytest.raises(LoaderError, match="not an ELF"):
        load_elf(a64.memory, junk, Arch.AARCH64)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(LoaderError, match="empty"):
        load_raw(a64.memory, empty, 0x4000_0000)
