"""The processes a test starts end with it, whatever the test meets."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[Any]) -> Iterator[None]:
    """``procs``, each killed (SIGKILL) and waited for on the way out if it still runs: a test
    that failed (an assertion, a timeout), or one that kills them once what it waits for is
    seen."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
