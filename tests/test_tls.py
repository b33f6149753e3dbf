"""aiohttp's default TLS contexts read their CA certificates when first used (batchrunner.tls):
a run's start-up skips the system's CA bundle, and a TLS connection still verifies against it."""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path

import anyio
import pytest
import trustme
from aiohttp import web

from tests.servers import serve_on_loopback

# Run in a fresh interpreter: the tests' own process imported aiohttp long before. Its first
# import is batchrunner.client's, as in ``batchrunner run``.
CHILD = r"""
import asyncio, json, ssl, sys
import batchrunner.client
import aiohttp, aiohttp.connector as connector
from batchrunner.eventloop import loop_factory

verified, unverified = connector._SSL_CONTEXT_VERIFIED, connector._SSL_CONTEXT_UNVERIFIED
def cas(context):
    return context.cert_store_stats()["x509_ca"]
seen = {"at_import": [cas(verified), cas(unverified)],
        "class_as_it_was": "set_default_verify_paths" not in vars(ssl.SSLContext),
        "made_after_import": cas(ssl.create_default_context())}

async def get(url, **kwargs):
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url, **kwargs) as response:
                return response.status
        except aiohttp.ClientConnectorCertificateError:
            return "certificate refused"

async def main():
    seen["trusted"] = await get(sys.argv[1])
    seen["other_ca"] = await get(sys.argv[2])
    seen["other_ca_unverified"] = await get(sys.argv[2], ssl=False)
    seen["after"] = [cas(verified), cas(unverified)]

with asyncio.Runner(loop_factory=loop_factory()) as runner:
    runner.run(main())
print(json.dumps(seen))
"""


async def ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="fine")


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.mark.anyio
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_default_contexts_load_the_cas_at_the_first_connection_and_verify_against_them(
        tmp_path: Path, event_loop: str) -> None:
    ca, other = trustme.CA(), trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    trusted, trusted_port = await serve_on_loopback(ok, ssl_context=server_context(ca))
    stranger, stranger_port = await serve_on_loopback(ok, ssl_context=server_context(other))
    try:
        with anyio.fail_after(60):
            proc = await anyio.run_process(
                [sys.executable, "-c", CHILD, f"https://127.0.0.1:{trusted_port}/",
                 f"https://127.0.0.1:{stranger_port}/"],
                env={**os.environ, "SSL_CERT_FILE": ca_file,
                     "BATCHRUNNER_EVENT_LOOP": event_loop}, check=False)
    finally:
        await trusted.cleanup()
        await stranger.cleanup()
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(proc.stdout)
    assert seen["at_import"] == [0, 0]  # the CA bundle not read as aiohttp was imported
    assert seen["class_as_it_was"] and seen["made_after_import"] == 1
    assert seen["trusted"] == 200
    assert seen["other_ca"] == "certificate refused"  # verified, against SSL_CERT_FILE's CA
    assert seen["other_ca_unverified"] == 200
    assert seen["after"] == [1, 1]
