"""The shared edu script against our model (tests/qemu/ runs it against QEMU too)."""

from __future__ import annotations

from memexpose.devices import EduDevice, run_edu_script
from memexpose.hw import MiniPC


def run_ours() -> list[tuple[str, object]]:
    pc = MiniPC()
    pc.add(EduDevice(pc.clock), slot=4)
    return run_edu_script(pc.driver())


def test_script_transcript_on_our_model() -> None:
    transcript = run_ours()
    got = dict(transcript)
    assert len(got) == len(transcript)  # step names are unique
    assert got["cfg[0x00]"] == 0x11E81234 and got["cfg[0x40]"] == 0x00800005
    assert got["size[0x10]"] == 0xFFF00000 and got["size[rom]"] == 0
    assert got["mask[0x04]"] == 0x00100507
    assert got["readl id"] == 0x010000ED and got["readq id"] == (1 << 64) - 1
    assert got["fact 13"] == 0x7328CC00 and got["fact 40"] == 0
    assert got["fact irq line"] is True and got["fact irq cfg status"] == 0x00180002
    assert got["intx disabled line"] is False
    assert got["dma irq status"] == 0x100
    assert got["ram whole"] == bytes((i * 7 + 3) & 0xFF for i in range(64)).hex()
    assert got["ram after no-master write"] == "00" * 16
    assert got["buffer after no-master read"][16:24] == "00000000"
    assert got["msi message"] == "21430000" and got["msi line"] is False
    assert got["moved readl"] == 0x010000ED and got["old place readl"] == 0
    assert all(value is not False for step, value in transcript if step.endswith("done"))


def test_script_is_deterministic() -> None:
    assert run_ours() == run_ours()
