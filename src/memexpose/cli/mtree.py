"""``memexpose mtree``: QEMU ``info mtree`` text, rebuilt by our memory model."""

from __future__ import annotations

from pathlib import Path

import click

from memexpose.cli.main import cli
from memexpose.errors import MemexposeError
from memexpose.qemu import capture_mtree, diff_mtree, parse_mtree

__all__ = ["mtree"]

_TEXT_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@cli.group()
def mtree() -> None:
    """Work with QEMU `info mtree` text (the real-QEMU oracle of the memory model)."""


@mtree.command("render-qemu")
@click.argument("tree_file", metavar="TREE_Do.txt", type=_TEXT_FILE)
@click.option("--hints", "hints_file", metavar="FLAT_o.txt", type=_TEXT_FILE, required=True,
              help="`info mtree -f -o` output of the same QEMU run. It supplies what the "
                   "tree lacks: which i/o regions terminate, read-only aliases, the order "
                   "of address spaces.")
@click.option("-o", "--owner", is_flag=True,
              help="Print owners and QOM parents, like `info mtree -f -o`.")
@click.option("--tree", "as_tree", is_flag=True,
              help="Print the rebuilt tree instead (`info mtree -o -D` style, owners and "
                   "disabled regions always included), to debug the parse.")
@click.option("--notes", is_flag=True,
              help="Also list the inferred facts (read-only aliases, ...) on stderr.")
def render_qemu(tree_file: Path, hints_file: Path, owner: bool, as_tree: bool,
                notes: bool) -> None:
    """Print the flat view our model renders from a QEMU capture.

    TREE_Do.txt is `info mtree -o -D` output of QEMU 7.2 (CRLF is fine). The
    tree is parsed into memexpose regions and address spaces; the flat views
    are rendered by memexpose and printed like `info mtree -f` (with -o, like
    `info mtree -f -o`). Compare with QEMU's own text block by block: QEMU
    prints blocks in a random order.

    \b
    Example:
      memexpose mtree render-qemu pc.tree-Do.txt --hints pc.flat-o.txt -o
    """
    try:
        with parse_mtree(tree_file.read_text(), hints_file.read_text()) as parsed:
            if as_tree:
                text = parsed.format_tree(owner=True, disabled=True)
            else:
                text = parsed.format_flat(owner=owner)
            if notes:
                for note in parsed.notes:
                    click.echo(f"note: {note}", err=True)
            if parsed.flat_mismatch:
                click.echo(f"warning: {parsed.flat_mismatch} line(s) of the rebuilt flat view "
                           f"differ from {hints_file}", err=True)
    except MemexposeError as exc:
        raise click.ClickException(f"{tree_file}: {exc}") from exc
    click.echo(text, nl=False)


@mtree.command("capture")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("label")
@click.argument("qemu_args", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", default=30.0, show_default=True, type=float,
              help="Seconds each QMP step may take before QEMU is killed.")
def capture(outdir: Path, label: str, qemu_args: tuple[str, ...], timeout: float) -> None:
    """Capture `info mtree` from an installed QEMU into OUTDIR/LABEL.*.txt.

    QEMU_ARGS is the binary and the machine arguments; memexpose adds
    `-accel tcg -display none -nodefaults -no-user-config -S -qmp stdio`.
    Writes LABEL.tree-Do.txt, LABEL.flat-o.txt and LABEL.flat.txt (LF endings).

    \b
    Example:
      memexpose mtree capture /tmp/cap pc -- qemu-system-x86_64 -M pc
    """
    binary, *machine_args = qemu_args
    try:
        result = capture_mtree(binary, machine_args, timeout=timeout)
    except MemexposeError as exc:
        raise click.ClickException(str(exc)) from exc
    outdir.mkdir(parents=True, exist_ok=True)
    for suffix, text in (("tree-Do", result.tree_do), ("flat-o", result.flat_o),
                         ("flat", result.flat)):
        (outdir / f"{label}.{suffix}.txt").write_text(text)
    click.echo(f"{label}: QEMU {result.version}: {' '.join(result.command)}")


@mtree.command("compare")
@click.argument("ours", type=_TEXT_FILE)
@click.argument("theirs", type=_TEXT_FILE)
def compare(ours: Path, theirs: Path) -> None:
    """Compare two `info mtree` texts block by block (exit status 1 if they differ).

    Block order is ignored (QEMU prints blocks in a random order), line order
    inside a block is not; flat blocks ignore `FlatView #N` and the order of
    their AS lines. Differing blocks are shown as unified diffs.
    """
    diff = diff_mtree(ours.read_text(), theirs.read_text(), ours_label=str(ours),
                      theirs_label=str(theirs))
    if diff:
        click.echo(diff, nl=False)
        raise SystemExit(1)
    click.echo("same blocks")
