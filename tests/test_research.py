"""An evaluation job as a researcher runs one: ``n`` samples a row, sampling settings, a schema,
several models, reruns of the rows whose answers failed a check, the results read in pandas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web

import batchrunner.cli
from batchrunner import runner
from batchrunner.config import load_job
from batchrunner.estimate import estimate
from batchrunner.report import format_usd
from tests.servers import run_job_file

KEY = "sk-test-research-0123456789"

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = batchrunner.cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_job(tmp_path: Path, *, request: str = "temperature = 0.7\n",
              extra: str = "n = 3\nseed = 42\n", rows: int = 6) -> Path:
    """An evaluation job of ``rows`` questions against the built-in simulator."""
    pd.DataFrame({"qid": [f"q{i}" for i in range(rows)],
                  "question": [f"What is {i} + {i}?" for i in range(rows)]}).to_csv(
        tmp_path / "questions.csv", index=False)
    job = tmp_path / "eval.toml"
    job.write_text(
        'name = "eval"\n[input]\npath = "questions.csv"\nid_column = "qid"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Answer: {question}"\n'
        f"{request}[request.extra]\n{extra}"
        '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
    return job


# -- n > 1 without max_tokens: a reply's completion tokens are every choice's ------------------


def test_estimate_after_answers_with_n_counts_each_reply_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A reply's ``completion_tokens`` count all ``n`` of its choices: the estimate from the
    answers so far took their mean times ``n`` again, 3 x the cost of the rows left at n = 3."""
    job = write_job(tmp_path)
    code, _, err = cli(capsys, "run", str(job), "--limit", "3", "--progress", "none")
    assert code == 0, err
    done = pd.read_parquet(tmp_path / "out" / "results.parquet")
    mean = done["completion_tokens"].dropna().mean()
    assert done["choices"].notna().sum() == 3
    assert "logprobs" not in done.columns  # not asked for: no column

    est = estimate(runner.prepare(load_job(job, {}), runner.RunOptions(), tidy=False))
    (m,) = est.by_model.values()
    assert m.rows == 3
    assert m.completion_tokens == 3 * int(mean)


def test_a_run_holds_a_replys_mean_tokens_once_not_n_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows with no max_tokens are held against the tokens a minute and the budget at the
    replies' mean so far; that mean is of whole replies, all n choices, so it is not
    multiplied by n once more."""
    charged: list[int] = []
    real = runner._Run._tokens

    def tokens(self: Any, item: Any) -> tuple[int, int]:
        got = real(self, item)
        if self.learnt_completions:
            charged.append(got[1])
        return got

    monkeypatch.setattr(runner._Run, "_tokens", tokens)
    job = write_job(tmp_path)
    code, _, err = cli(capsys, "run", str(job), "--concurrency", "1", "--max-cost", "5",
                       "--progress", "none")
    assert code == 0, err
    done = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert charged, "no request was held at the learnt mean"
    assert max(charged) <= done["completion_tokens"].max()


# -- a sampling setting the API refuses: one line before any request -------------------------


@pytest.mark.parametrize(("extra", "message"), [
    ("n = 0", "[request.extra] n must be greater than 0, got 0"),
    ('n = "3"', "[request.extra] n must be an integer, got '3'"),
    ("n = 2.0", "[request.extra] n must be an integer, got 2.0"),
    ("seed = 4.2", "[request.extra] seed must be an integer, got 4.2"),
    ('seed = "42"', "[request.extra] seed must be an integer, got '42'"),
    ("top_logprobs = -1", "[request.extra] top_logprobs must not be negative, got -1"),
    ("max_completion_tokens = 0", "[request.extra] max_completion_tokens must be greater than 0, "
                                  "got 0"),
    ("temperature = 3", "[request.extra] temperature must be at most 2, got 3"),
    ('top_p = "0.9"', "[request.extra] top_p must be a number, got '0.9'"),
    ("frequency_penalty = true", "[request.extra] frequency_penalty must be a number, got True"),
    ("frequency_penalty = 5", "[request.extra] frequency_penalty must be from -2 to 2, got 5"),
    ("presence_penalty = -2.5", "[request.extra] presence_penalty must be from -2 to 2, got -2.5"),
    ('logprobs = "yes"', "[request.extra] logprobs must be true or false, got 'yes'"),
    ("top_logprobs = 3", "[request.extra] top_logprobs needs logprobs = true beside it in "
                         "[request.extra]"),
    ("top_logprobs = 3\nlogprobs = false", "[request.extra] top_logprobs needs logprobs = true "
                                           "beside it in [request.extra]"),
])
def test_a_bad_sampling_setting_in_extra_is_one_line_and_nothing_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, message: str,
) -> None:
    """[request.extra] is sent as it is: a value of the wrong kind or out of the API's range
    was sent with every row, each answered 400 (the first 20 rows' failures then stopping
    the job), where the same setting in [request] is refused before anything is sent."""
    job = write_job(tmp_path, request="", extra=extra + "\n")
    for command in ("run", "estimate"):
        code, out, err = cli(capsys, command, str(job),
                             *(["--progress", "none"] if command == "run" else []))
        assert code == 2 and out == ""
        assert err == f"batchrunner: error: job file {job}: {message}\n"
    assert not (tmp_path / "out").exists()


def test_good_sampling_settings_in_extra_are_sent_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    job = write_job(tmp_path, rows=2, request="top_p = 0.9\n", extra=(
        "n = 2\nseed = -7\nlogprobs = true\ntop_logprobs = 0\nfrequency_penalty = -0.5\n"
        "presence_penalty = 1\nmax_completion_tokens = 40\n"))
    code, _, err = cli(capsys, "run", str(job), "--progress", "none")
    assert code == 0, err
    done = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (done["status"] == "ok").all() and done["choices"].notna().all()


# -- a server that ignores n: every row's choices are a list all the same ----------------------


async def _one_choice(request: web.BaseRequest) -> web.StreamResponse:
    """A server that answers one choice whatever ``n`` asks (as many local servers do)."""
    body = await request.json()
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    if not body.get("stream"):
        return web.json_response({
            "id": "c", "object": "chat.completion", "model": body["model"], "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "four"},
                         "finish_reason": "stop"}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for chunk in ({"choices": [{"index": 0, "delta": {"content": "four"}}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": usage}):
        await resp.write(b"data: " + json.dumps({"model": body["model"], **chunk}).encode()
                         + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.mark.parametrize("stream", [False, True])
def test_a_server_that_ignores_n_leaves_one_choice_in_each_rows_choices(
    tmp_path: Path, stream: bool,
) -> None:
    """README: `choices` holds every choice with n > 1. From a server that sent one choice
    where n = 3 asked, it was null, so the researcher's ``json.loads(row.choices)`` failed on
    those rows, and nothing in the results said fewer samples came; it is now the list of the
    one choice sent, as long as what came."""
    job = write_job(tmp_path, rows=2, request="stream = true\n" if stream else "")
    anyio.run(run_job_file, _one_choice, job, runner.RunOptions(progress="none"))
    done = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (done["status"] == "ok").all()
    for text in done["choices"]:
        assert json.loads(text) == [{"index": 0, "content": "four", "finish_reason": "stop"}]


def _choices_server(sent: int) -> Any:
    """A server that answers ``sent`` choices whatever ``n`` asks."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        usage = {"prompt_tokens": 5, "completion_tokens": 2 * sent, "total_tokens": 5 + 2 * sent}
        if not body.get("stream"):
            return web.json_response({
                "id": "c", "object": "chat.completion", "model": body["model"], "usage": usage,
                "choices": [{"index": i, "message": {"role": "assistant", "content": "four"},
                             "finish_reason": "stop"} for i in range(sent)]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunks = [{"choices": [{"index": i, "delta": {"content": "four"}}]} for i in range(sent)]
        chunks += [{"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}
                   for i in range(sent)]
        for chunk in (*chunks, {"choices": [], "usage": usage}):
            await resp.write(b"data: " + json.dumps({"model": body["model"], **chunk}).encode()
                             + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return handler


@pytest.mark.parametrize(("stream", "sent", "fewer"), [
    (False, 1, 3), (True, 1, 3), (False, 2, 3), (False, 3, 0), (True, 3, 0)])
def test_rows_answered_with_fewer_choices_than_n_asked_are_counted_and_said(
    tmp_path: Path, stream: bool, sent: int, fewer: int,
) -> None:
    """A researcher asking n = 3 of a server that sends fewer choices got rows whose
    ``choices`` held fewer samples, and nothing in the summary, the reports or ``status``
    said so. They now count those rows and warn once; a server that sends all n says
    nothing."""
    from batchrunner.status import format_status

    job = write_job(tmp_path, rows=3, request="stream = true\n" if stream else "")
    s = anyio.run(run_job_file, _choices_server(sent), job, runner.RunOptions(progress="none"))
    out = tmp_path / "out"
    done = pd.read_parquet(out / "results.parquet")
    assert (done["status"] == "ok").all()
    assert [len(json.loads(c)) for c in done["choices"]] == [sent] * 3
    said = (f"{fewer} rows got fewer choices than the n = 3 asked (the server ignores n?): "
            "their choices column holds those that came")
    report = json.loads((out / "cost_report.json").read_text())
    assert report["rows"]["fewer_choices"] == fewer
    texts = {"summary": runner.format_summary(s), "status": format_status(out),
             "cost_report.json": "\n".join(report["warnings"]),
             "cost_report.md": (out / "cost_report.md").read_text()}
    for where, text in texts.items():
        assert text.count(said) == (1 if fewer else 0), where
        if not fewer:
            assert "fewer choices" not in text, where


def test_a_job_of_n_1_reads_no_choices_for_the_reports_or_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The count of rows with fewer choices than n asked costs a job of n = 1 nothing: its
    rows' choices are not looked at."""
    from batchrunner import compute

    counted: list[object] = []
    real = compute.count_substring
    monkeypatch.setattr(compute, "count_substring",
                        lambda *a, **k: counted.append(a) or real(*a, **k))
    job = write_job(tmp_path, rows=2, extra="seed = 42\n")
    code, out, err = cli(capsys, "run", str(job), "--progress", "none")
    assert code == 0, err
    code, out, err = cli(capsys, "status", str(tmp_path / "out"))
    assert code == 0, err
    assert counted == [] and "fewer choices" not in out


# -- logprobs: kept when asked, streamed or not, through a rerun ------------------------------


def read_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_logprobs_asked_for_are_kept_for_every_choice_streamed_or_not_and_through_a_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A job asking for logprobs (a classifier's confidence) gets them: ``logprobs`` holds
    choice 0's tokens, each with its ``top_logprobs``, and each entry of ``choices`` its
    own; a stream's chunks' are joined to the same; a rerun keeps the earlier rows'."""
    job = write_job(tmp_path, rows=4, request="max_tokens = 6\n",
                    extra="n = 2\nseed = 42\nlogprobs = true\ntop_logprobs = 2\n")
    code, _, err = cli(capsys, "run", str(job), "--limit", "2", "--format", "jsonl",
                       "--progress", "none")
    assert code == 0, err
    code, _, err = cli(capsys, "run", str(job), "--format", "jsonl", "--progress", "none")
    assert code == 0, err
    rows = read_results(tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok"] * 4
    for r in rows:
        tokens = json.loads(r["logprobs"])
        assert "".join(t["token"] for t in tokens) == r["content"]
        for t in tokens:
            assert -4 <= t["logprob"] <= 0 and bytes(t["bytes"]).decode() == t["token"]
            assert [x["logprob"] for x in t["top_logprobs"]] == sorted(
                (x["logprob"] for x in t["top_logprobs"]), reverse=True)
            assert len(t["top_logprobs"]) == 2 and t["top_logprobs"][0]["token"] == t["token"]
        choices = json.loads(r["choices"])
        assert len(choices) == 2 and choices[0]["logprobs"] == tokens
        assert "".join(t["token"] for t in choices[1]["logprobs"]) == choices[1]["content"]

    code, _, err = cli(capsys, "run", str(job), "--stream", "--format", "jsonl",
                       "--output", str(tmp_path / "streamed"), "--progress", "none")
    assert code == 0, err
    streamed = read_results(tmp_path / "streamed")
    assert [(r["logprobs"], r["choices"]) for r in streamed] == [
        (r["logprobs"], r["choices"]) for r in rows]


# -- a schema with n > 1: every choice is checked ---------------------------------------------


async def _one_bad_sample(request: web.BaseRequest) -> web.StreamResponse:
    """n choices, valid JSON but for the last choice of the question about 1, cut short."""
    body = await request.json()
    bad = "1 + 1" in body["messages"][-1]["content"]
    n = body["n"]
    choices = [{"index": i, "message": {"role": "assistant", "content": '{"answer": 2}'},
                "finish_reason": "stop"} for i in range(n)]
    if bad:
        choices[-1].update(message={"role": "assistant", "content": '{"ans'},
                           finish_reason="length")
    return web.json_response({
        "id": "c", "object": "chat.completion", "model": body["model"], "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": 5 * n, "total_tokens": 5 + 5 * n}})


def test_a_schema_checks_every_choice_and_a_row_fails_with_the_choice_that_does_not_match(
    tmp_path: Path,
) -> None:
    """With n = 3 only choice 0 was checked against the schema: a row whose other samples
    were not JSON was ok. Every choice is checked now; the row fails naming the choice (and
    why it was cut), and ``json_`` columns are choice 0's."""
    (tmp_path / "answer.schema.json").write_text(json.dumps({
        "type": "object", "properties": {"answer": {"type": "integer"}},
        "required": ["answer"]}))
    job = write_job(tmp_path, rows=3, request='schema_file = "answer.schema.json"\n')
    anyio.run(run_job_file, _one_bad_sample, job, runner.RunOptions(progress="none"))
    done = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(done["status"]) == ["ok", "failed", "ok"]
    assert done["json_answer"].tolist()[::2] == [2, 2] and done["json_answer"].isna()[1]
    failed = done.iloc[1]
    assert failed["error_type"] == "invalid_json"
    assert failed["error_message"].startswith(
        "choice 2: the reply was cut at max_tokens (finish_reason=length): "), failed
    assert len(json.loads(failed["choices"])) == 3  # the samples kept, as paid for


async def _fenced_samples(request: web.BaseRequest) -> web.StreamResponse:
    """n choices, each its JSON in a Markdown code block after a few words (as a model
    asked for JSON through a gateway that drops response_format answers)."""
    body = await request.json()
    n = body["n"]
    return web.json_response({
        "id": "c", "object": "chat.completion", "model": body["model"],
        "choices": [{"index": i, "finish_reason": "stop", "message": {
            "role": "assistant", "content": f'Here it is:\n```json\n{{"answer": {i}}}\n```'}}
                    for i in range(n)],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5 * n, "total_tokens": 5 + 5 * n}})


def test_an_ok_rows_choices_hold_their_json_without_the_fence_as_its_content_does(
    tmp_path: Path,
) -> None:
    """``content`` was choice 0's JSON, its fence dropped, but ``choices`` kept every choice's
    fence and words: json.loads of a sample of an ok row failed. Each is its JSON now."""
    (tmp_path / "answer.schema.json").write_text(json.dumps({
        "type": "object", "properties": {"answer": {"type": "integer"}},
        "required": ["answer"]}))
    job = write_job(tmp_path, rows=2, request='schema_file = "answer.schema.json"\n')
    anyio.run(run_job_file, _fenced_samples, job, runner.RunOptions(progress="none"))
    done = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(done["status"]) == ["ok", "ok"]
    assert done["content"].tolist() == ['{"answer": 0}'] * 2
    for choices in done["choices"]:
        assert [json.loads(c["content"]) for c in json.loads(choices)] == [
            {"answer": 0}, {"answer": 1}, {"answer": 2}]


async def _second_sample_refused(request: web.BaseRequest) -> web.StreamResponse:
    """n choices of valid JSON, but the model refuses choice 1 of the question about 1
    (``message.refusal``, no content), streamed or not."""
    body = await request.json()
    refused = "1 + 1" in body["messages"][-1]["content"]
    n = body["n"]
    usage = {"prompt_tokens": 5, "completion_tokens": 5 * n, "total_tokens": 5 + 5 * n}
    choices = [{"index": i, "message": {"role": "assistant", "content": '{"answer": 2}'},
                "finish_reason": "stop"} for i in range(n)]
    if refused:
        choices[1]["message"] = {"role": "assistant", "content": None,
                                 "refusal": "I can't help with that."}
    if not body.get("stream"):
        return web.json_response({"id": "c", "object": "chat.completion",
                                  "model": body["model"], "choices": choices, "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def send(chunk: dict[str, Any]) -> None:
        await resp.write(b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk",
                                                 "model": body["model"], **chunk}).encode()
                         + b"\n\n")

    for c in choices:
        message = c["message"]
        for delta in ({"role": "assistant", "content": ""},
                      {"refusal": message["refusal"]} if "refusal" in message
                      else {"content": message["content"]}):
            await send({"choices": [{"index": c["index"], "delta": delta,
                                     "finish_reason": None}]})
        await send({"choices": [{"index": c["index"], "delta": {}, "finish_reason": "stop"}]})
    await send({"choices": [], "usage": usage})
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.mark.parametrize("stream", [False, True])
def test_a_sample_the_model_refused_fails_the_row_as_a_refusal_with_its_words(
    tmp_path: Path, stream: bool,
) -> None:
    """With n = 3, a refusal of choice 1 was a failed ``invalid_json`` row ("the reply is not
    JSON (Input is a zero-length, empty document ...)"), the refusal's words nowhere. It is a
    ``refusal`` now, naming the choice and its words, which its entry in ``choices`` keeps."""
    (tmp_path / "answer.schema.json").write_text(json.dumps({
        "type": "object", "properties": {"answer": {"type": "integer"}},
        "required": ["answer"]}))
    job = write_job(tmp_path, rows=3, request='schema_file = "answer.schema.json"\n'
                    + ("stream = true\n" if stream else ""))
    anyio.run(run_job_file, _second_sample_refused, job, runner.RunOptions(progress="none"))
    done = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(done["status"]) == ["ok", "failed", "ok"]
    failed = done.iloc[1]
    assert (failed["error_type"], failed["error_message"]) == (
        "refusal", "choice 1: the model refused: I can't help with that.")
    assert json.loads(failed["choices"])[1] == {
        "index": 1, "content": None, "finish_reason": "stop",
        "refusal": "I can't help with that."}
    assert "refusal" not in json.loads(done.iloc[0]["choices"])[1]


def _recording(sent: list[tuple[str, int]]) -> Any:
    """``_one_bad_sample``, but 400 for the question about 2, each request's question and n
    recorded in ``sent``."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        question = body["messages"][-1]["content"]
        sent.append((question, body["n"]))
        if "2 + 2" in question:
            return web.json_response({"error": {"message": "bad", "type": "invalid_request_error"}},
                                     status=400)
        return await _one_bad_sample(request)

    return handler


@pytest.mark.parametrize("per_row", [False, True], ids=["job", "column"])
def test_a_retry_of_a_row_failed_by_one_choice_is_said_to_ask_all_n_again_and_its_cost(
    tmp_path: Path, per_row: bool,
) -> None:
    """A row of n = 3 failed by its third choice: --retry-failed asks all 3 again, its two
    usable ones replaced and paid for again, and nothing said so (the advice was to rerun with
    --retry-failed "to send the failed rows again"). The summary, the reports and ``status``
    now say it, with what the answers cost; a row failed with no answer (a 400) is not
    counted. The retry does as said: n = 3 sent, the cost paid again, the first in
    ``earlier_cost_usd``."""
    from batchrunner.status import format_status

    (tmp_path / "answer.schema.json").write_text(json.dumps({
        "type": "object", "properties": {"answer": {"type": "integer"}},
        "required": ["answer"]}))
    schema = 'schema_file = "answer.schema.json"\n'
    if per_row:
        job = write_job(tmp_path, rows=3, request=schema + 'from_columns = { n = "k" }\n',
                        extra="seed = 42\n")
        questions = pd.read_csv(tmp_path / "questions.csv").assign(k=3)
        questions.to_csv(tmp_path / "questions.csv", index=False)
    else:
        job = write_job(tmp_path, rows=3, request=schema)
    sent: list[tuple[str, int]] = []
    s = anyio.run(run_job_file, _recording(sent), job, runner.RunOptions(progress="none"))
    out = tmp_path / "out"
    done = pd.read_parquet(out / "results.parquet").set_index("qid")
    assert list(done["status"]) == ["ok", "failed", "failed"]
    assert list(done["error_type"])[1:] == ["invalid_json", "http_400"]
    paid = done.loc["q1", "cost_usd"]
    assert paid > 0
    what = "n = 3 choices" if not per_row else "the n choices each asked"
    said = (f"--retry-failed asks again for all {what} of the 1 row that failed by a choice, "
            "not only for the choices that failed: its usable choices are replaced, not kept, "
            f"and paid for again (about {format_usd(paid)}, what its answers cost; the "
            "cost so far is kept in earlier_cost_usd)")
    report = json.loads((out / "cost_report.json").read_text())
    assert report["rows"]["failed_with_choices"] == 1
    assert report["cost_failed_with_choices_usd"] == pytest.approx(paid)
    texts = {"summary": runner.format_summary(s), "status": format_status(out),
             "cost_report.json": "\n".join(report["warnings"]),
             "cost_report.md": (out / "cost_report.md").read_text()}
    for where, text in texts.items():
        assert text.count(said) == 1, (where, text)

    sent.clear()
    again = anyio.run(run_job_file, _recording(sent), job,
                      runner.RunOptions(progress="none", retry_failed=True))
    assert sorted(sent) == [("Answer: What is 1 + 1?", 3), ("Answer: What is 2 + 2?", 3)]
    assert again.failed == 2
    done = pd.read_parquet(out / "results.parquet").set_index("qid")
    assert done.loc["q1", "cost_usd"] == pytest.approx(paid)
    assert done.loc["q1", "earlier_cost_usd"] == pytest.approx(paid)


@pytest.mark.parametrize("per_row", [False, True], ids=["job", "column"])
def test_a_row_of_which_any_choice_was_cut_is_counted_and_the_hint_picks_it(
    tmp_path: Path, per_row: bool,
) -> None:
    """With n = 3, a row whose choice 2 was cut at max_tokens (choice 0 whole) was counted
    as cut, but the summary's --rerun-where finish_reason == 'length' (choice 0's) did not
    pick it; the hint given with n > 1 does, the job's n or a column's (``per_row``: the
    hint was choice 0's there still)."""
    if per_row:
        job = write_job(tmp_path, rows=3, request='from_columns = { n = "k" }\n',
                        extra="seed = 42\n")
        questions = pd.read_csv(tmp_path / "questions.csv").assign(k=3)
        questions.to_csv(tmp_path / "questions.csv", index=False)
    else:
        job = write_job(tmp_path, rows=3)
    s = anyio.run(run_job_file, _one_bad_sample, job, runner.RunOptions(progress="none"))
    said = runner.format_summary(s)
    where = "finish_reason == 'length' or choices.str.contains('reason.:.length')"
    assert (f"  warning: 1 row cut at max_tokens (finish_reason=length): to answer it again "
            "with a larger one, rerun the job with a --max-tokens above the completion_tokens it "
            "used (no max_tokens was asked: the server's own limit cut it), and --force "
            f"--rerun-where \"{where}\", "
            f"which asks for all {'' if per_row else 'n = 3 '}choices of it again, not only those "
            "cut") in said, said
    again = anyio.run(run_job_file, _one_bad_sample, job,
                      runner.RunOptions(progress="none", rerun_where=where))
    assert again.sent == 1


# -- rows that ask for different n: a batch file's ---------------------------------------------


def write_batch_job(tmp_path: Path, ns: list[int], *, simulator: bool = True) -> Path:
    """A job over a batch file whose rows ask for ``ns`` choices."""
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "n": n,
                       "messages": [{"role": "user", "content": f"What is {i} + {i}?"}]}}
             for i, n in enumerate(ns)]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    job = tmp_path / "batch.toml"
    job.write_text('name = "batch"\n[input]\npath = "batch.jsonl"\n[output]\ndir = "out"\n'
                   + ("[endpoint]\nsimulator = true\n[simulator]\nreply_tokens = 20\n"
                      if simulator else ""))
    return job


def test_the_estimate_of_rows_asking_different_n_is_a_choices_mean_times_each_rows_n(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows done asked n = 1, 1 and 3; the row left asks 3. One mean over the replies
    (their 100 tokens / 3) was the estimate whatever n the row asks; a choice's mean (100 / 5)
    times its n is. A run holds the rows it sends so too (the third at 3 times the second)."""
    charged: dict[str, int] = {}
    real = runner._Run._tokens

    def tokens(self: Any, item: Any) -> tuple[int, int]:
        got = real(self, item)
        charged[item.key] = got[1]
        return got

    monkeypatch.setattr(runner._Run, "_tokens", tokens)
    job = write_batch_job(tmp_path, [1, 1, 3, 3])
    code, _, err = cli(capsys, "run", str(job), "--limit", "3", "--concurrency", "1",
                       "--progress", "none")
    assert code == 0, err
    assert charged["r2"] >= 2 * charged["r1"] > 0
    done = pd.read_parquet(tmp_path / "out" / "results.parquet").dropna(subset=["status"])
    per_choice = done["completion_tokens"].sum() / 5
    est = estimate(runner.prepare(load_job(job, {}), runner.RunOptions(), tidy=False))
    (m,) = est.by_model.values()
    assert (m.rows, m.completion_tokens) == (1, int(per_choice * 3))
    assert "tokens a choice, times each row's n" in est.completion_basis


def test_rows_of_a_batch_file_answered_with_fewer_choices_than_their_own_n_are_counted(
    tmp_path: Path,
) -> None:
    """A batch file's rows ask their own n; the job asks none. A server that sends one
    choice left its n = 3 rows uncounted (compared with the job's n, 1); each row is now
    compared with its own."""
    from batchrunner.status import format_status

    job = write_batch_job(tmp_path, [1, 3, 3], simulator=False)
    s = anyio.run(run_job_file, _choices_server(1), job, runner.RunOptions(progress="none"))
    said = ("2 rows got fewer choices than the n their requests asked (the server ignores n?): "
            "their choices column holds those that came")
    out = tmp_path / "out"
    assert json.loads((out / "cost_report.json").read_text())["rows"]["fewer_choices"] == 2
    assert said in runner.format_summary(s) and said in format_status(out)


def _drop_choices_asked(out: Path) -> None:
    """Rewrite the journal's segments without ``choices_asked``, as a version before it wrote
    them."""
    import pyarrow.parquet as pq

    from batchrunner.journal import Journal

    for seg in Journal(out).segments():
        table = pq.read_table(seg)
        pq.write_table(table.drop_columns(["choices_asked"]), seg)


def test_a_journal_written_before_choices_asked_is_read_by_status_report_and_reruns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """An output directory of a version before ``choices_asked`` (rows asking their own n, one
    failed, two to do): ``status``, ``report`` and ``estimate`` read it, a resume sends the
    rows left and ``--retry-failed`` the failed one, beside records that have the column."""
    job = write_batch_job(tmp_path, [1, 3, 3, 2, 3, 1])
    lines = (tmp_path / "batch.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    bad["body"]["messages"][0]["content"] += " [[sim:400]]"
    lines[2] = json.dumps(bad)
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, _, err = cli(capsys, "run", str(job), "--limit", "4", "--progress", "none")
    assert code == 3, err
    _drop_choices_asked(out)

    code, said, err = cli(capsys, "status", str(out))
    assert code == 0 and "4 of 6 rows finished (3 ok, 1 failed, 2 to do)" in said, err
    code, said, err = cli(capsys, "report", str(out))
    assert code == 3 and "6 rows: 3 ok, 1 failed, 2 not done yet" in said, err
    done = pd.read_parquet(out / "results.parquet")
    assert done["status"].tolist() == ["ok", "ok", "failed", "ok"]  # --limit: up to row 4
    assert [len(json.loads(c)) for c in done["choices"][[1, 3]]] == [3, 2]
    code, said, err = cli(capsys, "estimate", str(job))
    assert code == 0 and "2 to send" in said, err

    code, said, err = cli(capsys, "run", str(job), "--progress", "none")
    assert code == 3 and "6 rows: 5 ok, 1 failed" in said and "2 requests sent" in said, err
    _drop_choices_asked(out)
    code, said, err = cli(capsys, "run", str(job), "--retry-failed", "--progress", "none")
    assert code == 3 and "1 request sent" in said, err
    report = json.loads((out / "cost_report.json").read_text())
    assert report["rows"]["by_status"] == {"ok": 5, "failed": 1}
    assert report["rows"]["fewer_choices"] == 0
