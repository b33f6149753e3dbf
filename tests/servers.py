"""Start-up shared by the tests' own HTTP servers (the simulator has its own)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from batchrunner.config import load_job
from batchrunner.runner import RunOptions, RunSummary, run_job

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve_on_loopback(handler: Handler, *, ssl_context: ssl.SSLContext | None = None
                            ) -> tuple[web.ServerRunner, int]:
    """Serve ``handler`` on 127.0.0.1 at a free port: the runner (``cleanup()`` stops it) and
    the port."""
    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner, int(runner.addresses[0][1])


@contextlib.asynccontextmanager
async def serve_streams_on_loopback(handler: StreamHandler) -> AsyncIterator[int]:
    """Serve ``handler``, given each connection's raw bytes (asyncio streams: a server that
    writes what no HTTP server would), on 127.0.0.1 at a free port, its port; stopped on the
    way out."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


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
