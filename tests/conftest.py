"""Shared test machinery.

- ``@pytest.mark.qemu`` / ``@pytest.mark.qemu("qemu-system-aarch64", ...)``:
  the test needs those binaries (default ``qemu-system-x86_64``). When one is
  missing the test is skipped loudly (at collection); when the environment variable ``CI`` is
  set, any skip of a ``qemu`` test becomes a failure instead.
- ``require_qemu`` fixture: ``path = require_qemu("qemu-system-ppc")`` skips
  the same way (and fails under CI) from inside a test.
- ``shared_dir`` fixture: the project's ``../shared`` folder (oracles,
  references); skipped when absent, an error under CI.
- Every test is checked for child processes left behind: leftovers are
  killed and the test fails, naming their PIDs and command lines.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
DEFAULT_QEMU = "qemu-system-x86_64"
QEMU_SKIP_PREFIX = "QEMU test skipped in CI: "

# Long-lived helpers that the stdlib starts once per process on purpose.
_ALLOWED_CHILDREN = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
    )
    if IN_CI:
        settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


# --- QEMU --------------------------------------------------------------------


def _missing_reason(binary: str) -> str:
    return f"{binary} not installed: run `sudo scripts/install-qemu.sh` or `make qemu`"


def _need_binary(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        reason = _missing_reason(binary)
        if IN_CI:
            pytest.fail(QEMU_SKIP_PREFIX + reason, pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def require_qemu() -> Callable[[str], str]:
    """Return ``check(binary) -> path``, which skips the test if ``binary`` is missing.

    Under CI a missing binary fails the test instead.
    """
    return _need_binary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A skip mark (rather than pytest.skip() in a hook) reports the test's own location.
    for item in items:
        for mark in item.iter_markers("qemu"):
            for binary in mark.args or (DEFAULT_QEMU,):
                if shutil.which(binary) is None:
                    item.add_marker(pytest.mark.skip(reason=_missing_reason(binary)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if (
        IN_CI
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("qemu") is not None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"{QEMU_SKIP_PREFIX}{reason}"
    return report


# --- shared/ -----------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Return the project's shared folder, ``<repo>/../shared``.

    Skips when it is absent; under CI that is an error instead.
    """
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        reason = f"shared folder {path} not found (expected beside the repository)"
        if IN_CI:
            raise RuntimeError(f"{reason}; CI needs it for oracle tests")
        pytest.skip(reason)
    return path


# --- leftover child processes ------------------------------------------------


def _children() -> dict[int, str]:
    """Return ``{pid: command line}`` of this process's direct children (zombies too)."""
    me = os.getpid()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            # pid (comm) state ppid ...; comm may contain spaces and parentheses.
            close = stat.rindex(b")")
            state, ppid = stat[close + 2 :].split()[:2]
            if int(ppid) != me:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue  # exited meanwhile
        if not cmd:  # zombies and kernel threads have no command line
            cmd = "[" + stat[stat.index(b"(") + 1 : close].decode(errors="replace") + "]"
        if state == b"Z":
            cmd += " <zombie: exited, never waited for>"
        found[int(entry.name)] = cmd
    return found


def _reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    for pid in pids:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.01)


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    before = set(_children())
    yield
    leaked = {
        pid: cmd
        for pid, cmd in _children().items()
        if pid not in before and not any(a in cmd for a in _ALLOWED_CHILDREN)
    }
    if leaked:
        _reap(list(leaked))
        lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in sorted(leaked.items()))
        pytest.fail(
            f"test left {len(leaked)} child process(es) behind (now killed):\n{lines}\n"
            "Stop and wait for every process a test starts (e.g. in a fixture's teardown).",
            pytrace=False,
        )
