"""The device registry behind `memexpose serve-device DEVICE`."""

from __future__ import annotations

import os
import time

import pytest

from memexpose.devices import MemexposePCI
from memexpose.errors import ConfigError
from memexpose.remote import (
    REMOTE_DEVICES,
    RemotePlatform,
    build_remote_device,
    int_option,
    register_remote_device,
)

pytestmark = pytest.mark.timeout(10)


def test_edu_is_registered_with_its_options() -> None:
    plat = RemotePlatform()
    edu = build_remote_device("edu", plat, {"dma_mask": "0xffffffff", "id": "e0"})
    assert edu is plat.device and edu.dma_mask == 0xFFFFFFFF and edu.id == "e0"  # type: ignore[attr-defined]
    assert edu.bus is plat.host.bus and edu.devfn == 0
    assert "edu" in REMOTE_DEVICES and "dma_mask" in REMOTE_DEVICES["edu"].options
    plat.close()


def test_errors_name_what_is_known() -> None:
    plat = RemotePlatform()
    with pytest.raises(ConfigError, match="type 'floppy'; known types: .*edu"):
        build_remote_device("floppy", plat)
    with pytest.raises(ConfigError, match="edu: unknown option 'speed'; options: dma_mask"):
        build_remote_device("edu", plat, {"speed": "1"})
    with pytest.raises(ConfigError, match="dma_mask='lots': expected an integer"):
        build_remote_device("edu", plat, {"dma_mask": "lots"})
    assert int_option({}, "x", 7) == 7 and int_option({"x": "0x10"}, "x", 7) == 16
    plat.close()


def test_register_refuses_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_remote_device("edu", lambda platform, options: None)  # type: ignore[arg-type,return-value]


def test_memexpose_pci_exposes_the_vms_ram_under_the_platform_lock(tmp_path) -> None:
    plat = RemotePlatform()
    path = str(tmp_path / "mx.sock")
    dev = build_remote_device("memexpose-pci", plat, {
        "socket": path, "listen": "on", "bar64": "off", "msi": "off", "shm_size": "0x10000"})
    assert isinstance(dev, MemexposePCI) and dev is plat.device
    assert dev.core.lock is plat.system.lock
    exporter = dev.endpoint.exporter
    assert exporter is not None and exporter.exposure.address_space is plat.memory
    assert exporter.exposure.size == 1 << 64
    assert not dev.bar(1).is_64 and dev.msi is None
    with plat.system.lock:
        dev.core._set_enable(True)  # a guest's ENABLE = 1: it listens in the background
    deadline = time.monotonic() + 5
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(path)
    plat.close()  # unplugs, then closes the link: its socket file goes
    assert not os.path.exists(path)
    assert dev.endpoint.state.name == "CLOSED"
    assert "memexpose-pci" in REMOTE_DEVICES
    assert "bar64" in REMOTE_DEVICES["memexpose-pci"].options


def test_platform_closers_run_once_and_a_failure_does_not_stop_the_others() -> None:
    plat = RemotePlatform()
    calls: list[str] = []
    plat.add_closer(lambda: calls.append("first"))
    plat.add_closer(lambda: 1 / 0)
    plat.add_closer(lambda: calls.append("last"))
    plat.close()
    plat.close()
    assert calls == ["last", "first"]
