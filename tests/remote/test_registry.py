"""The device registry behind `memexpose serve-device DEVICE`."""

from __future__ import annotations

import pytest

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
