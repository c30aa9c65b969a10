"""QemuVM (shared memfd RAM, KVM when usable, qtest, QMP via qemu.qmp) and its helpers."""

from __future__ import annotations

import pytest

from memexpose.errors import ConfigError, LinkError
from memexpose.qemu import QemuVM, QmpSession, kvm_usable, load_qemu_qmp, serve_device_argv

pytestmark = pytest.mark.timeout(30)


def test_kvm_usable_says_why_not() -> None:
    ok, why = kvm_usable("/nonexistent/kvm")
    assert not ok and "cannot open /nonexistent/kvm" in why
    ok, why = kvm_usable()
    assert isinstance(ok, bool) and (ok or why)


def test_command_lines() -> None:
    vm = QemuVM(["-device", "edu"], accel="tcg", ram_size=64 << 20)
    argv = vm.argv("/q", "/m", None)
    assert argv[:3] == ["qemu-system-x86_64", "-object",
                        "memory-backend-memfd,id=ram,size=67108864,share=on"]
    assert "q35,memory-backend=ram" in argv and "64M" in argv and argv[-2:] == ["-device", "edu"]
    plain = QemuVM(accel="tcg", share_ram=False).argv("/q", "/m", "/bios")
    assert "-object" not in plain and "q35" in plain and plain[-2:] == ["-bios", "/bios"]
    assert QemuVM(accel="auto").accel in ("tcg", "kvm")
    with pytest.raises(ConfigError, match="accel must be"):
        QemuVM(accel="hvf")
    with pytest.raises(ConfigError, match="multiple of 1 MiB"):
        QemuVM(ram_size=1000)
    argv = serve_device_argv("edu", 5, {"dma_mask": "0xff"}, verbose=1)
    assert argv[-7:] == ["-v", "serve-device", "edu", "--fd", "5", "--opt", "dma_mask=0xff"]


def test_qemu_qmp_loads_even_when_shadowed() -> None:
    qmp = load_qemu_qmp()  # under pytest, tests/qemu may shadow the name "qemu"
    assert hasattr(qmp, "QMPClient") and hasattr(qmp, "ExecuteError")
    session = QmpSession(timeout=1)
    session.close()
    session.close()
    with pytest.raises(LinkError, match="closed"):
        session.execute("query-status")
    with pytest.raises(ValueError):
        QmpSession(timeout=0)


@pytest.mark.qemu
def test_start_drive_and_quit() -> None:
    with QemuVM(accel="tcg", ram_size=64 << 20) as vm:
        assert vm.alive() and vm.pid is not None and "running" in repr(vm)
        assert vm.qmp("query-status")["status"] == "prelaunch"
        memdevs = vm.qmp("query-memdev")
        assert [(m["size"], m["share"]) for m in memdevs] == [(64 << 20, True)]
        vm.writel(0x1000, 0xCAFEF00D)
        assert vm.readl(0x1000) == 0xCAFEF00D
        assert "ioapic" in vm.hmp("info pic")
        with pytest.raises(LinkError, match="refused QMP 'no-such-command'"):
            vm.qmp("no-such-command")
    assert not vm.alive() and "closed" in repr(vm)
    vm.close()  # idempotent
    with pytest.raises(LinkError, match="not started"):
        vm.qmp("query-status")


@pytest.mark.qemu
def test_a_qemu_that_fails_to_start_says_why() -> None:
    with pytest.raises(LinkError, match="'nosuchdev' is not a valid device model"):
        QemuVM(["-device", "nosuchdev"], accel="tcg", timeout=5).start()
