"""Benchmark registry for ``memexpose bench``.

A benchmark is a function with no arguments, registered with
:func:`benchmark`, that returns a dict with at least these keys:

- ``value``: the measured number.
- ``unit``: its unit, e.g. ``"ns/access"`` or ``"MiB/s"``.
- ``baseline``: the reference number to compare against, in the same unit.
- ``ratio``: ``value`` relative to ``baseline``, as the benchmark defines it.

and optionally ``target`` (the number to reach) and ``details`` (any JSON-able
data). Example::

    from memexpose.bench import benchmark

    @benchmark("as-read", description="AddressSpace.read of 4 bytes from RAM")
    def bench_as_read() -> dict:
        ...
        return {"value": ns, "unit": "ns/access", "baseline": ref, "ratio": ns / ref}

Benchmark modules are imported lazily, by name, from :data:`BENCHMARK_MODULES`.
A module that fails to import loses only its own benchmarks; the failure is
reported by :func:`import_errors` and by the command line.

This package sits beside ``memexpose.cli`` and may import any layer; the
registry itself imports none.
"""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BENCHMARK_MODULES",
    "REQUIRED_KEYS",
    "Benchmark",
    "benchmark",
    "get_benchmark",
    "import_errors",
    "load_benchmarks",
    "run_benchmark",
]

#: Modules that register benchmarks when imported, in listing order.
BENCHMARK_MODULES: list[str] = [
    "memexpose.bench.memory",
    "memexpose.bench.pci",
    "memexpose.bench.link",
    "memexpose.bench.machine",
    "memexpose.bench.remote",
]

#: Keys every benchmark result must have.
REQUIRED_KEYS: tuple[str, ...] = ("value", "unit", "baseline", "ratio")

BenchFunc = Callable[[], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One registered benchmark.

    Attributes:
        name: Unique name, as given on the command line.
        description: One line saying what is measured.
        func: The function that runs it and returns the result dict.
        module: The module that registered it.
    """

    name: str
    description: str
    func: BenchFunc
    module: str


# Invariants: names are unique; _IMPORT_ERRORS holds only modules in _ATTEMPTED.
_REGISTRY: dict[str, Benchmark] = {}
_ATTEMPTED: set[str] = set()
_IMPORT_ERRORS: dict[str, str] = {}


def benchmark(name: str, *, description: str) -> Callable[[BenchFunc], BenchFunc]:
    """Register the decorated function as the benchmark ``name``.

    Args:
        name: Unique benchmark name (non-empty, no spaces).
        description: One line saying what is measured.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: ``name`` is empty, contains whitespace, or is already
            registered by another function.
    """
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"benchmark name must be non-empty without spaces, got {name!r}")

    def register(func: BenchFunc) -> BenchFunc:
        module = getattr(func, "__module__", "?")
        old = _REGISTRY.get(name)
        if old is not None and (old.module, old.func.__qualname__) != (
            module,
            func.__qualname__,
        ):
            raise ValueError(
                f"benchmark {name!r} is already registered by {old.module}."
                f"{old.func.__qualname__}; choose another name for {module}.{func.__qualname__}"
            )
        _REGISTRY[name] = Benchmark(name, description, func, module)
        return func

    return register


def load_benchmarks() -> dict[str, Benchmark]:
    """Import every module in :data:`BENCHMARK_MODULES` not yet tried.

    A module that raises on import is recorded in :func:`import_errors` and
    skipped; the other modules still load.

    Returns:
        All registered benchmarks by name, in registration order.
    """
    for module in BENCHMARK_MODULES:
        if module in _ATTEMPTED:
            continue
        _ATTEMPTED.add(module)
        try:
            importlib.import_module(module)
        except Exception as exc:
            # Name the failing line in the benchmark code, not in the import machinery.
            frames = [
                f
                for f in traceback.extract_tb(exc.__traceback__)
                if f.filename != __file__
                and not f.filename.startswith("<frozen")
                and f"{os.sep}importlib{os.sep}" not in f.filename
            ]
            where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            _IMPORT_ERRORS[module] = f"{type(exc).__name__}: {exc}{where}"
    return dict(_REGISTRY)


def import_errors() -> dict[str, str]:
    """Return ``{module: error}`` for benchmark modules that failed to import."""
    return dict(_IMPORT_ERRORS)


def get_benchmark(name: str) -> Benchmark:
    """Return the benchmark called ``name``, loading benchmark modules first.

    Raises:
        KeyError: No such benchmark. The message lists the known names and any
            benchmark module that failed to import.
    """
    known = load_benchmarks()
    if name in known:
        return known[name]
    msg = f"unknown benchmark {name!r}; known: {', '.join(sorted(known)) or '(none)'}"
    for module, error in import_errors().items():
        msg += f"\n  note: {module} failed to import ({error}); its benchmarks are unavailable"
    raise KeyError(msg)


def run_benchmark(name: str) -> dict[str, Any]:
    """Run the benchmark ``name`` and return its checked result.

    Returns:
        ``{"name": name, **result}``, with ``name`` first.

    Raises:
        KeyError: No such benchmark (see :func:`get_benchmark`).
        TypeError: The benchmark returned something other than a dict, or a
            dict missing one of :data:`REQUIRED_KEYS`.
        Exception: Whatever the benchmark itself raises.
    """
    bench = get_benchmark(name)
    result = bench.func()
    if not isinstance(result, dict):
        raise TypeError(
            f"benchmark {name!r} ({bench.module}) returned {type(result).__name__}; "
            f"return a dict with keys {', '.join(REQUIRED_KEYS)}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise TypeError(
            f"benchmark {name!r} ({bench.module}) result lacks {', '.join(missing)}; "
            f"a result needs {', '.join(REQUIRED_KEYS)} (optional: target, details)"
        )
    return {"name": name, **{k: v for k, v in result.items() if k != "name"}}
