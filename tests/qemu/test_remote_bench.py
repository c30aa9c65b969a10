"""The remote-bar benchmark runs (few reads) and reports both figures and the ratio."""

from __future__ import annotations

import pytest

from memexpose.bench import remote as bench_remote

pytestmark = [pytest.mark.qemu, pytest.mark.integration, pytest.mark.timeout(60)]


def test_remote_bar_benchmark_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_remote, "_N", 50)
    monkeypatch.setattr(bench_remote, "_ROUNDS", 3)
    result = bench_remote.bench_remote_bar()
    assert result["unit"] == "us/read" and result["target"] == 1.0
    assert result["value"] > 0 and result["baseline"] > 0 and result["ratio"] > 0
    details = result["details"]
    assert set(details["proxy_round_trip_us"]) == {"python", "c"}
    assert "x-remote" in details["c_remote"]
