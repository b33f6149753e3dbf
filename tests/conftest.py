from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loopback_site.loopback_guard import OUTSIDE_LOG, guarded


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def job_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> str:
    """What a job run in a test meets: the test module's ``KEY`` as the API key, no endpoint
    from the machine's environment, and the test's own directory as the current one (so no
    ``.env`` of the machine is read). A module asks for it with ``pytestmark``."""
    key: str = request.module.KEY
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return key


@pytest.fixture(autouse=True)
def ctrl_c_as_from_a_shell() -> Iterator[None]:
    """Every test starts with Ctrl-C (SIGINT) raising KeyboardInterrupt, as in a program started
    from a shell. pytest-xdist's workers ignore SIGINT, and a process a test starts inherits
    that: the child then ignored the test's Ctrl-C wherever the run's own handler was not up
    (the input scanned, the results written), unless a test that left Ctrl-C's handler had run
    on that worker before it."""
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, found)


@pytest.fixture(autouse=True)
def price_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A fresh price cache for every test, never the user's: subprocesses inherit it too."""
    directory = tmp_path_factory.mktemp("price-cache")
    monkeypatch.setenv("BATCHRUNNER_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(autouse=True)
def environment_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as from a shell with the suite's environment activated: the interpreter's
    directory, where its ``batchrunner`` console script is installed, first on the PATH. A
    process a test starts with ``python -m batchrunner`` then finds itself there by name, and
    names itself ``batchrunner`` in the commands it prints, as it does for a user with the
    venv active (``progress.program``). A test of another PATH (a crontab's) sets its own."""
    monkeypatch.setenv("PATH", os.pathsep.join(
        filter(None, [os.path.dirname(sys.executable), os.environ.get("PATH")])))


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the proxy they mean: none from the machine's environment (subprocesses too)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


SUBPROCESS_SITE = Path(__file__).resolve().parent / "loopback_site"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests talk to 127.0.0.1 only: a connection to another address, or a name looked up
    other than localhost, is refused and fails the test, in this process and in every Python
    process the test starts (``loopback_site``'s ``sitecustomize``, first on their
    ``PYTHONPATH``, records each refusal in the file this yields)."""
    tried: list[str] = []
    connect, connect_ex, getaddrinfo = guarded(tried.append)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    log = tmp_path_factory.mktemp("outside") / "tried.log"
    monkeypatch.setenv(OUTSIDE_LOG, str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(SUBPROCESS_SITE), os.environ.get("PYTHONPATH")])))
    yield log
    assert not tried, f"the test reached past 127.0.0.1: {tried}"
    assert not log.exists(), f"a process the test started reached past 127.0.0.1: " \
        f"{log.read_text()}"
