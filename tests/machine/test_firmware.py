"""The committed guest images are exactly what `make -C firmware` builds from source."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .helpers import FIRMWARE

pytestmark = pytest.mark.timeout(60)


@pytest.mark.qemu("aarch64-linux-gnu-as", "aarch64-linux-gnu-ld", "as", "ld", "make")
def test_rebuild_gives_the_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "build"
    subprocess.run(["make", "-s", "-C", str(FIRMWARE), f"OUT={out}"], check=True,
                   capture_output=True, timeout=60)
    built = sorted(p.name for p in out.glob("*.elf"))
    committed = sorted(p.name for p in (FIRMWARE / "build").glob("*.elf"))
    assert built == committed, "firmware/build is out of date: run `make firmware`"
    for name in built:
        assert (out / name).read_bytes() == (FIRMWARE / "build" / name).read_bytes(), (
            f"firmware/build/{name} differs from its source: run `make firmware` and commit")


def test_every_source_has_an_image() -> None:
    for arch in ("aarch64", "x86_64"):
        for source in (FIRMWARE / arch).glob("*.s"):
            if source.stem == "lib":
                continue
            assert (FIRMWARE / "build" / f"{source.stem}-{arch}.elf").is_file(), source
