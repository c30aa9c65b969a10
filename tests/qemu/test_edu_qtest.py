"""The edu script against QEMU 7.2's own edu and against ours: identical transcripts.

QEMU runs ``-M q35 -accel tcg -S`` with a halting BIOS (no qtest accelerator
in Debian's build); the first ``clock_step`` lets the VM run so edu's DMA
timer (virtual clock) fires. Our side is ``MiniPC`` + ``EduDevice`` driven by
``QtestLikeDriver``.
"""

from __future__ import annotations

import pytest

from memexpose.devices import EduDevice, run_edu_script
from memexpose.errors import LinkError
from memexpose.hw import MiniPC
from memexpose.qemu import QtestClient, halt_bios_image

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.integration]


def _edu_block(info_pci: str) -> str:
    lines = info_pci.splitlines()
    start = next(i for i, line in enumerate(lines) if "device   4, function 0" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  Bus "))
    return "\n".join(lines[start:end])


@pytest.mark.timeout(90)
def test_edu_script_same_on_qemu_and_ours() -> None:
    with QtestClient(["-device", "edu,addr=4"]) as qemu:
        theirs = run_edu_script(qemu)
        qemu_info = qemu.hmp("info pci")
        qemu_log = qemu.log
    pc = MiniPC()
    pc.add(EduDevice(pc.clock), slot=4)
    ours = run_edu_script(pc.driver())
    assert [step for step, _ in ours] == [step for step, _ in theirs]
    diffs = [(step, mine, qemus) for (step, mine), (_, qemus) in zip(ours, theirs)
             if mine != qemus]
    assert not diffs, "edu differs from QEMU 7.2:\n" + "\n".join(
        f"  {step}: ours {mine!r}, QEMU {qemus!r}" for step, mine, qemus in diffs)
    assert _edu_block(pc.info_pci() + "  Bus \n") == _edu_block(qemu_info)
    assert "EDU: clamping DMA 0x0000000010012100" in qemu_log  # the script hit the mask


def test_qtest_client_basics() -> None:
    assert len(halt_bios_image()) == 65536
    with QtestClient() as qemu:
        assert qemu.readl(0x10) == 0  # RAM starts zeroed; the halting BIOS touches nothing
        qemu.write(0x1000, b"\x01\x02\x03")
        assert qemu.read(0x1000, 3) == b"\x01\x02\x03" and qemu.read(0, 0) == b""
        qemu.writeq(0x2000, 0x1122334455667788)
        assert qemu.readq(0x2000) == 0x1122334455667788 and qemu.readw(0x2000) == 0x7788
        assert qemu.inb(0x1234) == 0xFF  # the io root's unassigned ports
        with pytest.raises(LinkError, match="refused"):
            qemu.command("no_such_command")
        assert qemu.qmp("query-status")["status"] == "prelaunch"
        assert "QtestClient" in repr(qemu)
    with pytest.raises(LinkError):
        qemu.readl(0)
    qemu.close()  # idempotent
