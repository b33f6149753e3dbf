"""Start-up shared by the tests' own HTTP servers (the simulator has its own)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def serve_on_loopback(handler: Handler, *, ssl_context: ssl.SSLContext | None = None
                            ) -> tuple[web.ServerRunner, int]:
    """Serve ``handler`` on 127.0.0.1 at a free port: the runner (``cleanup()`` stops it) and
    the port."""
    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner, int(runner.addresses[0][1])
