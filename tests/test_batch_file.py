"""A job moved off the OpenAI Batch API: its request JSONL run as it is, against the built-in
simulator and servers of the tests' own on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchrunner.template import body_image_tokens, image_tokens
from tests.test_cli import cli, one_error_line

KEY = "sk-test-batch-file-0123456789"

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def batch_line(custom_id: str, **body: Any) -> dict[str, Any]:
    """One line of a Batch API input file: a chat completion request of ``body`` (a model and
    a user message unless it says otherwise)."""
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Say hello to {custom_id}"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body}


def write_batch(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def batch_args(tmp_path: Path, *extra: str, out: str = "out") -> list[str]:
    """``run`` of ``batch.jsonl`` against the built-in simulator, into ``out``."""
    return ["run", "--input", str(tmp_path / "batch.jsonl"), "--simulator",
            "--output", str(tmp_path / out), "--progress", "none", *extra]


def test_rows_cut_at_max_tokens_are_answered_again_by_raising_it_in_their_bodies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # A batch file's rows carry their own max_tokens: --max-tokens is refused for them, so the
    # summary tells what does work, and it does: the rows whose body changed are sent again.
    write_batch(tmp_path / "batch.jsonl", [batch_line("a", max_completion_tokens=1),
                                           batch_line("b", max_tokens=1),
                                           batch_line("c", max_tokens=4000)])
    code, out, err = cli(capsys, *batch_args(tmp_path))
    assert code == 0, err
    assert ("  warning: 2 rows cut at max_tokens (finish_reason=length): to answer them again "
            "with a larger one, raise max_completion_tokens (or max_tokens) in their bodies "
            "and rerun: rows whose body changed are sent again\n") in out, out
    assert "--max-tokens" not in out
    write_batch(tmp_path / "batch.jsonl", [batch_line("a", max_completion_tokens=4000),
                                           batch_line("b", max_tokens=4000),
                                           batch_line("c", max_tokens=4000)])
    code, out, err = cli(capsys, *batch_args(tmp_path))
    assert code == 0, err
    assert "2 requests sent this run" in out and "cut at max_tokens" not in out


@pytest.mark.parametrize("left_out", [["method"], ["url"], ["custom_id"], ["method", "url"]])
def test_a_first_line_that_lacks_a_batch_field_is_named_as_a_batch_file_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], left_out: list[str],
) -> None:
    # Read as a JSONL file of prompts, it was told to pass --prompt, where one key of the
    # batch line is all it lacks (line 2 lacking it was named, as a batch file's). Lines of
    # only custom_id and body (as --help described a batch file) were told so too, and
    # --prompt-column body then sent each request's body as the user's text.
    first = batch_line("a")
    for key in left_out:
        del first[key]
    write_batch(tmp_path / "batch.jsonl", [first, batch_line("b")])
    code, _, err = cli(capsys, *batch_args(tmp_path))
    assert code == 2
    assert one_error_line(err).endswith(
        f"line 1 has no '{left_out[0]}' — every line of an OpenAI batch file needs custom_id, "
        "method, url and body"), err
    assert not (tmp_path / "out" / "journal").exists()


@pytest.mark.parametrize("url", ["/v1/embeddings", "/v1/responses"])
def test_a_line_for_another_endpoint_says_what_to_do_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str,
) -> None:
    other = {**batch_line("b"), "url": url}
    write_batch(tmp_path / "batch.jsonl", [batch_line("a"), other, batch_line("c")])
    code, _, err = cli(capsys, *batch_args(tmp_path))
    assert code == 2
    assert one_error_line(err).endswith(
        f"line 2: url is '{url}' — batchrunner sends /v1/chat/completions requests only: move "
        "the lines for other endpoints to a file of their own (for the Batch API)"), err
    assert not (tmp_path / "out" / "journal").exists()


def test_rows_that_ask_for_logprobs_have_them_in_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # The Batch API's output has each choice's logprobs: a row whose body asks for them has
    # them in the results' logprobs column, with its own top_logprobs; a row that does not
    # has none, and a file whose rows never ask has no such column.
    write_batch(tmp_path / "batch.jsonl", [
        batch_line("a", logprobs=True, top_logprobs=2), batch_line("b", logprobs=True),
        batch_line("c", logprobs=False)])
    code, out, err = cli(capsys, *batch_args(tmp_path))
    assert code == 0, err
    assert "logprobs" not in out + err
    got = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert [r["custom_id"] for r in got] == ["a", "b", "c"]
    a, b = (json.loads(r["logprobs"]) for r in got[:2])
    assert "".join(t["token"] for t in a) == got[0]["content"]
    assert {len(t["top_logprobs"]) for t in a} == {2} and {len(t["top_logprobs"]) for t in b} == {0}
    assert got[2]["logprobs"] is None

    write_batch(tmp_path / "batch.jsonl", [batch_line("d")])
    code, out, err = cli(capsys, *batch_args(tmp_path, out="plain"))
    assert code == 0, err
    assert "logprobs" not in pq.read_table(tmp_path / "plain" / "results.parquet").column_names


@pytest.mark.parametrize("text", [None, 7, {"value": "hi"}])
def test_a_text_part_that_is_not_text_is_sent_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: Any,
) -> None:
    # A generator's missing value written as null (or a number) in a content part: the run and
    # the estimate crashed on it (the prompt's tokens were counted from its text); the row is
    # now sent as it is, for the endpoint to answer or refuse, and the other rows go on.
    parts = [{"type": "text", "text": text}, {"type": "text", "text": "Say hello"}]
    write_batch(tmp_path / "batch.jsonl", [
        batch_line("a", messages=[{"role": "user", "content": parts}]), batch_line("b")])
    code, out, err = cli(capsys, "estimate", *batch_args(tmp_path)[1:-2])  # no --progress
    assert code == 0, err
    assert "rows: 2 in the input, 0 already done, 2 to send" in out
    code, out, err = cli(capsys, *batch_args(tmp_path))
    assert code in (0, 3), err
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("custom_id")
    assert df.loc["b", "status"] == "ok" and df.loc["a", "status"] in ("ok", "failed")
    assert df.loc["a", "attempts"] == 1


def test_the_estimate_counts_a_body_s_tools_and_schema_as_prompt_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # An API bills the tools' definitions, a json_schema and the earlier turns' tool calls as
    # prompt tokens: a batch whose rows carry 40 functions each was estimated (and held against
    # the budget and the token rate) at the messages' few tokens alone.
    tools = [{"type": "function", "function": {
        "name": f"lookup_{i}", "description": "Look up the order's shipping status " * 4,
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                       "required": ["order_id"]}}} for i in range(40)]
    schema = {"type": "json_schema", "json_schema": {"name": "label", "schema": {
        "type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(60)}}}}
    call = [{"id": "call_1", "type": "function",
             "function": {"name": "lookup_0", "arguments": json.dumps({"order_id": "x" * 4000})}}]
    turns = [{"role": "user", "content": "Hi"},
             {"role": "assistant", "content": None, "tool_calls": call},
             {"role": "tool", "tool_call_id": "call_1", "content": "shipped"}]
    write_batch(tmp_path / "batch.jsonl", [batch_line("a", tools=tools, max_tokens=10),
                                           batch_line("b", response_format=schema, max_tokens=10),
                                           batch_line("c", messages=turns, max_tokens=10)])
    code, out, err = cli(capsys, "estimate", *batch_args(tmp_path)[1:-2])  # no --progress
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("gpt-4o"))
    size = sum(len(json.dumps(x, separators=(",", ":"))) for x in (tools, schema, call))
    assert int(row[2].replace(",", "")) >= size // 4, out


def readme_block(after: str) -> str:
    """The README's first Python code block after the text ``after``."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```python\n", readme.index(after)) + len("```python\n")
    return readme[start:readme.index("```\n", start)]


def test_the_readme_turns_the_results_into_the_batch_api_s_output_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    tool = {"type": "function", "function": {"name": "record", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    write_batch(tmp_path / "batch.jsonl", [
        batch_line("plain"), batch_line("three", n=3, max_tokens=40),
        batch_line("call", tools=[tool],
                   tool_choice={"type": "function", "function": {"name": "record"}}),
        batch_line("refused", messages=[{"role": "user", "content": "no [[sim:400]]"}])])
    out_dir = tmp_path / "out" / "reviews"  # the README's
    code, _, err = cli(capsys, *batch_args(tmp_path, out="out/reviews"))
    assert code == 3, err
    exec(readme_block("The results turn into the Batch API's output lines"), {})
    lines = {x["custom_id"]: x for x in map(json.loads, (out_dir / "batch_output.jsonl")
                                             .read_text().splitlines())}
    df = pd.read_parquet(out_dir / "results.parquet").set_index("custom_id")
    assert list(lines) == ["plain", "three", "call", "refused"]
    for key in ("plain", "three", "call"):
        line, row = lines[key], df.loc[key]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["request_id"] == row["request_id"]
        body = line["response"]["body"]
        assert body["model"] == row["model"] == "gpt-4o-mini"
        assert body["usage"]["prompt_tokens"] == row["prompt_tokens"]
        assert body["usage"]["completion_tokens"] == row["completion_tokens"]
        assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        first = body["choices"][0]
        assert first["index"] == 0 and first["finish_reason"] == row["finish_reason"]
        assert first["message"]["role"] == "assistant"
        assert first["message"]["content"] == (None if pd.isna(row["content"])
                                               else row["content"])
    assert [c["index"] for c in lines["three"]["response"]["body"]["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"]
                for c in lines["three"]["response"]["body"]["choices"]}) == 3
    calls = lines["call"]["response"]["body"]["choices"][0]["message"]["tool_calls"]
    assert calls == json.loads(df.loc["call", "tool_calls"])
    assert calls[0]["function"]["name"] == "record"
    assert "tool_calls" not in lines["plain"]["response"]["body"]["choices"][0]["message"]
    assert lines["refused"]["response"] is None
    assert lines["refused"]["error"] == {"code": "http_400",
                                         "message": df.loc["refused", "error_message"]}


def test_a_budget_over_rows_that_set_no_max_tokens_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # A job's settings without max_tokens are warned about with max_cost_usd, its budget no
    # bound; a batch file's rows set their own, and were not.
    write_batch(tmp_path / "batch.jsonl", [batch_line("a", max_tokens=50), batch_line("b"),
                                           batch_line("c")])
    code, out, err = cli(capsys, *batch_args(tmp_path, "--max-cost", "5"))
    assert code == 0, err
    said = [line for line in (out + err).splitlines() if "max_cost_usd" in line]
    assert said == [
        "batchrunner: warning: row b: max_cost_usd is set but the body sets no "
        "max_completion_tokens (or max_tokens): with no bound on a reply's length, each request "
        "is held against the budget at the replies' mean length so far (256 tokens to start), "
        "so the spend may pass the budget by up to the requests in flight, the concurrency's "
        "worth, each as long as its reply runs (a thinking model's reasoning is output too) — "
        "set max_completion_tokens in the bodies to make the budget a bound"], out + err
    write_batch(tmp_path / "batch.jsonl", [batch_line("a", max_tokens=50),
                                           batch_line("b", max_completion_tokens=50)])
    code, out, err = cli(capsys, *batch_args(tmp_path, "--max-cost", "5", out="out2"))
    assert code == 0, err
    assert "max_cost_usd" not in out + err


def test_a_model_the_server_does_not_serve_says_to_set_it_in_the_bodies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # The batch moved from the Batch API to a server of one's own (vLLM serving its Hugging
    # Face path): every body still asks for gpt-4o-mini. The 404s named the models served and
    # said to set the job's model, which a batch file refuses (--model).
    served = "meta-llama/Llama-3.1-8B-Instruct"
    write_batch(tmp_path / "batch.jsonl", [batch_line(f"r{i}") for i in range(3)])
    job = tmp_path / "job.toml"
    job.write_text(f'name = "moved"\n[input]\npath = "batch.jsonl"\n[endpoint]\n'
                   f'simulator = true\n[output]\ndir = "out"\n[simulator]\nmodels = ["{served}"]\n')
    code, out, err = cli(capsys, "run", str(job), "--progress", "none")
    assert code == 3, err
    assert (f"— the endpoint serves {served}: set the \"model\" of the bodies to one of them"
            in out), out
    assert "the job's model" not in out


def test_the_estimate_counts_an_image_at_its_least_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # A vision batch (a photo and a few words a row) was estimated at the words' tokens alone,
    # where an API bills each image 85 tokens at the least (OpenAI's low detail; GPT-4o mini,
    # the model here, 2,833; the built-in simulator bills as OpenAI does).
    look = [{"role": "user", "content": [
        {"type": "text", "text": "Hi"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}]}]
    write_batch(tmp_path / "batch.jsonl", [batch_line(f"r{i}", messages=look, max_tokens=5)
                                           for i in range(3)])
    code, out, err = cli(capsys, "estimate", *batch_args(tmp_path)[1:-2])  # no --progress
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("gpt-4o"))
    estimated = int(row[2].replace(",", ""))
    code, _, err = cli(capsys, *batch_args(tmp_path))
    assert code == 0, err
    billed = int(pd.read_parquet(tmp_path / "out" / "results.parquet")["prompt_tokens"].sum())
    assert estimated >= 3 * 2 * 85 and billed <= estimated <= 2 * billed, (estimated, billed)


def test_a_job_s_image_column_is_estimated_as_the_batch_file_s_images_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    pd.DataFrame({"id": ["a", "b"], "photo": ["https://example.com/a.png", None]}).to_csv(
        tmp_path / "in.csv", index=False)
    code, out, err = cli(capsys, "estimate", "--input", str(tmp_path / "in.csv"),
                         "--id-column", "id", "--prompt", "Hi", "--image-column", "photo",
                         "--model", "gpt-4o-mini", "--simulator", "--output", str(tmp_path / "o"))
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("gpt-4o"))
    # One row has an image, the other none; GPT-4o mini bills an image by URL at least 2,833.
    assert 2833 < int(row[2].replace(",", "")) < 2 * 2833, out


@pytest.mark.parametrize(("custom_id", "said"), [
    (2, 'custom_id is 2 — it must be a non-empty string: write it as "2"'),
    (2.5, 'custom_id is 2.5 — it must be a non-empty string: write it as "2.5"'),
    ("", "custom_id is '' — it must be a non-empty string"),
    (None, "custom_id is None — it must be a non-empty string"),
])
def test_a_custom_id_that_is_not_text_says_how_to_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], custom_id: Any, said: str,
) -> None:
    write_batch(tmp_path / "batch.jsonl", [batch_line("a"), {**batch_line("b"),
                                                             "custom_id": custom_id}])
    code, _, err = cli(capsys, *batch_args(tmp_path))
    assert code == 2
    assert one_error_line(err).endswith(f"line 2: {said}"), err


@pytest.mark.parametrize("messages", [5, True, 1.5])
def test_a_body_whose_messages_are_a_number_is_refused_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], messages: Any,
) -> None:
    # The prompt's tokens were counted by iterating the messages: a number crashed the run.
    # Then such a row was sent, for every API's 400: the file is refused before any is.
    write_batch(tmp_path / "batch.jsonl", [batch_line("a", messages=messages), batch_line("b")])
    code, _, err = cli(capsys, *batch_args(tmp_path))
    assert code == 2, err
    assert f"line 1: body has messages {messages!r} — a chat completion's body needs a list " \
        "of them" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_a_repeated_custom_id_is_named_by_the_lines_an_editor_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # A batch file written with a blank line between its records: the repeat was named by its
    # rows (1 and 4), where the editor the user opens the file in shows lines 1 and 7.
    text = "\n\n".join(json.dumps(batch_line(c)) for c in ("a", "b", "c", "a")) + "\n"
    (tmp_path / "batch.jsonl").write_text(text)
    code, _, err = cli(capsys, *batch_args(tmp_path))
    assert code == 2
    assert one_error_line(err).endswith(
        "id 'a' appears more than once in column 'custom_id' (lines 1 and 7); ids must be "
        "unique"), err
    assert [n for n, line in enumerate(text.splitlines(), 1) if '"a"' in line] == [1, 7]
    assert not (tmp_path / "out" / "journal").exists()


def test_rows_with_any_choice_cut_at_max_tokens_are_counted_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Bodies asking for n = 3 answers with a max_tokens near the simulator's mean reply: the
    # summary and the report counted the rows whose first choice was cut, and told nothing of
    # those whose second or third was.
    write_batch(tmp_path / "batch.jsonl", [batch_line(f"r{i}", n=3, max_tokens=40)
                                           for i in range(40)])
    code, out, err = cli(capsys, *batch_args(tmp_path))
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    first = int((df["finish_reason"] == "length").sum())
    cut = sum(any(c["finish_reason"] == "length" for c in json.loads(x)) for x in df["choices"])
    assert first < cut, (first, cut)  # the rows this is about are there
    assert f"  warning: {cut} rows cut at max_tokens (finish_reason=length)" in out, out
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["rows"]["cut_at_length"] == cut


def _estimated_prompt_tokens(out: str) -> int:
    """The prompt tokens of the model row of ``estimate``'s table."""
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("gpt-4o"))
    return int(row[2].replace(",", ""))


def _toml(value: Any) -> str:
    """``value`` as a TOML value (the JSON of a string is a TOML basic string)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return json.dumps(value)


def test_a_job_s_own_tools_and_schema_are_estimated_as_a_batch_body_s_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # The same requests as a CSV job with [request.extra] tools and response_format, and as a
    # batch file: the job's were estimated at their prompts' few tokens, the batch file's with
    # the 40 functions and the schema each request is billed for.
    tools = [{"type": "function", "function": {
        "name": f"lookup_{i}", "description": "Look up the order's shipping status " * 4,
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}}
        for i in range(40)]
    schema = {"type": "json_object"}
    texts = ["Find order 17", "Find order 18", "Find order 19"]
    own = [{"type": "function", "function": {"name": "only_this_row"}}]
    pd.DataFrame({"id": ["a", "b", "c"], "text": texts,
                  "own": [None, json.dumps(own), None]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        'name = "tools"\n[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "{text}"\nmax_tokens = 10\n'
        f"[request.extra]\ntools = {_toml(tools)}\nresponse_format = {_toml(schema)}\n"
        '[request.from_columns]\ntools = "own"\n'
        '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
    code, out, err = cli(capsys, "estimate", str(tmp_path / "job.toml"))
    assert code == 0, err
    job = _estimated_prompt_tokens(out)
    write_batch(tmp_path / "batch.jsonl", [
        batch_line(key, messages=[{"role": "user", "content": text}], max_tokens=10,
                   tools=row_tools, response_format=schema)
        for key, text, row_tools in zip("abc", texts, [tools, own, tools], strict=True)])
    code, out, err = cli(capsys, "estimate", *batch_args(tmp_path)[1:-2])  # no --progress
    assert code == 0, err
    batch = _estimated_prompt_tokens(out)
    assert batch >= 2 * len(json.dumps(tools, separators=(",", ":"))) // 4, out
    assert abs(job - batch) <= 3, (job, batch)  # a token a row: the parts' rounding


def _png(width: int, height: int, *, pixels: bool = False) -> bytes:
    """A grey PNG of that size: whole with ``pixels``, else its header and an empty IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = zlib.compress(b"\0" * (width + 1) * height) if pixels else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                                 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _jpeg(width: int, height: int) -> bytes:
    """A JPEG's segments up to its (progressive) frame header, behind 40 kB of EXIF data."""
    exif = b"Exif\0\0" + b"\0" * 40_000
    return (b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
            + b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00")


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 24


def _webp(width: int, height: int) -> bytes:
    """A lossy WebP's header."""
    return (b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x00\x00\x00\x9d\x01\x2a"
            + struct.pack("<HH", width, height) + b"\x00" * 10)


def _webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | (height - 1) << 14
    return (b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f" + bits.to_bytes(4, "little")
            + b"\x00" * 10)


def _data_url(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


@pytest.mark.parametrize("make", [_png, _jpeg, _gif, _webp, _webp_lossless])
def test_an_image_at_high_detail_is_estimated_by_its_tiles(make: Any) -> None:
    # OpenAI's documented examples: 1024 × 1024 is scaled to 768 × 768, 4 tiles, 765 tokens;
    # 2048 × 4096 to 768 × 1536, 6 tiles, 1105; 4096 × 8192 to the same. A small image is not
    # scaled up (one tile), and low detail is 85 whatever the size.
    for (width, height), tokens in [((1024, 1024), 765), ((2048, 4096), 1105),
                                    ((4096, 8192), 1105), ((500, 300), 255)]:
        url = _data_url(make(width, height))
        assert image_tokens({"url": url, "detail": "high"}) == tokens, (width, height)
        assert image_tokens({"url": url}) == tokens  # auto, the default: as high
        assert image_tokens({"url": url, "detail": "low"}) == 85


@pytest.mark.parametrize("url", ["https://example.com/a.png", "data:image/png;base64,iVBORw0K",
                                 "data:image/png;base64,%%%%", "data:text/plain,hello"])
def test_an_image_of_unknown_size_is_estimated_at_its_least(url: str) -> None:
    assert image_tokens({"url": url, "detail": "high"}) == 85


@pytest.mark.parametrize(("model", "tokens"), [
    ("gpt-4o", 765), ("openai/gpt-4o-2024-08-06", 765), ("gpt-4.1", 765),
    ("gpt-4o-mini", 2833 + 4 * 5667), ("openai/gpt-4o-mini-2024-07-18", 2833 + 4 * 5667),
    ("o1", 75 + 4 * 150), ("o3", 75 + 4 * 150), ("computer-use-preview", 65 + 4 * 129),
    ("gpt-4.1-mini", math.ceil(1024 * 1.62)), ("gpt-4.1-nano", math.ceil(1024 * 2.46)),
    ("o4-mini", math.ceil(1024 * 1.72)), ("gpt-5", 70 + 4 * 140), ("gpt-5-chat-latest", 630),
    ("openai/gpt-5-mini", math.ceil(1024 * 1.62)), ("gpt-5-nano", math.ceil(1024 * 2.46)),
    ("claude-sonnet-4", 765)])
def test_an_image_is_estimated_at_its_models_own_rate(model: str, tokens: int) -> None:
    # OpenAI bills a 1024 × 1024 photo at 765 prompt tokens on GPT-4o, at 25,501 on GPT-4o mini
    # (a budget held it at 765: 33 times too little), and by 32-pixel patches times a
    # multiplier on GPT-4.1 and GPT-5 mini and nano and o4-mini, at 630 on GPT-5; other models
    # are estimated as GPT-4o.
    url = _data_url(_png(1024, 1024))
    assert image_tokens({"url": url, "detail": "high"}, model) == tokens
    assert body_image_tokens({"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]}) == tokens


def test_a_patch_models_large_image_is_scaled_down_to_1536_patches() -> None:
    # OpenAI's documented example: 1800 × 2400 needs 57 × 75 patches, more than 1,536; scaled
    # to 1056 × 1408 it takes 33 × 44 = 1,452, times gpt-4.1-mini's 1.62.
    url = _data_url(_png(1800, 2400))
    assert image_tokens({"url": url}, "gpt-4.1-mini") == math.ceil(1452 * 1.62)
    # Low detail is a tile model's setting: a patch model counts the patches whatever it says,
    # and at an unknown size, one patch (the least).
    assert image_tokens({"url": url, "detail": "low"}, "gpt-4.1-nano") == math.ceil(1452 * 2.46)
    assert image_tokens({"url": "https://example.com/a.png"}, "o4-mini") == 2
    assert image_tokens({"url": url, "detail": "low"}, "gpt-4o-mini") == 2833


def test_the_estimate_counts_a_photo_sent_as_a_data_url_by_its_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # A vision batch of 1024 × 1024 photos at high detail, each billed 765 tokens by OpenAI, was
    # estimated (and held against max_cost_usd) at 85 tokens a photo.
    photo = _data_url(_png(1024, 1024, pixels=True))
    look = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this photo?"},
        {"type": "image_url", "image_url": {"url": photo, "detail": "high"}}]}]
    write_batch(tmp_path / "batch.jsonl", [batch_line(f"r{i}", messages=look, max_tokens=5)
                                           for i in range(3)])
    code, out, err = cli(capsys, "estimate", *batch_args(tmp_path)[1:-2])  # no --progress
    assert code == 0, err
    assert _estimated_prompt_tokens(out) >= 3 * 765, out


def test_rows_sent_with_both_token_limits_before_such_files_were_refused_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A run refuses a file with a body setting max_tokens and max_completion_tokens; `report`
    # still rebuilds the results of the run that sent such a row (answered 400) before.
    from batchrunner import io as bio

    write_batch(tmp_path / "batch.jsonl", [
        batch_line("a"), batch_line("b", max_tokens=5, max_completion_tokens=5)])
    with monkeypatch.context() as m:  # as a run sent them then
        m.setattr(bio.InputSource, "refuse_unsendable",
                  property(lambda self: False, lambda self, value: None))
        code, _, err = cli(capsys, *batch_args(tmp_path))
    assert code == 3, err
    (tmp_path / "out" / "results.parquet").unlink()
    code, _, err = cli(capsys, "report", str(tmp_path / "out"))
    assert code == 3, err
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("custom_id")
    assert df.loc["a", "status"] == "ok" and df.loc["b", "error_type"] == "http_400"
    code, _, err = cli(capsys, *batch_args(tmp_path))  # a run now names it
    assert code == 2 and "line 2: body sets both max_tokens and max_completion_tokens" in err


def test_the_estimate_of_bodies_that_name_no_model_says_to_name_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # It said to add [prices.""] for them: a model to name, not a price to set.
    lines = [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": "hi"}]}},
             {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "my-local-model", "messages": [{"role": "user", "content": "hi"}]}}]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out, _ = cli(capsys, "estimate", "--input", str(inp), "--output", str(tmp_path / "o"))
    assert code == 0
    assert ('unknown for my-local-model: add [prices."my-local-model"] with input and output '
            "(USD per 1M tokens), to a job file; unknown for the row whose body names no model: "
            'name one in it ("model")') in out, out
    assert '[prices.""]' not in out
