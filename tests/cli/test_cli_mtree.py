"""``memexpose mtree``: render-qemu, compare and capture on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from memexpose.cli import cli
from memexpose.qemu import diff_mtree

ORACLE = Path("oracle") / "mtree"


@pytest.fixture
def pc(shared_dir: Path) -> Path:
    folder = shared_dir / ORACLE
    if not (folder / "pc.tree-Do.txt").is_file():
        pytest.skip("pc capture absent")
    return folder


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("flags", "expected"), [
    ((), "pc.flat.txt"), (("-o",), "pc.flat-o.txt"), (("--tree",), "pc.tree-Do.txt")])
def test_render_qemu_prints_what_qemu_printed(pc: Path, flags: tuple[str, ...],
                                              expected: str) -> None:
    code, out, err = run("mtree", "render-qemu", pc / "pc.tree-Do.txt", "--hints",
                         pc / "pc.flat-o.txt", *flags)
    assert code == 0, err
    assert diff_mtree(out, (pc / expected).read_text()) == ""
    assert err == ""


def test_render_qemu_notes_go_to_stderr(shared_dir: Path) -> None:
    folder = shared_dir / ORACLE
    code, out, err = run("mtree", "render-qemu", folder / "pc-devices-booted.tree-Do.txt",
                         "--hints", folder / "pc-devices-booted.flat-o.txt", "--notes")
    assert code == 0
    assert "note: H3 read-only: ram alias pam-rom" in err
    assert diff_mtree(out, (folder / "pc-devices-booted.flat.txt").read_text()) == ""


def test_render_qemu_errors(pc: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("address-space: memory\n  nonsense\n")
    code, _, err = run("mtree", "render-qemu", bad, "--hints", pc / "pc.flat-o.txt")
    assert code == 1 and "line 2:" in err and "'  nonsense'" in err
    code, _, err = run("mtree", "render-qemu", pc / "pc.tree-Do.txt")
    assert code == 2 and "--hints" in err


def test_render_qemu_warns_when_hints_disagree(pc: Path) -> None:
    code, _, err = run("mtree", "render-qemu", pc / "pc.tree-Do.txt", "--hints",
                       pc.parent / "mtree" / "virt.flat-o.txt")
    assert code == 0 and "warning:" in err and "differ from" in err


def test_compare(pc: Path, tmp_path: Path) -> None:
    code, out, _ = run("mtree", "compare", pc / "pc.flat.txt", pc / "pc.flat.txt")
    assert code == 0 and out == "same blocks\n"
    changed = tmp_path / "changed.txt"
    changed.write_text((pc / "pc.flat.txt").read_text().replace("pc.rom", "pc.rox"))
    code, out, _ = run("mtree", "compare", changed, pc / "pc.flat.txt")
    assert code == 1 and "-  00000000000c0000" in out and "+  00000000000c0000" in out


@pytest.mark.qemu("qemu-system-x86_64")
def test_capture_writes_the_three_files(tmp_path: Path) -> None:
    code, out, err = run("mtree", "capture", tmp_path, "pc", "--", "qemu-system-x86_64",
                         "-M", "pc")
    assert code == 0, err
    assert "QEMU 7.2" in out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["pc.flat-o.txt", "pc.flat.txt", "pc.tree-Do.txt"]
    code, out, err = run("mtree", "render-qemu", tmp_path / "pc.tree-Do.txt", "--hints",
                         tmp_path / "pc.flat-o.txt", "-o")
    assert code == 0 and diff_mtree(out, (tmp_path / "pc.flat-o.txt").read_text()) == ""
