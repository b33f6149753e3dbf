"""Start-up shared by the tests' own HTTP servers (the simulator has its own)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from batchrunner.config import load_job
from batchrunner.runner import RunOptions, RunSummary, run_job

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def serve_on_loopback(handler: Handler, *, ssl_context: ssl.SSLContext | None = None
                            ) -> tuple[web.ServerRunner, int]:
    """Serve ``handler`` on 127.0.0.1 at a free port: the runner (``cleanup()`` stops it) and
    the port."""
    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner, int(runner.addresses[0][1])


async def run_job_file(handler: Handler, job_file: Path, options: RunOptions,
                       **overrides: Any) -> RunSummary:
    """Run ``job_file`` (with command-line ``overrides``: ``max_cost_usd=0.5``) against
    ``handler`` served on 127.0.0.1 (the job's base URL), then stop the server."""
    runner, port = await serve_on_loopback(handler)
    try:
        job = load_job(job_file, {"base_url": f"http://127.0.0.1:{port}/v1", **overrides})
        return await run_job(job, options)
    finally:
        await runner.cleanup()
