"""The API key is read from the environment or ``.env`` and never written anywhere.

Jobs run with a known fake key through every error path the simulator can produce (and a server
that echoes the key back in its error bodies); then every file the run left behind, the Parquet
files decoded as well as their raw bytes, and everything printed on stdout and stderr is searched
for the key and for ``Bearer <key>``. Output files must be private to their owner (0600).
Everything binds 127.0.0.1; no request goes anywhere else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchrunner import progress
from batchrunner.cli import main
from batchrunner.client import SIMULATOR_HEADER
from batchrunner.runner import endpoint_warnings
from batchrunner.simulator import SimulatorConfig, SimulatorThread
from batchrunner.status import format_status
from tests.servers import serve_streams_on_loopback

KEY = "sk-test-SECRET-5f3a9c"
NEEDLES = (KEY, f"Bearer {KEY}", "SECRET-5f3a9c")

# Every failure the simulator can be asked for with a prompt marker, plus normal rows.
MARKERS = ["400", "404", "422", "500", "502", "504", "408", "409", "529", "503*1", "429*1",
           "html", "corrupt", "truncated", "reset", "no_usage", "no_choices", "cut", "no_done",
           "hang", "slow"]


pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def marker_csv(path: Path, markers: list[str], normal: int = 6) -> Path:
    rows = [{"id": f"ok{i}", "text": f"a normal row {i}"} for i in range(normal)]
    rows += [{"id": f"m-{m}", "text": f"row with a fault [[sim:{m}]]"} for m in markers]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def base_args(inp: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return ["run", "--input", str(inp), "--id-column", "id", "--prompt", "Answer: {text}",
            "--model", "gpt-4o-mini", "--max-tokens", "40", "--base-url", base_url,
            "--output", str(out), "--max-attempts", "2", "--timeout", "1", "--concurrency", "8",
            *extra]


def run_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
               echo_server: ThreadingHTTPServer, texts: list[str]
               ) -> tuple[pd.DataFrame, Any, Path]:
    """A job of a row a text (ids a, b, ...) against the echoing server, one attempt each,
    logged: its results by id, what it printed, and its output directory (exit 3: some
    rows fail)."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": list("abcdefgh"[:len(texts)]), "text": texts}).to_csv(inp, index=False)
    out = tmp_path / "out"
    code = main(base_args(inp, out, _echo_url(echo_server), "--progress", "log",
                          "--max-attempts", "1"))
    captured = capsys.readouterr()
    assert code == 3, captured.err
    return pd.read_parquet(out / "results.parquet").set_index("id"), captured, out


def leaks_in_files(root: Path, skip: tuple[str, ...] = (".env",),
                   needles: tuple[str, ...] = NEEDLES) -> list[str]:
    """Where under ``root`` the key (or ``needles``) shows up: raw bytes of every file, and
    decoded Parquet."""
    found: list[str] = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name in skip:
                continue
            path = Path(dirpath, name)
            data = path.read_bytes()
            found += [f"{path}: {n!r}" for n in needles if n.encode() in data]
            if name.endswith(".parquet"):
                # Values in Parquet are compressed: a byte search alone would miss them.
                text = json.dumps(pq.read_table(path).to_pylist(), default=str)
                found += [f"{path} (decoded): {n!r}" for n in needles if n in text]
    return found


def leaks_in_text(*texts: str) -> list[str]:
    return [f"{n!r} in output" for t in texts for n in NEEDLES if n in t]


def error_types(out: Path) -> set[str]:
    df = pd.read_parquet(out / "results.parquet")
    return {t for t in df["error_type"] if isinstance(t, str)}


@pytest.fixture
def logging_progress_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--progress log`` prints every 30 s; print on every row, so there are lines to search."""
    monkeypatch.setattr(progress.LogProgress.__init__, "__defaults__", (0.0,))


# -- every simulator error path ---------------------------------------------------------------


def test_error_paths_in_a_subprocess_leave_no_key(tmp_path: Path) -> None:
    inp = marker_csv(tmp_path / "in.csv", MARKERS)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    env["OPENAI_API_KEY"] = KEY
    config = SimulatorConfig(fault_retry_after_s=0.0, slow_ms=50, hang_s=30.0)
    with SimulatorThread(config) as sim:
        done = subprocess.run(
            [sys.executable, "-m", "batchrunner",
             *base_args(inp, out, sim.base_url, "--progress", "log")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    seen = error_types(out)
    assert {"http_400", "http_404", "http_500", "invalid_body"} <= seen, seen
    assert len(seen) >= 8, seen  # the paths really were taken
    assert leaks_in_text(done.stdout, done.stderr) == []
    assert leaks_in_files(tmp_path) == []


@pytest.mark.usefixtures("logging_progress_every_row")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_error_paths_in_process_leave_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stream: bool,
) -> None:
    inp = marker_csv(tmp_path / "in.csv", MARKERS)
    out = tmp_path / "out"
    config = SimulatorConfig(fault_retry_after_s=0.0, slow_ms=50, hang_s=30.0)
    with SimulatorThread(config) as sim:
        extra = ["--progress", "log", *(["--stream"] if stream else [])]
        code = main(base_args(inp, out, sim.base_url, *extra))
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "rows" in captured.err  # progress lines were printed, and searched
    assert len(error_types(out)) >= 6
    assert leaks_in_text(captured.out, captured.err) == []
    assert leaks_in_files(tmp_path) == []


def test_rejected_key_stops_with_exit_4_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    inp = marker_csv(tmp_path / "in.csv", [], normal=20)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(api_key="sk-the-server-wants-another-key")) as sim:
        code = main(base_args(inp, out, sim.base_url, "--progress", "log"))
        assert sim.stats()["responses_by_status"].get("401", 0) >= 1
    captured = capsys.readouterr()
    assert code == 4
    assert "refused the API key" in captured.out + captured.err
    assert leaks_in_text(captured.out, captured.err) == []
    assert leaks_in_files(tmp_path) == []


def test_quota_stops_with_exit_4_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    inp = marker_csv(tmp_path / "in.csv", ["quota"], normal=4)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig()) as sim:
        code = main(base_args(inp, out, sim.base_url, "--progress", "log", "--concurrency", "1"))
    captured = capsys.readouterr()
    assert code == 4
    assert "quota" in captured.out + captured.err
    assert leaks_in_text(captured.out, captured.err) == []
    assert leaks_in_files(tmp_path) == []


def test_quota_for_this_key_in_a_subprocess(tmp_path: Path) -> None:
    inp = marker_csv(tmp_path / "in.csv", [], normal=5)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    env["OPENAI_API_KEY"] = KEY
    with SimulatorThread(SimulatorConfig(quota_exhausted_keys=(KEY,))) as sim:
        done = subprocess.run(
            [sys.executable, "-m", "batchrunner",
             *base_args(inp, tmp_path / "out", sim.base_url, "--progress", "log")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    assert leaks_in_text(done.stdout, done.stderr) == []
    assert leaks_in_files(tmp_path) == []


# -- a server that echoes the key back -----------------------------------------------------------


def _logprobs(text: str) -> dict[str, Any]:
    """``text``'s log probabilities as a choice has them, a token each 4 characters."""
    return {"content": [{"token": text[i:i + 4], "logprob": -0.5, "bytes": None,
                         "top_logprobs": []} for i in range(0, len(text), 4)], "refusal": None}


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers like a careless gateway: error bodies quote the Authorization header."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reply_with_key(self, auth: str, key: str) -> None:
        """A 200 whose every field a server or a model fills quotes the key: the request id
        (header and body), the model, the finish_reason, the answer and its reasoning, tool
        calls and citations, and the log probabilities of its tokens."""
        reply = {"id": auth, "model": auth, "choices": [
            {"index": 0, "finish_reason": key, "logprobs": _logprobs(f"Your header was {auth}"),
             "message": {"role": "assistant", "content": f"Your header was {auth}",
                         "reasoning_content": f"They sent {auth.replace('Bearer', 'BeArEr')}",
                         "tool_calls": [{"id": key, "type": "function", "function": {
                             "name": "f", "arguments": json.dumps({"key": key})}}]}}],
            "citations": [f"https://example.com/?key={key}"],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", auth)
        self.end_headers()
        self.wfile.write(data)

    def _stream_with_key(self, key: str) -> None:
        """An answer that is the key, cut in two across the stream's events, each with its
        tokens' log probabilities."""
        half = len(key) // 2
        events = [{"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": end,
                                "logprobs": _logprobs(piece)}]}
                  for piece, end in ((key[:half], None), (key[half:], "stop"))]
        data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        self._send(200, data + b"data: [DONE]\n\n", "text/event-stream")

    def _part_of_key(self, prompt: str, key: str) -> None:
        """An error, or a reply's model and finish_reason, that quote part of the
        key (``key_parts``): without its first 3 characters or its last 4, 20 characters of its
        middle, or the whole key with the character in its middle changed."""
        parts = key_parts(key)
        changed = parts["before the change"] + "#" + parts["after the change"]
        if "echo-part-head" in prompt:
            err = {"error": {"message": f"bad request from {parts['without its head']}"}}
            self._send(400, json.dumps(err).encode(), "application/json")
        elif "echo-part-tail" in prompt:
            said = f"upstream failed for key {parts['without its tail']}"
            self._send(500, said.encode(), "text/plain")
        elif "echo-part-middle" in prompt:
            err = {"error": {"message": "upstream failed", "code": parts["its middle"]}}
            self._send(200, json.dumps(err).encode(), "application/json")
        elif "echo-part-changed" in prompt:
            self._send(422, json.dumps({"error": f"no such key {changed}"}).encode(),
                       "application/json")
        else:  # a reply
            reply = {"id": "x", "model": parts["without its tail"],
                     "choices": [{"index": 0, "finish_reason": changed, "message": {
                         "role": "assistant", "content": "fine"}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
            self._send(200, json.dumps(reply).encode(), "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        prompt = str(body.get("messages", [{}])[-1].get("content", ""))
        auth = self.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        if self.server.reject_all == 403:  # type: ignore[attr-defined]
            page = (f"<html><head><title>403 Forbidden: {auth}</title></head><body><pre>"
                    f"{self.headers}</pre></body></html>")
            self._send(403, page.encode(), "text/html")
        elif self.server.reject_all:  # type: ignore[attr-defined]
            err = {"error": {"message": f"Incorrect API key provided: {auth}",
                             "type": "invalid_request_error", "code": "invalid_api_key"}}
            self._send(401, json.dumps(err).encode(), "application/json")
        elif "echo-400" in prompt:
            err = {"error": {"message": f"Bad request (you sent {auth})", "type": "bad"}}
            self._send(400, json.dumps(err).encode(), "application/json")
        elif "echo-422" in prompt:
            self._send(422, json.dumps({"error": f"unprocessable for {auth}"}).encode(),
                       "application/json")
        elif "echo-500" in prompt:
            self._send(500, f"upstream failed; headers were Authorization: {auth}".encode(),
                       "text/plain")
        elif "echo-502" in prompt:
            page = f"<html><head><title>502 for {auth}</title></head><body>{auth}</body></html>"
            self._send(502, page.encode(), "text/html")
        elif "echo-long" in prompt:
            # The key straddles the 300-character cut the client makes in a plain-text body.
            filler = "x" * (302 - len(auth))
            self._send(500, f"{filler}{auth} and more text after it".encode(), "text/plain")
        elif "echo-200" in prompt:
            self._send(200, f"not json {auth}".encode(), "application/json")
        elif "echo-fields" in prompt:
            self._reply_with_key(auth, key)
        elif "echo-headers" in prompt:
            # A model told the request's headers, behind a proxy that passed its own on.
            reply = {"id": "h", "model": "gpt-4o-mini", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": json.dumps(dict(self.headers))}}]}
            self._send(200, json.dumps(reply).encode(), "application/json")
        elif "echo-stream" in prompt:
            self._stream_with_key(key)
        elif "echo-code" in prompt:
            # The key straddles the 80 characters of the code the message names.
            err = {"error": {"message": "upstream failed", "code": "x" * 70 + key}}
            self._send(200, json.dumps(err).encode(), "application/json")
        elif "echo-encoded" in prompt:
            forms = [auth.upper(), quote(auth, safe=""), base64.b64encode(auth.encode()).decode(),
                     base64.b64encode(key.encode()).decode(),
                     json.dumps(auth)[1:-1].replace("/", "\\/")]
            # Not JSON (its end is cut off): read as text, escapes and all.
            text = '{"error": {"message": "you sent ' + ", ".join(forms)
            self._send(400, text.encode(), "application/json")
        elif "echo-part" in prompt:
            self._part_of_key(prompt, key)
        else:
            reply = {"id": "x", "model": "gpt-4o-mini", "choices": [
                {"index": 0, "finish_reason": "stop", "logprobs": _logprobs("fine"),
                 "message": {"role": "assistant", "content": "fine"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
            self._send(200, json.dumps(reply).encode(), "application/json")


@pytest.fixture
def echo_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    server.reject_all = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _echo_url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.mark.usefixtures("logging_progress_every_row")
def test_a_server_echoing_the_key_does_not_get_it_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_server: ThreadingHTTPServer,
) -> None:
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f"],
                  "text": ["echo-400", "echo-422", "echo-500", "echo-502", "echo-200", "fine"]}
                 ).to_csv(inp, index=False)
    out = tmp_path / "out"
    code = main(base_args(inp, out, _echo_url(echo_server), "--progress", "log"))
    captured = capsys.readouterr()
    assert code == 3, captured.err
    df = pd.read_parquet(out / "results.parquet").set_index("id")
    assert df.loc["a", "error_type"] == "http_400"
    assert "[redacted]" in str(df.loc["a", "error_message"])  # the message is kept, minus the key
    assert df.loc["f", "status"] == "ok"
    assert leaks_in_text(captured.out, captured.err) == []
    assert leaks_in_files(tmp_path) == []


def key_forms(key: str) -> dict[str, str]:
    """``key`` as a server may echo it: as it is, in upper case, URL-encoded, JSON-escaped,
    base64-encoded alone or in its header (the characters only it decides), and its halves."""
    header = base64.b64encode(f"Bearer {key}".encode()).decode()
    return {"as it is": key, "upper case": key.upper(), "URL-encoded": quote(key, safe=""),
            "JSON-escaped": json.dumps(key)[1:-1].replace("/", "\\/"),
            "base64": base64.b64encode(key.encode()).decode()[:-4],
            "base64 header": header[12:-4], "first half": key[:len(key) // 2],
            "second half": key[len(key) // 2:]}


def forms_in_files(root: Path, key: str) -> list[str]:
    """Where under ``root`` a form of ``key`` shows up, in raw bytes or decoded Parquet."""
    found: list[str] = []
    for path in (p for p in root.rglob("*") if p.is_file() and p.name != "in.csv"):
        texts = [path.read_bytes().decode("utf-8", "replace")]
        if path.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        found += [f"{path}: {name}" for name, form in key_forms(key).items()
                  if any(form in t for t in texts)]
    return found


# Odd characters an API key may hold: "+", "/" and "=" (base64), "%", quotes, a backslash.
ODD_KEY = 'sk-odd+/=Key%41"quoted\\back~end'


@pytest.mark.usefixtures("logging_progress_every_row")
@pytest.mark.parametrize("key", [KEY, ODD_KEY], ids=["key", "odd-key"])
def test_a_key_echoed_in_any_field_or_form_is_written_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_server: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch, key: str,
) -> None:
    """A server that puts the key in a reply's id, x-request-id, model or finish_reason, an
    answer that repeats it (whole, in tool calls and citations, or cut across stream events),
    an error code longer than the part of it shown, and an error text that has it encoded: the
    results, reports, journal and output have none of it. The log probabilities of an answer
    that wrote it, which spell it a token at a time, are not kept; another answer's are."""
    monkeypatch.setenv("OPENAI_API_KEY", key)
    df, captured, _ = run_echoed(
        tmp_path, capsys, echo_server, ["echo-fields", "echo-stream", "echo-code",
                                        "echo-encoded", "fine"])
    assert list(df["status"]) == ["ok", "ok", "failed", "failed", "ok"]
    a = df.loc["a"]
    assert (a["request_id"], a["model"], a["finish_reason"]) == (
        "Bearer [redacted]", "Bearer [redacted]", "[redacted]")
    assert a["content"] == "Your header was Bearer [redacted]"  # the answer kept, minus the key
    assert "[redacted]" in a["reasoning_content"] and "[redacted]" in a["tool_calls"]
    assert "[redacted]" in a["citations"]
    assert df.loc["b", "content"] == "[redacted]"
    assert list(df["logprobs"].notna()) == [False, False, False, False, True]
    assert str(df.loc["c", "error_message"]).endswith("x[redacted])")
    assert str(df.loc["d", "error_message"]).count("[redacted]") == 5
    printed = captured.out + captured.err
    assert [name for name, form in key_forms(key).items() if form in printed] == []
    assert forms_in_files(tmp_path, key) == []


@pytest.mark.parametrize("key", ["token-abc123", "x"])
def test_a_short_key_echoed_as_its_header_is_written_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_server: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch, key: str,
) -> None:
    """A short key (a self-hosted server's, vLLM's example "token-abc123") is a word of an
    answer, kept there, but not where the answer repeats the request's header ("Your header
    was Bearer token-abc123": it was written so; "BeArEr x" in mixed case was), nor in an
    error's text as that header upper-cased or base64-encoded; nor a proxy's short password
    where an answer repeats the Proxy-Authorization header a proxy passed on ("Basic
    bWU6cHc=" was written so)."""
    monkeypatch.setenv("OPENAI_API_KEY", key)
    port = echo_server.server_address[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://me:pw@127.0.0.1:{port}")  # the server passes it on
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": list("abcd"),
                  "text": ["echo-fields", "echo-encoded", "echo-headers", "fine"]}
                 ).to_csv(inp, index=False)
    out = tmp_path / "out"
    code = main(base_args(inp, out, "http://gateway.invalid/v1", "--progress", "log",
                          "--max-attempts", "1"))
    captured = capsys.readouterr()
    assert code == 3, captured.err
    df = pd.read_parquet(out / "results.parquet").set_index("id")
    a = df.loc["a"]
    assert (a["request_id"], a["model"], a["finish_reason"]) == (
        "Bearer [redacted]", "Bearer [redacted]", "[redacted]")
    assert a["content"] == "Your header was Bearer [redacted]"
    assert a["reasoning_content"] == "They sent BeArEr [redacted]"
    message = str(df.loc["b", "error_message"])
    assert message.startswith("{\"error\": {\"message\": \"you sent BEARER [redacted], "
                              "Bearer%20[redacted], [redacted], "), message
    if len(key) >= 12:  # its own base64 is 16 characters or more: taken out too
        assert message.count("[redacted]") == 5, message
    headers = json.loads(df.loc["c", "content"])
    assert (headers["Authorization"], headers["Proxy-Authorization"]) == (
        "Bearer [redacted]", "Basic [redacted]")
    header = f"Bearer {key}"
    encoded = base64.b64encode(header.encode()).decode()
    proxy = base64.b64encode(b"me:pw").decode()

    def holds_header(text: str) -> bool:
        return header.lower() in text.lower() or encoded in text or proxy in text

    for path in (p for p in tmp_path.rglob("*") if p.is_file() and p.name != "in.csv"):
        texts = [path.read_bytes().decode("utf-8", "replace")]
        if path.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        assert not any(holds_header(t) for t in texts), path
    assert not holds_header(captured.out + captured.err)


def test_a_key_cut_by_the_message_limit_is_still_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_server: ThreadingHTTPServer,
) -> None:
    """A non-JSON error body is redacted before it is cut to the message limit, so a key that
    straddles the cut cannot survive in part."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": ["a"], "text": ["echo-long"]}).to_csv(inp, index=False)
    code = main(base_args(inp, tmp_path / "out", _echo_url(echo_server), "--progress", "none",
                          "--max-attempts", "1"))
    assert code == 3, capsys.readouterr().err
    message = str(pd.read_parquet(tmp_path / "out" / "results.parquet")["error_message"][0])
    assert KEY[:-2] not in message, message


PART_KEY = "sk-proj-Zq7vT2mXc9LbR4wKd8NfH3sYj6PgA1uE5oViB0tQx7Wn"


def key_parts(key: str) -> dict[str, str]:
    """Parts of ``key`` a server may quote, 16 characters or more each: without its first 3
    characters, without its last 4, 20 characters of its middle, and what stands before and
    after its middle character."""
    mid = len(key) // 2
    return {"without its head": key[3:], "without its tail": key[:-4],
            "its middle": key[mid - 10:mid + 10], "before the change": key[:mid],
            "after the change": key[mid + 1:]}


@pytest.mark.usefixtures("logging_progress_every_row")
def test_a_server_echoing_part_of_the_key_does_not_get_it_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_server: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that quotes part of the key (without its "sk-", without its last characters,
    20 characters of its middle, or the key with a character changed: the parts either side
    of it) in an error's text or code, or in a reply's model or finish_reason: each part is
    [redacted], and none is in the log, the results, the journal, the cost reports or the
    HTML report. (A reply's request id, new each reply and the server's own, is looked
    through for the whole key only: for its parts, most of a microsecond a reply.)"""
    monkeypatch.setenv("OPENAI_API_KEY", PART_KEY)
    df, captured, out = run_echoed(
        tmp_path, capsys, echo_server, ["echo-part-head", "echo-part-tail", "echo-part-middle",
                                        "echo-part-changed", "echo-part-fields"])
    assert list(df["status"]) == ["failed"] * 4 + ["ok"]
    assert df.loc["a", "error_message"] == "bad request from [redacted]"
    assert df.loc["b", "error_message"] == "upstream failed for key [redacted]"
    assert str(df.loc["c", "error_message"]).endswith("(code [redacted])")
    assert df.loc["d", "error_message"] == "no such key [redacted]#[redacted]"
    e = df.loc["e"]
    assert (e["model"], e["finish_reason"]) == ("[redacted]", "[redacted]#[redacted]")
    assert [n for n in ("cost_report.json", "cost_report.md", "report.html")
            if not (out / n).is_file()] == []
    assert list((out / "journal").glob("seg-*"))
    parts = key_parts(PART_KEY)
    printed = captured.out + captured.err
    assert "[redacted]" in printed
    assert [name for name, part in parts.items() if part in printed] == []
    assert leaks_in_files(tmp_path, needles=tuple(parts.values())) == []


@pytest.mark.parametrize(("key", "text"), [
    # OpenAI's masked form: the key's beginning, and its last 4 characters.
    (PART_KEY, f"Incorrect API key provided: sk-proj-{'*' * 40}{PART_KEY[-4:]}."),
    # The beginnings keys share, alone or with a few characters of the key after them.
    (PART_KEY, "keys begin sk- or sk-proj-; yours begins sk-proj-Zq7vT2m"),
    ("sk-or-v1-" + "5f3a9c0e7d1b" * 5, "an OpenRouter key, sk-or-v1-5f3a9c..."),
    ("sk-ant-api03-" + "Qm9vVzl4" * 12, "an Anthropic key, sk-ant-api03-Qm..."),
    # 15 characters of the key: its first, middle and last ones.
    (PART_KEY, f"{PART_KEY[:15]} {PART_KEY[20:35]} {PART_KEY[-15:]}"),
])
def test_a_text_sharing_fewer_than_16_characters_with_the_key_is_left_as_it_is(
        key: str, text: str) -> None:
    from batchrunner.client import ChatClient, holds_secret

    client = ChatClient("http://127.0.0.1:9/v1", key, timeout_s=1, connections=1)
    assert client.redact(text) == text
    assert client._scrub(text) == text
    assert not holds_secret(text, key)


def test_an_option_or_a_setting_holding_part_of_the_key_is_not_kept() -> None:
    """job.json holds back an option (kept for status's resume command) that holds 16
    characters or more of the key, and has them [redacted] in a request setting, as in a
    server's text; 15 of them, or "sk-proj-", are no secret. The job file's settings still
    match the run's."""
    from batchrunner.config import _same_setting
    from batchrunner.runner import _settings_without_key, _without_key

    parts = key_parts(PART_KEY)
    command: dict[str, Any] = {"options": {
        "prompt": f"Say {{text}} {parts['without its head']}",
        "from_column": [f"user={parts['its middle']}"], "model": "gpt-4o-mini",
        "output": f"out/{PART_KEY[:15]}", "max_tokens": 40}}
    _without_key(command, PART_KEY)
    held = "<not kept: it holds the API key>"
    assert command["options"] == {"prompt": held, "from_column": held, "model": "gpt-4o-mini",
                                  "output": f"out/{PART_KEY[:15]}", "max_tokens": 40}
    settings = {"model": "gpt-4o-mini", "extra": {
        "user": f"team {parts['without its tail']}", "metadata": {"note": "sk-proj-"}}}
    kept = _settings_without_key(settings, PART_KEY)
    assert kept == {"model": "gpt-4o-mini", "extra": {
        "user": "team [redacted]", "metadata": {"note": "sk-proj-"}}}
    assert _same_setting(kept, settings)


@pytest.mark.parametrize("source", ["environment", "job file's .env", "403 page"])
def test_a_401_echoing_the_key_stops_without_printing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], echo_server: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch, source: str, price_cache_dir: Path,
) -> None:
    """Whether the key is the environment's or read from the .env beside the job file under
    a gateway guide's name (``api_key_env``), the refusal, the reports, ``status`` and
    ``report`` after it, and the cache directory show none of it; nor for a gateway's 403
    page quoting the request's headers."""
    echo_server.reject_all = 403 if source == "403 page" else True  # type: ignore[attr-defined]
    inp = marker_csv(tmp_path / "in.csv", [], normal=5)
    out = tmp_path / "out"
    if source != "job file's .env":
        argv = base_args(inp, out, _echo_url(echo_server), "--progress", "log")
    else:
        monkeypatch.delenv("OPENAI_API_KEY")
        (tmp_path / "jobs").mkdir()
        (tmp_path / "jobs" / ".env").write_text(f"NBILITY_API_KEY={KEY}\n")
        (tmp_path / "jobs" / "job.toml").write_text(
            f'[input]\npath = "../in.csv"\nid_column = "id"\n[request]\nmodel = "gpt-4o-mini"\n'
            f'prompt = "Say {{text}}"\n[endpoint]\nbase_url = "{_echo_url(echo_server)}"\n'
            f'api_key_env = "NBILITY_API_KEY"\n[output]\ndir = "../out"\n')
        argv = ["run", str(tmp_path / "jobs" / "job.toml"), "--progress", "log"]
    code = main(argv)
    assert main(["status", str(out)]) == 0
    assert main(["report", str(out)]) == 4  # rows left to do
    captured = capsys.readouterr()
    assert code == 4
    printed = captured.out + captured.err
    assert "refused the API key" in printed and "[redacted]" in printed
    if source == "job file's .env":
        assert f"NBILITY_API_KEY from {tmp_path / 'jobs' / '.env'}" in printed
    if source == "403 page":
        assert "HTTP 403: HTML error page from the gateway (403 Forbidden: Bearer [redacted])" \
            in printed
    assert leaks_in_text(captured.out, captured.err) == []
    assert leaks_in_files(tmp_path) == []
    assert leaks_in_files(price_cache_dir) == []


def test_the_search_finds_a_planted_key(tmp_path: Path) -> None:
    """The checks above pass because the key is absent, not because the search is blind."""
    import pyarrow as pa

    pq.write_table(pa.table({"m": [f"x {KEY} y"] * 50}), tmp_path / "seg.parquet",
                   compression="zstd")
    (tmp_path / "log.txt").write_bytes(b"\x00\xffAuthorization: Bearer " + KEY.encode())
    found = leaks_in_files(tmp_path)
    assert any("seg.parquet (decoded)" in f for f in found)
    assert any("log.txt" in f and "Bearer" in f for f in found)
    assert leaks_in_text(f"oops {KEY}") != []


# -- where the key comes from ---------------------------------------------------------------------


def test_key_is_read_from_dotenv_in_the_current_directory(tmp_path: Path) -> None:
    """The key in ./.env is the one sent: every row answered 200 on its first try, no 401.
    (The requests' timeout is a minute: at base_args's second, a busy machine timed some
    out and sent them again, 9 answers for 5 rows.)"""
    inp = marker_csv(tmp_path / "in.csv", [], normal=5)
    (tmp_path / ".env").write_text(f"# the key for this project\nOPENAI_API_KEY={KEY}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        done = subprocess.run(
            [sys.executable, "-m", "batchrunner",
             *base_args(inp, tmp_path / "out", sim.base_url, "--progress", "log",
                        "--timeout", "60")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=100)
        assert done.returncode == 0, done.stderr
        assert sim.stats()["responses_by_status"] == {"200": 5}
    assert leaks_in_text(done.stdout, done.stderr) == []
    assert leaks_in_files(tmp_path) == []  # .env itself is skipped


def test_the_job_files_dotenv_wins_over_the_current_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A crontab's job runs from $HOME, where another project's .env names its endpoint and
    key: they were used over the jobs/.env beside the job file, and the night's job went to
    the other endpoint. The job file's .env wins."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    inp = marker_csv(tmp_path / "in.csv", [], normal=3)
    home, jobs = tmp_path / "home", tmp_path / "jobs"
    home.mkdir()
    jobs.mkdir()
    (home / ".env").write_text("OPENAI_API_KEY=sk-another-projects-key-0000\n"
                               "OPENAI_BASE_URL=http://127.0.0.1:9/v1\n")
    (jobs / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "gpt-4o-mini"\n'
        f'prompt = "{{text}}"\n[output]\ndir = "{tmp_path / "out"}"\n')
    monkeypatch.chdir(home)
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        (jobs / ".env").write_text(f"OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL={sim.base_url}\n")
        code = main(["run", str(jobs / "job.toml"), "--progress", "none"])
        assert code == 0, capsys.readouterr().err
        assert sim.stats()["responses_by_status"] == {"200": 3}


def test_environment_wins_over_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    inp = marker_csv(tmp_path / "in.csv", [], normal=3)
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-stale-key-from-dotenv\n")
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        code = main(base_args(inp, tmp_path / "out", sim.base_url, "--progress", "none"))
    assert code == 0, capsys.readouterr().err


# -- file modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_output_files_are_private_to_the_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str,
) -> None:
    inp = marker_csv(tmp_path / "in.csv", ["400"], normal=5)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig()) as sim:
        code = main(base_args(inp, out, sim.base_url, "--progress", "none", "--format", fmt))
    assert code == 3, capsys.readouterr().err
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"job.json", f"results.{fmt}", "cost_report.json", "cost_report.md"} <= names
    assert any(p.parent.name == "journal" and p.name.startswith("seg-") for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p} is {p.stat().st_mode:o}"
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, f"{d} is {d.stat().st_mode:o}"


# -- the plain-http warning -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "warns"),
    [
        ("http://10.0.0.1/v1", True),
        ("http://10.0.0.1:8000/v1", True),
        ("http://gateway.internal/v1", True),
        ("http://127.0.0.1:8000/v1", False),
        ("http://127.0.0.1/v1", False),
        ("http://localhost:8000/v1", False),
        ("http://[::1]:8000/v1", False),
        ("http://127.0.0.2:8000/v1", False),  # all of 127/8 is this machine
        ("http://vllm.localhost:8000/v1", False),
        ("http://LOCALHOST.:8000/v1", False),
        ("https://api.openai.com/v1", False),
        ("https://10.0.0.1/v1", False),
    ],
)
def test_plain_http_to_another_host_warns(url: str, warns: bool) -> None:
    warnings = endpoint_warnings(url)
    assert bool(warnings) is warns
    for w in warnings:
        assert "\n" not in w and "http://" in w and "unencrypted" in w
        assert all(n not in w for n in NEEDLES)


@pytest.mark.parametrize("url", [
    "http://user:PASSWORD-77@127.0.0.1:{port}/v1",
    "http://sk-SECRET-in-url@127.0.0.1:{port}/v1",
    "http://127.0.0.1:{port}/v1?key=QUERY-SECRET",
    "http://alice:pa/SLASH-SECRET@127.0.0.1:{port}/v1",  # not a URL's user info to a parser
    "http://alice:s3cr#HASH-SECRET@127.0.0.1:{port}/v1",
    "http://alice:1234/PORT-SECRET@127.0.0.1:{port}/v1",
])
def test_a_base_url_holding_a_secret_is_refused_without_showing_it(
        tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Credentials in the base URL are never sent (requests carry a Bearer key): refused
    before anything is sent, and the message hides what could be a secret."""
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    with SimulatorThread(SimulatorConfig()) as sim:
        url = url.format(port=sim.base_url.split(":")[-1].split("/")[0])
        code = main(base_args(inp, tmp_path / "out", url))
        assert sim.stats()["requests"] == 0
    said = capsys.readouterr()
    assert code == 2
    assert "--base-url must not" in said.err and "127.0.0.1" in said.err
    for secret in ("PASSWORD-77", "SECRET-in-url", "QUERY-SECRET", "SLASH-SECRET",
                   "HASH-SECRET", "PORT-SECRET", "s3cr"):
        assert secret not in said.out + said.err


def test_a_key_is_read_without_surrounding_whitespace_and_refused_with_a_space_inside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A key read with a trailing newline (a secret file's) works; a key with a space or a
    line break inside is refused before anything is sent, naming the variable, not the key."""
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        monkeypatch.setenv("OPENAI_API_KEY", f"  {KEY}\n")
        assert main(base_args(inp, tmp_path / "out", sim.base_url)) == 0
        monkeypatch.setenv("OPENAI_API_KEY", KEY.replace("-", "\n", 1))
        code = main(base_args(inp, tmp_path / "out2", sim.base_url))
        assert sim.stats()["requests"] == 2
    said = capsys.readouterr()
    assert code == 2
    assert ("OPENAI_API_KEY holds a space, a line break or another character no API key has "
            "(character 3 of 21); check its value") in said.err
    assert not any(n in said.out + said.err for n in (*NEEDLES, "SECRET"))


@pytest.mark.parametrize(("key", "text", "redacted"), [
    # A placeholder key (a local server's) is taken out where it stands alone, not from words.
    ("x", "through a company proxy (x) with key x", "through a company proxy ([redacted]) with "
     "key [redacted]"),
    ("x", "Incorrect API key provided: x.", "Incorrect API key provided: [redacted]."),
    ("abc", "Bearer abc, abcd, xabc, abc-1, abc_2, key=abc&x", "Bearer [redacted], abcd, xabc, "
     "abc-1, abc_2, key=[redacted]&x"),
    # After an escape (URL-encoded, or in a JSON body's text) it stands alone too: vLLM's
    # example key was left in these.
    ("token-abc123", "Bearer%20token-abc123, key%3Dtoken-abc123&x, \\ntoken-abc123, "
     "\\u0020token-abc123, ntoken-abc123", "Bearer%20[redacted], key%3D[redacted]&x, "
     "\\n[redacted], \\u0020[redacted], ntoken-abc123"),
    # A real key is taken out wherever it stands, inside a longer string too, and so is a run
    # of 16 characters or more of it (test_a_server_echoing_part_of_the_key_...).
    (KEY, f"echo:{KEY}x and {KEY[:-1]}", "echo:[redacted]x and [redacted]"),
    # A short key is taken out whole only, where it stands alone.
    ("sk-123", "sk-123, sk-1234, sk-12", "[redacted], sk-1234, sk-12"),
    # A short key's header base64-encoded, and its own base64 where that is 16 characters or
    # more, are taken out wherever they stand: they were left in an error's text.
    ("token-abc123", "you sent QmVhcmVyIHRva2VuLWFiYzEyMw== (dG9rZW4tYWJjMTIz, "
     "DG9RZW4TYWJJMTIZ, dG9rZW4tYWJjMTIz0)", "you sent [redacted] ([redacted], [redacted], "
     "[redacted]0)"),
    ("EMPTY", "you sent QmVhcmVyIEVNUFRZ, RU1QVFk=", "you sent [redacted], RU1QVFk="),
    ("x", "Authorization: QmVhcmVyIHg=; proxy", "Authorization: [redacted]; proxy"),
])
def test_redact_takes_a_short_key_out_only_where_it_stands_alone(
        key: str, text: str, redacted: str) -> None:
    from batchrunner.client import ChatClient

    client = ChatClient("http://127.0.0.1:9/v1", key, timeout_s=1, connections=1,
                        secrets=("p4ss",))
    assert client.redact(text) == redacted
    assert client.redact("user:p4ss@proxy, p4ssword") == "user:[redacted]@proxy, p4ssword"


@pytest.mark.parametrize(("text", "scrubbed"), [
    ("a bearer token, x marks it", "a bearer token, x marks it"),
    ("sent BeArEr x", "sent BeArEr [redacted]"),  # the case the search ignores, as a whole
    ("SENT Bearer X", "SENT Bearer [redacted]"),
    ("sent bearer%20X, BEARER\\u0020x; bearer xy", "sent bearer%20[redacted], "
     "BEARER\\u0020[redacted]; bearer xy"),
    ("İstanbul: Bearer x", "İstanbul: Bearer [redacted]"),  # "İ" is two letters lower case
])
def test_an_answer_repeating_a_short_key_s_header_in_any_case_has_the_key_taken_out(
        text: str, scrubbed: str) -> None:
    from batchrunner.client import ChatClient

    client = ChatClient("http://127.0.0.1:9/v1", "x", timeout_s=1, connections=1)
    assert client._scrub(text, answer=True) == scrubbed


@pytest.mark.parametrize("where", ["option", "job file"])
def test_a_key_written_where_its_variable_name_goes_is_refused_without_showing_it(
        tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``api_key_env = "sk-..."``: the key pasted in place of the variable's name. The message
    was "no API key: set sk-... in the environment", the key in the night's log."""
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    with SimulatorThread(SimulatorConfig()) as sim:
        if where == "option":
            argv = base_args(inp, tmp_path / "out", sim.base_url, "--api-key-env", KEY)
        else:
            job = tmp_path / "job.toml"
            job.write_text(f'[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\n'
                           f'prompt = "Say {{text}}"\n[endpoint]\nbase_url = "{sim.base_url}"\n'
                           f'api_key_env = "{KEY}"\n[output]\ndir = "out"\n')
            argv = ["run", str(job)]
        code = main(argv)
        assert sim.stats()["requests"] == 0
        assert main(["estimate", *argv[1:]]) == 2  # refused there too, before any estimate
    said = capsys.readouterr()
    assert code == 2
    assert "api_key_env" in said.err or "--api-key-env" in said.err
    assert "is not a variable name — is it the key itself?" in said.err
    assert leaks_in_text(said.out, said.err) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--rpm", "--max-cost", "--limit", "--format", "--progress"])
def test_a_key_given_as_an_options_value_is_not_shown_in_its_refusal(
        tmp_path: Path, option: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A key pasted after the wrong option, with no key in the environment to know it by:
    "--rpm takes a number, got 'sk-proj-...'" showed it whole in the log."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    key = "sk-proj-LEAKME7Q2w9XyZ4vB8nK3mP6tR1sD5fG0hJ"
    inp = marker_csv(tmp_path / "in.csv", [], normal=1)
    assert main([*base_args(inp, tmp_path / "out", "http://127.0.0.1:9/v1"), option, key]) == 2
    said = capsys.readouterr()
    assert said.err.startswith("batchrunner: error: ") and option in said.err, said.err
    assert "LEAKME" not in said.err + said.out and "[redacted]" in said.err


@pytest.mark.parametrize("option", ["--name", "--model"])
def test_a_key_given_as_the_jobs_name_or_model_is_refused_without_showing_it(
        tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The key pasted as the job's name or its model: status said the option was not kept, it
    holding the key, yet the progress, the summary, job.json, the reports (and, the model,
    every result row) wrote the key as it is. Refused now, before anything is sent or
    written."""
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    with SimulatorThread(SimulatorConfig()) as sim:
        argv = base_args(inp, tmp_path / "out", sim.base_url)
        code = main([*argv, option, f"night of {KEY}" if option == "--name" else KEY])
        assert sim.stats()["requests"] == 0
    said = capsys.readouterr()
    assert code == 2, said.err
    what = "the job's name" if option == "--name" else "the model"
    assert said.err.startswith(f"batchrunner: error: {what} (") and "holds the API key" in said.err
    assert leaks_in_text(said.out, said.err) == []
    assert not (tmp_path / "out").exists() or leaks_in_files(tmp_path / "out") == []


def test_a_key_that_is_an_identifier_where_its_variable_name_goes_is_not_shown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Keys of letters, digits and underscores (gsk_ and 52 of them, 32 alone) are Python
    identifiers: taken for a variable's name, such a key was shown, 'no API key: set gsk_...
    in the environment'."""
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    for key in ("gsk_" + "SECRET5f3a9cAbCd" * 3 + "x1y2", "SECRET5f3a9c" + "Ab9Zq8" * 4):
        assert main(base_args(inp, tmp_path / "out", "http://127.0.0.1:9/v1",
                              "--api-key-env", key)) == 2
        said = capsys.readouterr()
        assert "is not a variable name — is it the key itself?" in said.err
        assert key not in said.err and "SECRET" not in said.err


def test_a_variable_name_for_the_key_or_the_url_is_still_any_identifier(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        monkeypatch.setenv("my_gateway_key_2", KEY)
        monkeypatch.setenv("_GW_URL", sim.base_url)
        argv = base_args(inp, tmp_path / "out", "", "--api-key-env", "my_gateway_key_2",
                         "--base-url-env", "_GW_URL")
        argv.remove("--base-url")
        argv.remove("")
        assert main(argv) == 0
        assert sim.stats()["requests"] == 2


@pytest.mark.parametrize("variable", ["--base-url", "OPENAI_BASE_URL"])
def test_a_key_written_where_the_url_goes_is_refused_without_showing_it(
        tmp_path: Path, variable: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It was shown: "--base-url must be an http(s) URL ..., got 'sk-...'". (The key of
    another account, say: the one OPENAI_API_KEY holds is refused as such.)"""
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    other = KEY + "-2"
    if variable == "OPENAI_BASE_URL":
        monkeypatch.setenv("OPENAI_BASE_URL", other)
        argv = base_args(inp, tmp_path / "out", "")
        argv.remove("--base-url")
        argv.remove("")
    else:
        argv = base_args(inp, tmp_path / "out", other)
    assert main(argv) == 2
    said = capsys.readouterr()
    assert f"{variable} must be an http(s) URL" in said.err
    assert "(23 characters, not shown) is not a URL — is it the API key?" in said.err
    assert leaks_in_text(said.out, said.err) == []
    assert main(base_args(inp, tmp_path / "out", "localhost")) == 2  # not a key: shown
    assert "got 'localhost'" in capsys.readouterr().err


@pytest.mark.parametrize("value", [
    KEY + " ", "\t" + KEY + "\n",  # pasted with what was around it
    "5f3a9c" * 6 + ".SECRET5f3a9cAbCd",  # an <id>.<secret> key
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJTRUNSRVQtNWYzYTljIn0.SECRET-5f3a9c",
])
def test_a_key_of_another_shape_where_the_url_goes_is_not_shown_either(
        tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A key pasted with a space or a line break was shown by the refusal of a URL with
    spaces ('got 'sk-... ''), and one with a dot in it (an id and a secret, a token) as an
    attempt at a URL; a host name is still shown."""
    inp = marker_csv(tmp_path / "in.csv", [], normal=2)
    assert main(base_args(inp, tmp_path / "out", value)) == 2
    said = capsys.readouterr()
    assert "characters, not shown) is not a URL — is it the API key?" in said.err
    assert value.strip() not in said.err and "SECRET" not in said.err
    assert main(base_args(inp, tmp_path / "out", "api.example-gateway.com")) == 2
    assert "got 'api.example-gateway.com'" in capsys.readouterr().err


@pytest.mark.anyio
async def test_a_key_in_a_line_aiohttp_quotes_cut_is_taken_out_in_part() -> None:
    """A header line too long is quoted by aiohttp's error to its first 100 bytes and "...":
    a key that straddles the cut was left there in part ("yyy...sk-test-SECRET-5f3...")."""
    from batchrunner.client import ChatClient
    from batchrunner.errors import TransportError

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        line = b"x-echo: " + b"y" * 82 + KEY.encode() + b"y" * 9000
        writer.write(b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async with (serve_streams_on_loopback(answer) as port,
                ChatClient(f"http://127.0.0.1:{port}/v1", KEY, timeout_s=5,
                           connections=1) as client):
        with pytest.raises(TransportError) as caught:
            await client.complete({"model": "gpt-4o-mini", "messages": []})
    message = caught.value.message
    assert "Got more than" in message
    if "when reading: b'" in message:  # aiohttp 3.10 quotes none of the line, later ones do
        assert "y[redacted]..." in message
    assert KEY[:10] not in message and "SECRET" not in message


@pytest.mark.parametrize("setting", [
    f'api_key_env = ["{KEY}"]',
    f'base_url = ["https://gateway.example.com/v1?api-key={KEY}"]',
    f'base_url_env = {{ key = "{KEY}" }}',
])
def test_an_endpoint_setting_of_another_type_is_refused_without_showing_it(
        tmp_path: Path, setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A key written in a list where its variable's name goes was shown: "[endpoint]
    api_key_env must be a non-empty string, got ['sk-...']"."""
    marker_csv(tmp_path / "in.csv", [], normal=2)
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\n'
                   f'prompt = "Say {{text}}"\n[endpoint]\n{setting}\n[output]\ndir = "out"\n')
    assert main(["run", str(job)]) == 2
    said = capsys.readouterr()
    assert "must be a non-empty string, got a " in said.err and "(not shown" in said.err
    assert leaks_in_text(said.out, said.err) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["run", "job.toml", KEY],  # a key pasted after the job file
    ["run", f"OPENAI_API_KEY={KEY}"],  # a cron line's variable written after the command
    ["estimate", KEY],
    ["status", KEY],
    ["report", f"out/{KEY}"],
    ["run", "jobs/job.toml", "sk-gw-OTHER-7d1e0b"],  # the key in the .env beside the job file
])
def test_a_key_given_where_an_argument_goes_is_not_shown(
        tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A key given where a job file, an output directory or no argument goes was shown by
    the refusal ("run takes no argument 'sk-...'", "job file OPENAI_API_KEY=sk-...: not
    found"), in the night's log: a key the environment or a .env file the run reads holds is
    not."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {text}"\n'
        '[output]\ndir = "out"\n')
    (tmp_path / "jobs" / ".env").write_text("NBILITY_API_KEY=sk-gw-OTHER-7d1e0b\n")
    assert main(argv) == 2
    said = capsys.readouterr()
    assert any(hidden in said.err for hidden in (
        "[redacted]", "=... is a variable's setting", "looks like an API key (not shown)")), \
        said.err
    assert leaks_in_text(said.out, said.err) == [] and "OTHER" not in said.out + said.err
    assert main(["status", "out/no-such-run"]) == 2  # what is no key is still shown
    assert "out/no-such-run: no such directory" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["run", "--input", "in.csv", "--prompt", "{text}", "--model", "gpt-4o-mini", "--output",
      "out", "OPENAI_API_KEY=sk-proj-NotInTheEnvironment0123456789"],
     "OPENAI_API_KEY=... is a variable's setting, not an argument of run: put it before the "
     "command (OPENAI_API_KEY=... batchrunner run ...), export it, or write it in a .env file"),
    (["run", "jobs/job.toml", "NBILITY_API_KEY=sk-NotInTheEnvironment0123456789"],
     "NBILITY_API_KEY=... is a variable's setting, not an argument of run"),
    (["estimate", "sk-proj-NotInTheEnvironment0123456789"],
     "an argument of estimate looks like an API key (not shown): set it in OPENAI_API_KEY"),
])
def test_a_key_no_variable_holds_given_as_an_argument_is_not_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], said: str) -> None:
    """A key pasted after the command, in no variable or .env file the run reads (a newcomer's
    first try, a crontab's line): "job file OPENAI_API_KEY=sk-proj-...: not found" showed it
    whole, into the log. The argument is named as a variable's setting, or a key, and where
    it goes; its value is not shown."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.toml").write_text('[output]\ndir = "out"\n')
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "NotInTheEnvironment" not in err, err


def test_a_variable_named_as_a_secret_hides_no_word_of_a_message_it_was_not_given_as(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A variable named like a secret whose value is an ordinary word (SORT_KEY=customer_id)
    hid that word in every message: only a secret given where an argument goes is hidden."""
    monkeypatch.setenv("SORT_KEY", "customer_id")
    monkeypatch.chdir(tmp_path)
    assert main(["status", "out/customer_id"]) == 2
    assert "out/customer_id: no such directory" in capsys.readouterr().err


OTHER_KEY = "sk-ant-other-gateway-5f0c9e27d4b1"


def test_a_key_written_in_the_request_settings_is_not_kept_in_job_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key written into ``[request.extra]`` (``extra_headers``, as the OpenAI SDK takes an
    Authorization header) is sent in each body, as asked, but job.json, which keeps the
    request settings, had it whole; a rerun still finds the settings unchanged."""
    marker_csv(tmp_path / "in.csv", [], normal=3)
    job = tmp_path / "job.toml"
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        job.write_text(f'[input]\npath = "in.csv"\nid_column = "id"\n[request]\n'
                       f'model = "gpt-4o-mini"\nprompt = "Say {{text}}"\n[request.extra]\n'
                       f'extra_headers = {{ Authorization = "Bearer {KEY}", '
                       f'x-api-key = "{OTHER_KEY}", X-Title = "nightly" }}\n'
                       f'[endpoint]\nbase_url = "{sim.base_url}"\n[output]\ndir = "out"\n')
        assert main(["run", str(job), "--limit", "2", "--progress", "none"]) == 0
        # status, which compares the job file with job.json's settings, finds none changed
        assert "changed since" not in format_status(tmp_path / "out")
        # The model renamed in the job file: the refusal and status name it alone, not the
        # [request.extra] whose key job.json has [redacted] (they named "extra" too).
        job.write_text(job.read_text().replace("gpt-4o-mini", "gpt-4.1-mini"))
        change = "(model: 'gpt-4o-mini' → 'gpt-4.1-mini')"
        assert f"changed since the last run {change}" in format_status(tmp_path / "out")
        assert main(["run", str(job), "--progress", "none"]) == 2
        assert f"{tmp_path / 'out'} {change};" in capsys.readouterr().err
        job.write_text(job.read_text().replace("gpt-4.1-mini", "gpt-4o-mini"))
        assert main(["run", str(job), "--progress", "none"]) == 0  # the same settings
    said = capsys.readouterr()
    assert "changed" not in said.err, said.err
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["request"]["extra"] == {"extra_headers": {
        "Authorization": "Bearer [redacted]", "x-api-key": "[redacted]", "X-Title": "nightly"}}
    assert OTHER_KEY not in (tmp_path / "out" / "job.json").read_text()  # another gateway's
    assert leaks_in_text(said.out, said.err) == []
    assert leaks_in_files(tmp_path, skip=(".env", "job.toml")) == []


def test_an_option_holding_a_key_with_a_quote_or_a_backslash_is_held_back() -> None:
    """job.json's copy of the options is searched for the key in each text as it is: as
    JSON, an odd key's quote and backslash were escaped, it was not found and kept."""
    from batchrunner.runner import _without_key

    command: dict[str, Any] = {"options": {
        "prompt": f"Say {{text}} {ODD_KEY}", "from_column": [f"user={ODD_KEY}"],
        "model": "gpt-4o-mini", "max_tokens": 40}}
    _without_key(command, ODD_KEY)
    held = "<not kept: it holds the API key>"
    assert command["options"] == {"prompt": held, "from_column": held,
                                  "model": "gpt-4o-mini", "max_tokens": 40}


class _TurnsReal(BaseHTTPRequestHandler):
    """Answers as batchrunner simulate (its header) twice, then as a real endpoint."""

    answered = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).answered += 1
        body = json.dumps({
            "id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if type(self).answered <= 2:
            self.send_header(SIMULATOR_HEADER, "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_key_in_the_url_is_not_shown_by_the_stop_for_an_endpoint_that_changed_kind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The stop at an answer of another kind than the run's first names the endpoint: its
    URL, which may hold the key (a gateway taking it in the path), is shown redacted, in the
    stop line, job.json, the reports and status. (And the answer not kept, which the real
    endpoint billed, counts at what its usage says it cost.)"""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TurnsReal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        inp = marker_csv(tmp_path / "in.csv", [], normal=5)
        url = f"http://127.0.0.1:{server.server_address[1]}/u/{KEY}/v1"
        code = main(base_args(inp, tmp_path / "out", url, "--concurrency", "1"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    said = capsys.readouterr()
    assert code == 4, said.err
    assert "no longer answers as batchrunner simulate" in said.out, said.out
    assert "[redacted]" in said.out
    assert leaks_in_text(said.out, said.err, format_status(tmp_path / "out")) == []
    assert leaks_in_files(tmp_path) == []
    # The real endpoint's answer not kept was billed: its cost counts, from its usage.
    cost = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert cost["cost_to_do_attempts_usd"] == pytest.approx((5 * 0.15 + 1 * 0.60) / 1e6)
