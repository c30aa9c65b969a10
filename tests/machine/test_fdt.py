"""Device-tree blobs: build, parse back."""

from __future__ import annotations

import struct

import pytest

from memexpose.machine import FdtNode, build_fdt, parse_fdt


def test_round_trip() -> None:
    root = FdtNode("", {"#address-cells": 2, "model": "m", "compatible": ["a,b", "c"]})
    child = root.add("uart@9000000", reg=[0, 0x0900_0000, 0, 0x1000], empty=b"")
    child.add("inner", address_cells=1)
    blob = build_fdt(root)
    assert struct.unpack_from(">I", blob)[0] == 0xD00DFEED
    assert len(blob) % 8 == 0
    back = parse_fdt(blob)
    assert back.props["#address-cells"] == b"\0\0\0\2"
    assert back.props["model"] == b"m\0"
    assert back.props["compatible"] == b"a,b\0c\0"
    uart = back.find("/uart@9000000")
    assert uart is not None
    assert uart.props["reg"] == struct.pack(">4I", 0, 0x0900_0000, 0, 0x1000)
    assert uart.props["empty"] == b""
    assert back.find("/uart@9000000/inner").props["#address-cells"] == b"\0\0\0\1"


def test_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="magic"):
        parse_fdt(bytes(64))
    with pytest.raises(ValueError, match="shorter"):
        parse_fdt(b"\xd0\x0d")


def test_booleans_are_refused() -> None:
    with pytest.raises(TypeError):
        build_fdt(FdtNode("", {"x": True}))
