"""``memexpose bench`` and the benchmark registry, with fake benchmarks."""

from __future__ import annotations

import json
import sys
import types

import pytest
from click.testing import CliRunner

from memexpose import bench as registry
from memexpose.cli import cli

FAKE = "memexpose_test_fake_bench"
BROKEN = "memexpose_test_broken_bench"


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_ATTEMPTED", set())
    monkeypatch.setattr(registry, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(registry, "BENCHMARK_MODULES", [FAKE, BROKEN])

    module = types.ModuleType(FAKE)
    exec(
        "from memexpose.bench import benchmark\n"
        "@benchmark('fast', description='a fast one')\n"
        "def fast():\n"
        "    return {'value': 1.5, 'unit': 'ns', 'baseline': 3.0, 'ratio': 0.5}\n"
        "@benchmark('bad', description='lacks keys')\n"
        "def bad():\n"
        "    return {'value': 1}\n",
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, FAKE, module)
    monkeypatch.delitem(sys.modules, BROKEN, raising=False)


def test_json_is_one_object(fake_registry: None) -> None:
    result = CliRunner().invoke(cli, ["bench", "fast", "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "name": "fast",
        "value": 1.5,
        "unit": "ns",
        "baseline": 3.0,
        "ratio": 0.5,
    }


def test_unknown_name_lists_known_and_exits_2(fake_registry: None) -> None:
    result = CliRunner().invoke(cli, ["bench", "nope"])
    assert result.exit_code == 2
    assert "known: bad, fast" in result.stderr
    assert f"{BROKEN} failed to import" in result.stderr


def test_all_table_writes_results_and_reports_failures(
    fake_registry: None, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["bench", "--all", "--table"])
    assert result.exit_code == 1, result.output
    doc = json.loads((tmp_path / "bench-results.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["fast"]
    assert set(doc["errors"]) == {"bad", f"import {BROKEN}"}
    assert "| fast | 1.5 | ns | 3 | 0.5 | - |" in (tmp_path / "bench-results.md").read_text()


def test_duplicate_name_from_another_function_is_refused(fake_registry: None) -> None:
    registry.load_benchmarks()
    with pytest.raises(ValueError, match="already registered"):
        registry.benchmark("fast", description="again")(lambda: {})
