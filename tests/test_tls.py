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


# A job's requests over TLS, posted past the session (ChatClient._post) once the first is
# answered: the same head on the wire as the session's, bodies from a few bytes to several TLS
# records and more than a socket buffer holds, every one answered. In a fresh interpreter, as
# above, for SSL_CERT_FILE to be the CA bundle read.
POSTS = r"""
import asyncio, json, sys
from batchrunner.client import ChatClient
from batchrunner.eventloop import loop_factory

async def main():
    sizes, direct = [10, 100_000, 10, 3_000_000, 10], []
    async with ChatClient(sys.argv[1], "sk-tls-test", timeout_s=30, connections=2) as client:
        for size in sizes:
            body = {"model": "m", "messages": [{"role": "user", "content": "x" * size}]}
            result = await client.complete(body)
            direct.append(client._target is not None)
            assert result.content == f"{size} characters", result.content
    print(json.dumps(direct))

with asyncio.Runner(loop_factory=loop_factory()) as runner:
    runner.run(main())
"""


@pytest.mark.anyio
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_requests_over_tls_past_the_session_are_written_whole_as_the_sessions(
        tmp_path: Path, event_loop: str) -> None:
    from tests.test_odd_servers import _posts_past_the_session
    ca = trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    heads: list[list[tuple[bytes, bytes]]] = []

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        heads.append([(k, b"<length>" if k == b"Content-Length" else v)
                      for k, v in request.raw_headers])
        body = json.loads(await request.content.read())  # past request.read()'s 1 MiB limit
        text = f"{len(body['messages'][0]['content'])} characters"
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    server, port = await serve_on_loopback(answer, ssl_context=server_context(ca))
    try:
        with anyio.fail_after(60):
            proc = await anyio.run_process(
                [sys.executable, "-c", POSTS, f"https://127.0.0.1:{port}/v1"],
                env={**os.environ, "SSL_CERT_FILE": ca_file,
                     "BATCHRUNNER_EVENT_LOOP": event_loop}, check=False)
    finally:
        await server.cleanup()
    assert proc.returncode == 0, proc.stderr.decode()
    past = _posts_past_the_session()
    assert json.loads(proc.stdout) == [past] * 5  # the first one the session's
    assert len(heads) == 5 and heads[1:] == [heads[0]] * 4
    assert (b"Authorization", b"Bearer sk-tls-test") in heads[0]
