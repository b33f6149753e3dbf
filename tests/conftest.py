from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def price_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A fresh price cache for every test, never the user's: subprocesses inherit it too."""
    directory = tmp_path_factory.mktemp("price-cache")
    monkeypatch.setenv("BATCHRUNNER_CACHE_DIR", str(directory))
    return directory
