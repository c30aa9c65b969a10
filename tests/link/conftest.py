"""Fixtures for the link tests: peers in separate processes, short socket paths.

Every link test runs the two peers in two OS processes: the test process
builds one ``Machine`` (``local``), and ``peer`` starts the other with the
multiprocessing "forkserver" context (fast: the server has memexpose
imported already). Teardown stops and joins every peer (killing it if it
does not stop) and checks that no socket file is left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from memexpose.link import hotpath
from tests.link.peer import Machine, default_spec, run_peer, run_raw_peer

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["memexpose.memory", "memexpose.link", "tests.link.peer"])


class PeerError(Exception):
    """A command failed inside the peer process (its traceback is the message)."""


class Peer:
    """A peer process and the pipe that drives it."""

    def __init__(self, target: Callable[..., None], spec: dict[str, Any]) -> None:
        self.spec = spec
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=target, args=(child, spec), daemon=True,
                                name=f"peer-{spec['name']}")
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        return self.proc.pid  # type: ignore[return-value]

    def send(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        """Start a command without waiting for its result (see ``result``)."""
        self.conn.send((cmd, args, kwargs))

    def result(self, timeout: float = 20.0) -> Any:
        """Wait for the result of the command sent last."""
        if not self.conn.poll(timeout):
            raise TimeoutError(f"peer {self.spec['name']} did not answer in {timeout} s")
        status, value = self.conn.recv()
        if status == "err":
            raise PeerError(value)
        return value

    def call(self, cmd: str, *args: Any, timeout: float = 20.0, **kwargs: Any) -> Any:
        """Run a command in the peer and return its result."""
        self.send(cmd, *args, **kwargs)
        return self.result(timeout)

    def kill(self) -> None:
        """SIGKILL the peer (it dies mid-whatever) and reap it."""
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(5)

    def stop(self) -> None:
        """Ask the peer to quit; kill it if it does not; always join."""
        if self.proc.is_alive():
            try:
                self.conn.send(("quit", (), {}))
                if self.conn.poll(5):
                    self.conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.kill()
        self.proc.join(5)
        self.conn.close()


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory for UNIX sockets; must be empty again at teardown."""
    path = tempfile.mkdtemp(prefix="mx-", dir="/tmp")
    yield path
    left = os.listdir(path)
    shutil.rmtree(path, ignore_errors=True)
    assert not left, f"socket files left behind in {path}: {left}"


@pytest.fixture(params=["c", "python"])
def hot_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each implementation of the link's hot path (hotpath.py).

    Set in this process's environment and passed to every peer in its spec
    (peers come from a fork server, which does not see later changes).
    """
    if request.param == "c" and not hotpath.native_available():
        if os.environ.get("CI"):
            pytest.fail("the C hot path (memexpose.link._hotpath) was not built")
        pytest.skip("the C hot path was not built here")
    monkeypatch.setenv(hotpath.ENV, request.param)
    return request.param


@pytest.fixture
def peer(hot_path: str) -> Iterator[Callable[..., Peer]]:
    """``peer(spec, raw=False)`` starts a peer process; all are stopped at teardown."""
    peers: list[Peer] = []

    def start(spec: dict[str, Any], *, raw: bool = False) -> Peer:
        spec = {**spec, "hot_path": hot_path}
        p = Peer(run_raw_peer if raw else run_peer, spec)
        peers.append(p)
        return p

    yield start
    for p in reversed(peers):
        p.stop()


@pytest.fixture
def local(hot_path: str) -> Iterator[Callable[..., Machine]]:
    """``local(spec)`` builds a machine in the test process; closed at teardown."""
    machines: list[Machine] = []

    def make(spec: dict[str, Any]) -> Machine:
        m = Machine(spec)
        machines.append(m)
        return m

    yield make
    for m in reversed(machines):
        m.close()


@pytest.fixture
def pair(sockdir: str, local: Callable[..., Machine], peer: Callable[..., Peer]
         ) -> Callable[..., tuple[Machine, Peer]]:
    """``pair(local_over={}, peer_over={})``: a connected local machine and peer over UNIX.

    The local side listens; the peer connects. Both are enabled on return.
    """

    def make(local_over: dict[str, Any] | None = None,
             peer_over: dict[str, Any] | None = None, *,
             enable: bool = True) -> tuple[Machine, Peer]:
        path = os.path.join(sockdir, "link")
        me = local(default_spec("local", ("unix", path, True), **(local_over or {})))
        other = peer(default_spec("peer", ("unix", path, False), **(peer_over or {})))
        if enable:
            other.send("enable")
            me.ep.enable()
            assert other.result() == "CONNECTED"
        return me, other

    return make
