"""Loading guest images: ELF files (pyelftools) and raw binaries.

The loader writes through ``AddressSpace.write_rom`` (so it can fill ROM),
after checking that every byte lands in RAM or ROM; then it drops any
translated code for the range (Unicorn would otherwise run stale
translations of whatever was there before).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from memexpose.errors import LoaderError
from memexpose.machine.cpu import Arch, UnicornCPU
from memexpose.memory import AddressSpace

__all__ = ["LoadedImage", "load_elf", "load_image", "load_raw"]

_ELF_MAGIC = b"\x7fELF"
_MACHINE_NAMES = {"EM_AARCH64": "AArch64", "EM_X86_64": "x86-64", "EM_ARM": "ARM",
                  "EM_386": "i386", "EM_RISCV": "RISC-V"}


@dataclass(frozen=True)
class LoadedImage:
    """What a loader put into guest memory.

    Attributes:
        path: the file.
        kind: ``"elf"`` or ``"raw"``.
        entry: the address to start at.
        segments: ``(addr, size)`` of every range written (size includes bss).
    """

    path: str
    kind: str
    entry: int
    segments: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        """One past the highest byte written."""
        return max(addr + size for addr, size in self.segments) if self.segments else 0


def _check_target(as_: AddressSpace, addr: int, size: int, path: str) -> None:
    """Raise unless ``[addr, addr + size)`` lies wholly in RAM or ROM."""
    pos = addr
    end = addr + size
    while pos < end:
        fr = as_.find_flat_range(pos)
        if fr is None or not (fr.mr.ram or fr.mr.rom_device):
            what = "nothing" if fr is None else f"{fr.mr.name!r} ({fr.mr.kind_name()})"
            raise LoaderError(
                f"{path}: bytes {addr:#x}-{end - 1:#x} do not fit in RAM or ROM: {pos:#x} is "
                f"{what}; link the image for this board's RAM (see docs/machine.md)",
                path=path)
        pos = fr.end


def _write(as_: AddressSpace, cpu: UnicornCPU | None, addr: int, data: bytes, size: int,
           path: str) -> None:
    _check_target(as_, addr, size, path)
    as_.write_rom(addr, data)
    if size > len(data):
        as_.write_rom(addr + len(data), bytes(size - len(data)))
    if cpu is not None:
        cpu.invalidate_code(addr, size)


def _read(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    name = os.fspath(path)
    try:
        return name, Path(name).read_bytes()
    except FileNotFoundError:
        raise LoaderError(f"firmware file {name!r} not found", path=name) from None
    except OSError as exc:
        raise LoaderError(f"cannot read firmware file {name!r}: {exc.strerror}",
                          path=name) from exc


def load_elf(as_: AddressSpace, path: str | os.PathLike[str], arch: Arch, *,
             cpu: UnicornCPU | None = None) -> LoadedImage:
    """Load the ``PT_LOAD`` segments of an ELF executable at their physical addresses.

    Args:
        as_: the address space to write into.
        path: the ELF file.
        arch: the architecture the image must be built for.
        cpu: a CPU whose translated code for the loaded ranges is dropped.

    Returns:
        The image, with ``entry`` from the ELF header.

    Raises:
        LoaderError: file missing or unreadable, not an ELF executable, built
            for another architecture or byte order, or a segment outside RAM/ROM.
    """
    name, blob = _read(path)
    if not blob.startswith(_ELF_MAGIC):
        raise LoaderError(f"{name} is not an ELF file (no \\x7fELF magic); load raw "
                          "binaries with an address (load_raw, or `load_address` in the "
                          "machine configuration)", path=name)
    try:
        elf = ELFFile(io.BytesIO(blob))
        machine = elf["e_machine"]
        if machine != arch.elf_machine:
            have = _MACHINE_NAMES.get(machine, machine)
            want = _MACHINE_NAMES[arch.elf_machine]
            raise LoaderError(f"{name} is an {have} ELF, but this machine runs {want} "
                              f"({arch.value}); build the image for {arch.value}", path=name)
        if not elf.little_endian:
            raise LoaderError(f"{name} is big-endian; memexpose machines are little-endian",
                              path=name)
        if elf["e_type"] != "ET_EXEC":
            raise LoaderError(f"{name} is {elf['e_type']}, not an executable (ET_EXEC); "
                              "link it at a fixed address", path=name)
        segments = []
        for segment in elf.iter_segments():
            if segment["p_type"] != "PT_LOAD" or segment["p_memsz"] == 0:
                continue
            addr = segment["p_paddr"]
            _write(as_, cpu, addr, segment.data(), segment["p_memsz"], name)
            segments.append((addr, segment["p_memsz"]))
        entry = elf["e_entry"]
    except ELFError as exc:
        raise LoaderError(f"{name}: malformed ELF file: {exc}", path=name) from exc
    if not segments:
        raise LoaderError(f"{name} has no loadable segment (PT_LOAD)", path=name)
    return LoadedImage(name, "elf", entry, tuple(segments))


def load_raw(as_: AddressSpace, path: str | os.PathLike[str], addr: int, *,
             entry: int | None = None, cpu: UnicornCPU | None = None) -> LoadedImage:
    """Copy a raw binary to ``addr``; it starts at ``entry`` (default: ``addr``).

    Raises:
        LoaderError: file missing, unreadable or empty, or not inside RAM/ROM.
    """
    name, blob = _read(path)
    if not blob:
        raise LoaderError(f"firmware file {name!r} is empty", path=name)
    _write(as_, cpu, addr, blob, len(blob), name)
    return LoadedImage(name, "raw", addr if entry is None else entry, ((addr, len(blob)),))


def load_image(as_: AddressSpace, path: str | os.PathLike[str], arch: Arch, *,
               addr: int | None = None, cpu: UnicornCPU | None = None) -> LoadedImage:
    """Load an ELF file, or a raw binary at ``addr``, detected by its magic.

    Raises:
        LoaderError: as ``load_elf``/``load_raw``; a raw file without ``addr``.
    """
    name, blob = _read(path)
    if blob.startswith(_ELF_MAGIC):
        if addr is not None:
            raise LoaderError(f"{name} is an ELF file; it loads at its own addresses, so "
                              "drop the load address", path=name)
        return load_elf(as_, name, arch, cpu=cpu)
    if addr is None:
        raise LoaderError(f"{name} is not an ELF file; give the address to load a raw "
                          "binary at (`load_address` in the machine configuration)",
                          path=name)
    return load_raw(as_, name, addr, cpu=cpu)
