"""Flattened device tree (DTB) blobs: build one, and read one back.

The ``virt`` board describes what is present (memory, UART, PCIe host
bridge, the memexpose slot, PSCI) in a device tree that it places at the
start of RAM and passes in x0, as QEMU does for bare-metal images. The
format is the Devicetree Specification v0.4, chapter 5 (version 17).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["FdtNode", "build_fdt", "parse_fdt"]

FDT_MAGIC = 0xD00DFEED
_BEGIN_NODE, _END_NODE, _PROP, _NOP, _END = 1, 2, 3, 4, 9
_HEADER = struct.Struct(">10I")

PropValue = int | str | bytes | list[int] | list[str]


@dataclass
class FdtNode:
    """One node: a name (``"uart@9000000"``), properties in order, children in order.

    Property values: ``int`` (one 32-bit cell), ``list[int]`` (cells), ``str``
    (a NUL-terminated string), ``list[str]`` (a string list), ``bytes`` (raw).
    """

    name: str
    props: dict[str, PropValue] = field(default_factory=dict)
    children: list[FdtNode] = field(default_factory=list)

    def add(self, name: str, **props: PropValue) -> FdtNode:
        """Append a child named ``name``; property names use ``_`` for ``-`` and ``#``.

        ``address_cells=2`` becomes ``#address-cells``; ``interrupt_parent``
        becomes ``interrupt-parent``.
        """
        child = FdtNode(name, {_prop_name(k): v for k, v in props.items()})
        self.children.append(child)
        return child

    def find(self, path: str) -> FdtNode | None:
        """Return the node at ``path`` (``"/pl011@9000000"``), or None."""
        node: FdtNode | None = self
        for part in [p for p in path.split("/") if p]:
            node = next((c for c in node.children if c.name == part), None) if node else None
        return node


def _prop_name(key: str) -> str:
    if key in ("address_cells", "size_cells", "interrupt_cells"):
        return "#" + key.replace("_", "-")
    return key.replace("_", "-")


def _encode(value: PropValue) -> bytes:
    if isinstance(value, bool):
        raise TypeError("device-tree properties have no booleans; use b'' for an empty one")
    if isinstance(value, int):
        return struct.pack(">I", value)
    if isinstance(value, str):
        return value.encode() + b"\0"
    if isinstance(value, bytes):
        return value
    if all(isinstance(v, str) for v in value):
        return b"".join(v.encode() + b"\0" for v in value)  # type: ignore[union-attr]
    return b"".join(struct.pack(">I", v) for v in value)  # type: ignore[arg-type]


def build_fdt(root: FdtNode) -> bytes:
    """Return the DTB blob (version 17) for the tree under ``root`` (named ``""``)."""
    strings = bytearray()
    offsets: dict[str, int] = {}
    out = bytearray()

    def string_offset(name: str) -> int:
        if name not in offsets:
            offsets[name] = len(strings)
            strings.extend(name.encode() + b"\0")
        return offsets[name]

    def pad() -> None:
        out.extend(bytes(-len(out) % 4))

    def emit(node: FdtNode) -> None:
        out.extend(struct.pack(">I", _BEGIN_NODE))
        out.extend(node.name.encode() + b"\0")
        pad()
        for name, value in node.props.items():
            data = _encode(value)
            out.extend(struct.pack(">III", _PROP, len(data), string_offset(name)))
            out.extend(data)
            pad()
        for child in node.children:
            emit(child)
        out.extend(struct.pack(">I", _END_NODE))

    emit(root)
    out.extend(struct.pack(">I", _END))
    rsvmap = bytes(16)
    off_rsvmap = _HEADER.size
    off_struct = off_rsvmap + len(rsvmap)
    off_strings = off_struct + len(out)
    total = off_strings + len(strings)
    total += -total % 8
    header = _HEADER.pack(FDT_MAGIC, total, off_struct, off_strings, off_rsvmap, 17, 16, 0,
                          len(strings), len(out))
    blob = header + rsvmap + bytes(out) + bytes(strings)
    return blob + bytes(total - len(blob))


def parse_fdt(blob: bytes) -> FdtNode:
    """Read a DTB blob back into nodes; property values come back as ``bytes``.

    Raises:
        ValueError: not a DTB (bad magic) or a truncated or malformed block.
    """
    if len(blob) < _HEADER.size:
        raise ValueError("device tree blob shorter than its header")
    (magic, total, off_struct, off_strings, _, _, _, _, size_strings,
     size_struct) = _HEADER.unpack_from(blob)
    if magic != FDT_MAGIC:
        raise ValueError(f"not a device tree blob: magic {magic:#x}, expected {FDT_MAGIC:#x}")
    if total > len(blob):
        raise ValueError(f"device tree blob truncated: header says {total} bytes, "
                         f"have {len(blob)}")
    strings = blob[off_strings:off_strings + size_strings]
    pos = off_struct
    end = off_struct + size_struct
    stack: list[FdtNode] = []
    root: FdtNode | None = None
    while pos < end:
        (token,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if token == _BEGIN_NODE:
            nul = blob.index(b"\0", pos)
            node = FdtNode(blob[pos:nul].decode())
            pos = (nul + 4) & ~3
            if stack:
                stack[-1].children.append(node)
            else:
                root = node
            stack.append(node)
        elif token == _END_NODE:
            stack.pop()
        elif token == _PROP:
            length, name_off = struct.unpack_from(">II", blob, pos)
            pos += 8
            name = strings[name_off:strings.index(b"\0", name_off)].decode()
            stack[-1].props[name] = blob[pos:pos + length]
            pos = (pos + length + 3) & ~3
        elif token == _NOP:
            continue
        elif token == _END:
            break
        else:
            raise ValueError(f"bad device tree token {token:#x} at offset {pos - 4:#x}")
    if root is None:
        raise ValueError("device tree blob has no root node")
    return root
