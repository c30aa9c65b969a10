"""The rich guest (firmware/rich, x86_64) when the trusted VM is not there.

A secure call must fail with a clear message and never hang: the driver
reads STATUS before sending, and the link bounds a connect attempt.
"""

from __future__ import annotations

import os
import struct
import time

import pytest

from memexpose.machine import StopKind, build_machine, run_flagship_vm
from memexpose.machine.flagship import guest_symbols

from .helpers import RICH_TOML, config_with

pytestmark = pytest.mark.timeout(60)


def test_a_call_before_the_peer_is_connected_fails_at_once(sockdir: str) -> None:
    # (a short connect timeout: closing the machine waits for the connect attempt)
    cfg = config_with(RICH_TOML, socket=os.path.join(sockdir, "nobody.sock"),
                      connect_timeout=0.5)
    symbols = guest_symbols(cfg.firmware)
    console = bytearray()
    with build_machine(cfg) as machine:
        machine.console = console.extend
        # the driver calls VERSION at once instead of waiting for the link
        machine.address_space.write_bytes(symbols["wait_for_link"], struct.pack("<Q", 0))
        start = time.monotonic()
        reason = machine.run(timeout=20)
        took = time.monotonic() - start
    text = console.decode()
    assert reason.kind is StopKind.FAULT, reason  # the guest's panic (ud2)
    assert "ud2" in reason.message
    assert took < 2.0
    assert "secure call failed, the memexpose link is not up: call #1" in text
    assert "STATUS=0x9 " in text  # ENABLED | CONNECTING: never sent, never waited


def test_no_trusted_vm_is_a_clear_error(sockdir: str) -> None:
    cfg = config_with(RICH_TOML, socket=os.path.join(sockdir, "nobody.sock"),
                      connect_timeout=0.3)
    lines: list[str] = []
    console = bytearray()
    start = time.monotonic()
    report = run_flagship_vm(cfg, console=console.extend, log=lines.append,
                             handle_signals=False)
    assert time.monotonic() - start < 5.0
    assert report.role == "rich" and report.exit_code == 1
    assert report.stop == "fault"
    text = console.decode()
    assert "memexpose link not up: no trusted VM answered; start it first" in text
    assert "STATUS=0x11 " in text  # ENABLED | CONNECT_FAILED
    assert report.calls == [] and report.guest["call_count"] == 0
    assert any("ud2" in line for line in lines)
