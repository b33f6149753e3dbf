"""The suite's own guard (``conftest.loopback_only``): a test, and every Python process it
starts, reaches 127.0.0.1 only. The addresses tried here never leave the machine even when
unguarded: 0.0.0.0 is this machine to Linux, and a numeric look-up asks no resolver."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loopback_site.loopback_guard import guarded

OUTSIDE = """\
import socket, sys
with socket.socket() as sock:
    sock.settimeout(5)
    try:
        sock.connect(("0.0.0.0", int(sys.argv[1])))
    except OSError as e:
        print("connect:", e)
try:
    socket.getaddrinfo("192.0.2.1", 80, flags=socket.AI_NUMERICHOST)
except OSError as e:
    print("look-up:", e)
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5):
    print("loopback: connected")
"""


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_a_subprocess_reaching_past_loopback_is_refused_and_recorded(
        loopback_only: Path, listening: int) -> None:
    done = subprocess.run([sys.executable, "-c", OUTSIDE, str(listening)], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == [
        f"connect: tests connect to 127.0.0.1 only, not ('0.0.0.0', {listening})",
        "look-up: [Errno -2] tests look up localhost only, not '192.0.2.1'",
        "loopback: connected",
    ], done.stdout + done.stderr
    tried = loopback_only.read_text().splitlines()
    assert [line.split(" (process ")[0] for line in tried] == [
        f"a connection to ('0.0.0.0', {listening})", "a look-up of '192.0.2.1'"], tried
    loopback_only.unlink()  # seen: the guard's own check at the test's end passes


def test_the_guard_refuses_and_records_what_is_not_loopback(listening: int) -> None:
    """The functions the guard puts in place, in this process and in the subprocesses."""
    seen: list[str] = []
    connect, connect_ex, getaddrinfo = guarded(seen.append)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError,
                                                match=r"tests connect to 127\.0\.0\.1 only"):
        connect(sock, ("0.0.0.0", listening))
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        connect_ex(sock, ("::ffff:0.0.0.0", listening))
    with pytest.raises(socket.gaierror, match=r"tests look up localhost only"):
        getaddrinfo("192.0.2.1", 80, flags=socket.AI_NUMERICHOST)
    assert [line.split("(")[0] for line in seen] == ["a connection to ", "a connection to ",
                                                     "a look-up of '192.0.2.1'"], seen
    assert getaddrinfo("localhost", listening) and getaddrinfo("127.0.0.1", listening)
    with socket.socket() as sock:
        connect(sock, ("127.0.0.1", listening))
    with socket.socket() as sock:
        assert connect_ex(sock, ("127.0.0.1", listening)) == 0
    assert len(seen) == 3
