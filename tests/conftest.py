from __future__ import annotations

from pathlib import Path

import pytest


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
def price_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A fresh price cache for every test, never the user's: subprocesses inherit it too."""
    directory = tmp_path_factory.mktemp("price-cache")
    monkeypatch.setenv("BATCHRUNNER_CACHE_DIR", str(directory))
    return directory


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the proxy they mean: none from the machine's environment (subprocesses too)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
