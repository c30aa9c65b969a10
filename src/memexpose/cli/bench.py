"""``memexpose bench``: run registered benchmarks (see :mod:`memexpose.bench`)."""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import click

from memexpose import __version__
from memexpose import bench as registry
from memexpose.cli.main import cli

__all__ = ["bench"]

RESULTS_JSON = "bench-results.json"
RESULTS_MD = "bench-results.md"
_COLUMNS = ("name", "value", "unit", "baseline", "ratio", "target")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _line(result: dict[str, Any]) -> str:
    text = (
        f"{result['name']}: {_fmt(result['value'])} {result['unit']} "
        f"(baseline {_fmt(result['baseline'])}, ratio {_fmt(result['ratio'])}"
    )
    if result.get("target") is not None:
        text += f", target {_fmt(result['target'])}"
    return text + ")"


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str)


def _run(name: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return registry.run_benchmark(name), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _write_results(results: list[dict[str, Any]], errors: dict[str, str]) -> None:
    doc = {
        "memexpose": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
        "errors": errors,
    }
    Path(RESULTS_JSON).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [
        "# memexpose benchmarks",
        "",
        f"memexpose {__version__}, Python {doc['python']}, {doc['machine']}",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for result in results:
        lines.append("| " + " | ".join(_fmt(result.get(col)) for col in _COLUMNS) + " |")
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- `{what}`: {error}" for what, error in errors.items()]
    Path(RESULTS_MD).write_text("\n".join(lines) + "\n")


def _print_table(results: list[dict[str, Any]], errors: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="memexpose benchmarks")
    for col in _COLUMNS:
        table.add_column(col, justify="left" if col in ("name", "unit") else "right")
    for result in results:
        table.add_row(*(_fmt(result.get(col)) for col in _COLUMNS))
    for what in errors:
        table.add_row(what, "[red]error[/red]", "", "", "", "")
    Console().print(table)


@cli.command(short_help="Run or list benchmarks.")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON, one object a line.")
@click.option(
    "--all",
    "run_all",
    is_flag=True,
    help=f"Run every registered benchmark and write {RESULTS_JSON} and {RESULTS_MD} here.",
)
@click.option("--table", is_flag=True, help="Print results as a table.")
@click.pass_context
def bench(ctx: click.Context, name: str | None, as_json: bool, run_all: bool, table: bool) -> None:
    """Run benchmark NAME, or all of them with --all; list them with no arguments.

    \b
    Examples:
      memexpose bench                   list benchmarks
      memexpose bench NAME              one readable line
      memexpose bench NAME --json       exactly one JSON object
      memexpose bench --all --table     table + bench-results.json/.md

    Exits 1 if a benchmark or a benchmark module fails, 2 for an unknown NAME.
    """
    known = registry.load_benchmarks()
    import_errors = {f"import {m}": e for m, e in registry.import_errors().items()}

    if name and run_all:
        raise click.UsageError("give either NAME or --all, not both")

    if not name and not run_all:
        for bench_ in known.values():
            click.echo(f"{bench_.name:24} {bench_.description}")
        for what, error in import_errors.items():
            click.echo(f"error: {what}: {error}", err=True)
        if not known:
            click.echo("no benchmarks registered", err=True)
        ctx.exit(1 if import_errors else 0)

    if name:
        try:
            registry.get_benchmark(name)
        except KeyError as exc:
            click.echo(f"memexpose bench: {exc.args[0]}", err=True)
            ctx.exit(2)
        names = [name]
        errors: dict[str, str] = {}
    else:
        names = list(known)
        errors = dict(import_errors)

    results = []
    for bench_name in names:
        result, error = _run(bench_name)
        if result is not None:
            results.append(result)
            if as_json:
                click.echo(_json(result))
            elif not table:
                click.echo(_line(result))
        else:
            errors[bench_name] = error or "failed"
        sys.stdout.flush()

    if table and not as_json:
        _print_table(results, errors)
    if run_all:
        _write_results(results, errors)
    for what, error in errors.items():
        click.echo(f"memexpose bench: error: {what}: {error}", err=True)
    ctx.exit(1 if errors else 0)
