"""Tests talk to 127.0.0.1 only: a connection to another address, or a look-up of a name
other than localhost, is refused and recorded. ``tests/conftest.py`` guards the test's own
process with it, and puts this directory first on ``PYTHONPATH`` with ``OUTSIDE_LOG`` set, so
that every Python process a test starts (the CLI, the simulator, a benchmark) is guarded too, by
``sitecustomize`` here, each refusal a line of that file for the test to fail on."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

OUTSIDE_LOG = "BATCHRUNNER_TESTS_OUTSIDE_LOG"  # the file a guarded subprocess records into

Connect = Callable[[socket.socket, Any], None]
ConnectEx = Callable[[socket.socket, Any], int]
GetAddrInfo = Callable[..., Any]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host.rstrip(".").lower() == "localhost"


def guarded(record: Callable[[str], None]) -> tuple[Connect, ConnectEx, GetAddrInfo]:
    """``socket.socket.connect``, ``socket.socket.connect_ex`` and ``socket.getaddrinfo`` as
    they are now, each refusing what is not loopback after calling ``record`` with what it
    was."""
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, \
        socket.getaddrinfo

    def checked(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(str(address[0])):
            record(f"a connection to {address!r}")
            raise ConnectionRefusedError(f"tests connect to 127.0.0.1 only, not {address!r}")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        checked(sock, address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        checked(sock, address)
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not is_loopback(host.decode() if isinstance(host, bytes)
                                                else str(host)):
            record(f"a look-up of {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"tests look up localhost only, not {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    return guarded_connect, guarded_connect_ex, guarded_getaddrinfo


def guard_this_process(log: str) -> None:
    """Guard this process for good, each refusal appended to ``log`` as a line (with the
    process's id and command)."""

    def record(what: str) -> None:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{what} (process {os.getpid()}: {' '.join(sys.argv)[:200]})\n")

    connect, connect_ex, getaddrinfo = guarded(record)
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
