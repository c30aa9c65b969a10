"""``memexpose pci`` and ``memexpose bench pci-config``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from memexpose.cli import cli


def test_pci_command_prints_info_pci_after_enumeration() -> None:
    result = CliRunner().invoke(cli, ["pci", "--summary"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "00:04.0 1234:11e8 class 00ff" in out  # the enumerator's summary
    assert "  Bus  0, device   4, function 0:\n    Class 0255: PCI device 1234:11e8" in out
    assert "BAR0: 32 bit memory at 0xc0000000 [0xc00fffff]." in out
    assert "Serial port: PCI device 1b36:0002" in out and "BAR0: I/O at 0xc000 [0xc007]." in out
    assert "PCI bridge: PCI device 1b36:0001" in out and "secondary bus 1." in out
    assert "  Bus  1, device   1, function 0:" in out and 'id "edu1"' in out


def test_pci_command_before_firmware_and_with_mtree() -> None:
    result = CliRunner().invoke(cli, ["pci", "--no-enumerate", "--no-bridge", "--mtree"])
    assert result.exit_code == 0, result.output
    assert "at 0xffffffffffffffff [0x000ffffe]." in result.output
    assert "PCI bridge" not in result.output
    assert 'AS "memory"' in result.output and "pci-conf-idx" in result.output


def test_bench_pci_config_json() -> None:
    result = CliRunner().invoke(cli, ["bench", "pci-config", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip())
    assert data["name"] == "pci-config" and data["unit"] == "ns/read"
    assert data["value"] > 0 and data["baseline"] > 0
    assert abs(data["ratio"] - data["value"] / data["baseline"]) < 0.05 * data["ratio"]
