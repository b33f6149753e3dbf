"""Real jobs against the built-in simulator on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from batchrunner.config import JobConfig, load_job
from batchrunner.errors import ConfigError, InputError
from batchrunner.io import is_locked
from batchrunner.journal import Journal
from batchrunner.report import format_usd
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, RunSummary, format_summary, run_job
from batchrunner.simulator import Simulator, SimulatorConfig, SimulatorThread, prompt_key
from batchrunner.status import format_status
from tests.processes import reaped
from tests.servers import serve_on_loopback

FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=4), progress="none",
                  handle_signals=False)
KEY = "sk-test-0123456789abcdef"


pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def make_csv(path: Path, n: int, marker: dict[int, str] | None = None) -> Path:
    marker = marker or {}
    rows = [{"id": f"r{i:04d}", "text": f"row {i} about topic {i * 7 % 13}{marker.get(i, '')}"}
            for i in range(n)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def job_for(tmp_path: Path, base_url: str, inp: Path, **over: Any) -> JobConfig:
    overrides: dict[str, Any] = {
        "input": str(inp), "id_column": "id", "prompt": "Summarise: {text}",
        "model": "gpt-4o-mini", "max_tokens": 64, "base_url": base_url,
        "output": str(tmp_path / "out"), "concurrency": 16, "max_attempts": 4,
    }
    overrides.update(over)
    return load_job(None, overrides)


def results(tmp_path: Path, fmt: str = "parquet") -> pd.DataFrame:
    path = tmp_path / "out" / f"results.{fmt}"
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "csv":
        return pd.read_csv(path, dtype={"id": str})
    return pd.read_json(path, lines=True, dtype={"id": str})


async def direct(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(
        base_url + "/chat/completions", json=body,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as r:
        data: dict[str, Any] = await r.json()
        return data


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
async def test_csv_job_results_land_on_their_rows(tmp_path: Path, fmt: str) -> None:
    inp = make_csv(tmp_path / "in.csv", 120)
    async with Simulator(SimulatorConfig(reply_tokens_mean=40)) as sim:
        summary = await run_job(job_for(tmp_path, sim.base_url, inp, format=fmt), FAST)
        assert summary.exit_code == 0, summary
        df = results(tmp_path, fmt)
        assert list(df["id"]) == [f"r{i:04d}" for i in range(120)]  # input order
        assert set(df["status"]) == {"ok"}
        # Usage and content equal what the simulator answers for that very row's request.
        for i in (0, 17, 119):
            body = {"model": "gpt-4o-mini", "max_tokens": 64,
                    "messages": [{"role": "user", "content": f"Summarise: {df['text'][i]}"}]}
            ref = await direct(sim.base_url, body)
            row = df.iloc[i]
            assert row["content"] == ref["choices"][0]["message"]["content"]
            assert row["finish_reason"] == ref["choices"][0]["finish_reason"]
            assert row["prompt_tokens"] == ref["usage"]["prompt_tokens"]
            assert row["completion_tokens"] == ref["usage"]["completion_tokens"]
        assert sim.stats()["requests"] == 120 + 3


@pytest.mark.anyio
async def test_parquet_and_jsonl_inputs(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(50)],
                          "text": [f"parquet row {i}" for i in range(50)]})
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "in.parquet")
    frame.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    async with Simulator(SimulatorConfig()) as sim:
        for name in ("in.parquet", "in.jsonl"):
            out = tmp_path / name.replace(".", "_")
            s = await run_job(job_for(tmp_path, sim.base_url, tmp_path / name,
                                      output=str(out)), FAST)
            assert (s.ok, s.failed) == (50, 0)
            df = pd.read_parquet(out / "results.parquet")
            assert list(df["id"]) == list(frame["id"])


@pytest.mark.anyio
async def test_openai_batch_file_runs_as_is(tmp_path: Path) -> None:
    lines = [
        {"custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "max_tokens": 30,
                  "messages": [{"role": "user", "content": f"batch task {i}"}]}}
        for i in range(20)
    ]
    inp = tmp_path / "batch.jsonl"
    inp.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "base_url": sim.base_url,
                              "output": str(tmp_path / "out")})
        s = await run_job(job, FAST)
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["custom_id"]) == [f"task-{i}" for i in range(20)]
    assert (df["completion_tokens"] <= 30).all()


@pytest.mark.anyio
async def test_retries_end_ok_and_400_is_not_retried(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 30, {3: " [[sim:503*2]]", 5: " [[sim:429*1]]",
                                              7: " [[sim:400]]", 9: " [[sim:reset*1]]",
                                              11: " [[sim:corrupt*1]]", 13: " [[sim:529*2]]"})
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
    assert s.exit_code == 3
    df = results(tmp_path).set_index("id")
    assert df.loc["r0003", "status"] == "ok" and df.loc["r0003", "attempts"] == 3
    assert df.loc["r0005", "status"] == "ok" and df.loc["r0005", "rate_limited"] == 1
    assert df.loc["r0009", "status"] == "ok" and df.loc["r0009", "attempts"] == 2
    assert df.loc["r0011", "status"] == "ok" and df.loc["r0011", "attempts"] == 2
    assert df.loc["r0013", "status"] == "ok" and df.loc["r0013", "attempts"] == 3
    assert df.loc["r0007", "status"] == "failed"
    assert df.loc["r0007", "attempts"] == 1
    assert df.loc["r0007", "error_type"] == "http_400"
    assert (df.drop(index="r0007")["status"] == "ok").all()
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report_rows(report) == 30
    # The summary said only the 429 of the 37 requests sent for 30 rows: the retries now too.
    assert s.sent == 37 and s.rate_limited == 1
    # The 400 failed its row (the failures line says it), the others were tried again.
    assert s.request_errors == {"http_503": 2, "http_529": 2, "connection_reset": 1,
                                "invalid_body": 1}, s.request_errors
    assert ("37 requests sent this run (6 retried after an error: http_503 2, http_529 2, "
            "connection_reset 1, ...; "
            "1 answered 429, rate limited)") in format_summary(s)


def report_rows(report: dict[str, Any]) -> int:
    rows = report["rows"]
    return int(rows["total"] if isinstance(rows, dict) else rows)


@pytest.mark.anyio
async def test_the_concurrency_tuner_starts_no_worker_once_every_row_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuner wakes on every loop turn here, so its wake often falls in the moment after
    the last worker ended and before it is cancelled: it must not start a worker then."""
    import batchrunner.runner as runner_module

    monkeypatch.setattr(runner_module, "TUNE_EVERY_S", 0.0)
    inp = make_csv(tmp_path / "in.csv", 20)
    async with Simulator(SimulatorConfig()) as sim:
        for i in range(15):
            job = job_for(tmp_path, sim.base_url, inp, output=str(tmp_path / f"out{i}"))
            job = replace(job, limits=replace(job.limits, concurrency=None))
            s = await run_job(job, FAST)
            assert (s.exit_code, s.ok) == (0, 20)


@pytest.mark.anyio
async def test_cost_report_totals_equal_the_rows(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 60)
    async with Simulator(SimulatorConfig(reply_tokens_mean=30)) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
    df = results(tmp_path)
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_usd"] == pytest.approx(df["cost_usd"].sum(), rel=1e-9)
    assert report["cost_usd"] > 0 and report["cost_complete"] is True
    assert report["tokens"]["prompt"] == df["prompt_tokens"].sum()
    assert report["tokens"]["completion"] == df["completion_tokens"].sum()
    assert report["rows"]["by_status"] == {"ok": 60, "failed": 0}
    assert report["pricing"]["library"] == "genai-prices"
    assert (tmp_path / "out" / "cost_report.md").read_text().strip()


@pytest.mark.anyio
async def test_rerun_resumes_and_sends_nothing_twice(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 40, {2: " [[sim:400]]"})
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        first = await run_job(job, FAST)
        assert (first.ok, first.failed) == (39, 1)
        n = sim.stats()["requests"]

        def figures() -> dict[str, Any]:
            report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
            return {k: report[k] for k in ("wall_s", "requests_per_min", "counters", "requests")}

        def meta() -> dict[str, Any]:
            return dict(json.loads((tmp_path / "out" / "job.json").read_text()))

        before, timed = figures(), meta()["timed_run"]
        assert before["wall_s"] == timed["wall_s"] > 0 and before["counters"]["sent"] == n
        again = await run_job(job, FAST)
        assert sim.stats()["requests"] == n  # nothing resent, failed rows left alone
        assert again.exit_code == 3 and again.sent == 0
        # A run that sent nothing is the last run, but the report's figures stay the last
        # sending run's; so for one stopped before sending (a budget already spent).
        assert meta()["last_run"]["sent"] == 0 and meta()["timed_run"] == timed
        assert figures() == before
        spent = await run_job(replace(job, limits=replace(job.limits, max_cost_usd=1e-9)),
                              RunOptions(retry_failed=True, retry=FAST.retry, progress="none",
                                         handle_signals=False))
        assert spent.stopped and "budget" in spent.stopped and spent.sent == 0
        assert meta()["last_run"]["stopped"] == spent.stopped and meta()["timed_run"] == timed
        assert figures() == before
        retry = await run_job(job, RunOptions(retry_failed=True, retry=FAST.retry,
                                              progress="none", handle_signals=False))
        assert sim.stats()["requests"] == n + 1  # only the failed row
        assert retry.failed == 1


@pytest.mark.anyio
async def test_rerun_where_and_changed_settings(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 20)
    async with Simulator(SimulatorConfig(reply_tokens_mean=200, reply_tokens_min=150)) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=10), FAST)
        assert s.length_cut == 20
        with pytest.raises(Exception, match="--force") as e:
            await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), FAST)
        # Every row is done: --force alone would send nothing, and the message says so.
        assert "(max_tokens: 10 → 1000), and every row is done" in str(e.value)
        assert "--rerun-where" in str(e.value) and "another --output" in str(e.value)
        opts = RunOptions(rerun_where="finish_reason == 'length'", force=True, retry=FAST.retry,
                          progress="none", handle_signals=False)
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.length_cut == 0 and s.ok == 20
        # "True" picks every row recorded: all are sent again.
        sent = sim.stats()["requests"]
        opts.rerun_where = "True"
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.sent == 20 and sim.stats()["requests"] == sent + 20
        # finished_at is a UTC time, as the results show it.
        opts.rerun_where = "finished_at < '2000-01-01'"
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.sent == 0
        opts.rerun_where = "finished_at > '2000-01-01 00:00'"
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.sent == 20
        opts.rerun_where = "finished_at > '2000-01-01T00:00Z'"
        with pytest.raises(Exception, match="finished_at is a UTC time without a zone"):
            await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        # A condition no row meets (a typo in a value, say) is said so, not passed over.
        opts.rerun_where = "finish_reason == 'lenght'"
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.sent == 0 and ("--rerun-where \"finish_reason == 'lenght'\" matched no row of "
                                "the input: none is sent again") in s.warnings
        opts.rerun_where = "key in [1, 2]"  # numeric ids: a key is text
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.sent == 0 and any(w.endswith("key is text: quote the ids, as in \"key in ['1', "
                                              "'2']\"") for w in s.warnings)
        # Compared with a number: pandas 3's "Invalid comparison between dtype=str and int",
        # pandas 2's "'>=' not supported between instances of 'str' and 'int'", named as the
        # ids' being text, and how to compare them as numbers.
        opts.rerun_where = "key >= 5"
        with pytest.raises(Exception, match=re.escape(
                "key is the row's id as text: compare it with text (key == '1100'), or as a "
                "number with key.astype('int64') >= 1100")):
            await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        # ids r0000 to r0019; str.slice, as pandas 2.1's eval takes no slice (key.str[1:])
        opts.rerun_where = "key.str.slice(1).astype('int64') >= 15"
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.sent == 5, s


@pytest.mark.anyio
async def test_rerun_where_on_the_model_asked_for_says_what_model_holds(tmp_path: Path) -> None:
    """OpenAI's replies name a dated snapshot of the model asked for: "model == 'gpt-4o-mini'"
    to send one model's rows again matched none of them, and the run said only that. It says
    now what model holds, with the expression that picks them."""
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
            "model": f"{body['model']}-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(6)], "text": [f"row {i}" for i in range(6)],
                  "model": ["gpt-4o-mini", "gpt-4.1-nano"] * 3}).to_csv(inp, index=False)
    server, port = await serve_on_loopback(handler)
    try:
        job = job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model=None,
                      model_column="model")
        assert (await run_job(job, FAST)).ok == 6
        opts = RunOptions(rerun_where="model == 'gpt-4o-mini'", retry=FAST.retry,
                          progress="none", handle_signals=False)
        s = await run_job(job, opts)
        assert s.sent == 0
        assert ("--rerun-where \"model == 'gpt-4o-mini'\" matched no row of the input: none is "
                "sent again; model is the name each reply gave (gpt-4.1-nano-2024-07-18, "
                "gpt-4o-mini-2024-07-18), as in \"model in ['gpt-4o-mini-2024-07-18']\"") in (
                    s.warnings)
        opts.rerun_where = "model in ['gpt-4o-mini-2024-07-18']"
        assert (await run_job(job, opts)).sent == 3
    finally:
        await server.cleanup()


@pytest.mark.anyio
async def test_a_job_that_never_got_an_answer_takes_new_settings_without_force(
        tmp_path: Path) -> None:
    # A wrong setting fails every row; the fixed job is rerun as the stop message says, with
    # --retry-failed and no --force: no answer made with the old settings is mixed in.
    inp = make_csv(tmp_path / "in.csv", 30)
    retry = RunOptions(retry_failed=True, retry=FAST.retry, progress="none",
                       handle_signals=False)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp,
                                  prompt="Summarise: {text} [[sim:400]]"), FAST)
        assert s.exit_code == 4 and s.stopped and "--retry-failed" in s.stopped
        s = await run_job(job_for(tmp_path, sim.base_url, inp), retry)
        assert s.exit_code == 0 and s.ok == 30
        assert any("going on, as no row has an answer" in w for w in s.warnings)
        # A short setting is named with its old and new values.
        assert any("(prompt: 'Summarise: {text} [[sim:400]]' → 'Summarise: {text}')" in w
                   for w in s.warnings), s.warnings
        # Once rows are ok, a change of settings needs --force again.
        with pytest.raises(Exception, match="--force") as e:
            await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=20), retry)
        assert "(max_tokens: 64 → 20), and every row is done" in str(e.value)
        make_csv(inp, 32)  # two more rows: a run would send them
        with pytest.raises(Exception) as e:
            await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=20), retry)
        assert "pass --force to send the 2 rows left to send with the new ones (the rows it " \
            "does not send keep their answers)" in str(e.value)
        with pytest.raises(Exception) as e:  # a setting set, and one unset, and a long prompt
            await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=None, temperature=0.5,
                                  prompt="Summarise, in one sentence of plain words: {text}"),
                          retry)
        assert "(max_tokens: 64 → not set, prompt, temperature: not set → 0.5); pass --force" \
            in str(e.value), e.value


@pytest.mark.anyio
async def test_a_rerun_whose_keys_would_not_match_says_what_force_would_do(
        tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 6)
    async with Simulator(SimulatorConfig()) as sim:
        by_position = job_for(tmp_path, sim.base_url, inp, id_column=None, max_tokens=8)
        await run_job(by_position, FAST)
        with pytest.raises(Exception) as e:  # now keyed by id: nothing done would match
            await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=8), FAST)
        assert str(e.value).startswith(
            f"rows were keyed by position in {tmp_path / 'out'}, and this run keys them by "
            "column 'id': no row done would match, and every row would be sent again — use "
            "another --output directory")
        make_csv(inp, 7)  # a row added at the end, still keyed by position
        with pytest.raises(Exception) as e:
            await run_job(by_position, FAST)
        assert "if rows were only added at its end, pass --force" in str(e.value)
        sent = sim.stats()["requests"]
        s = await run_job(by_position, RunOptions(force=True, retry=FAST.retry,
                                                  progress="none", handle_signals=False))
        assert s.ok == 7 and sim.stats()["requests"] == sent + 1  # only the new row


@pytest.mark.anyio
async def test_the_endpoint_can_come_from_a_variable_the_job_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = make_csv(tmp_path / "in.csv", 3)
    async with Simulator(SimulatorConfig()) as sim:
        monkeypatch.setenv("NBILITY_BASE_URL", sim.base_url)  # a gateway's own name for it
        job = job_for(tmp_path, sim.base_url, inp, base_url_env="NBILITY_BASE_URL")
        job = replace(job, endpoint=replace(job.endpoint, base_url=None))
        s = await run_job(job, FAST)
        assert s.exit_code == 0 and s.ok == 3 and sim.stats()["requests"] == 3


@pytest.mark.anyio
async def test_401_stops_the_job_and_rerun_finishes(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inp = make_csv(tmp_path / "in.csv", 30)
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-xyz")
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        assert s.exit_code == 4 and s.stopped and "key" in s.stopped
        assert "sk-wrong-key-xyz" not in s.stopped
        assert sim.stats()["requests"] <= 16 + 1
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        assert s.exit_code == 0 and s.ok == 30


@pytest.mark.anyio
async def test_bad_input_fails_before_sending(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 5)
    async with Simulator(SimulatorConfig()) as sim:
        with pytest.raises(ConfigError, match=r"\{nope\}"):
            await run_job(job_for(tmp_path, sim.base_url, inp, prompt="x {nope}"), FAST)
        (tmp_path / "dup.csv").write_text("id,text\na,1\na,2\n")
        with pytest.raises(InputError, match="more than once"):
            await run_job(job_for(tmp_path, sim.base_url, tmp_path / "dup.csv"), FAST)
        assert sim.stats()["requests"] == 0


def test_killed_run_resumes_with_every_row_once(tmp_path: Path) -> None:
    """SIGKILL a real subprocess mid-run, rerun: every row once, no ok row sent twice."""
    n = 600
    inp = make_csv(tmp_path / "in.csv", n)
    with SimulatorThread(SimulatorConfig(latency_ms=40, jitter_ms=40)) as sim:
        cmd = [sys.executable, "-m", "batchrunner", "run", "--input", str(inp),
               "--id-column", "id", "--prompt", "Summarise: {text}", "--model", "gpt-4o-mini",
               "--base-url", sim.base_url, "--output", str(tmp_path / "out"),
               "--concurrency", "8", "--progress", "none"]
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        texts = dict(zip(pd.read_csv(inp)["id"], pd.read_csv(inp)["text"], strict=True))
        snapshots: list[tuple[set[str], dict[str, int]]] = []
        journal_dir = tmp_path / "out" / "journal"
        for delay in (0.05, 0.3, 0.0):
            segments_before = len(list(journal_dir.glob("seg-*"))) if journal_dir.exists() else 0
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            with reaped(proc):
                # Kill once this run has journaled a segment: a moment, not a guess at timing.
                deadline = time.monotonic() + 60
                while (proc.poll() is None
                       and len(list(journal_dir.glob("seg-*"))) <= segments_before):
                    assert time.monotonic() < deadline, "waited 60 s for the run's first segment"
                    time.sleep(0.01)
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            state = Journal(tmp_path / "out").read()
            ok_then = {k for k, st in zip(state["key"].to_pylist(), state["status"].to_pylist(),
                                          strict=True) if st == "ok"}
            snapshots.append((ok_then, dict(sim.stats(per_prompt=True)["requests_by_prompt"])))
        assert snapshots[-1][0], "the kills came too late or too early to test a resume"
        sim.set_latency(0)  # the last run's rows answered at once: that it sends them is the check
        # `report` on the killed run: rows are left to do, so not "finished" (exit 4).
        report = subprocess.run([sys.executable, "-m", "batchrunner", "report",
                                 str(tmp_path / "out")], env=env, capture_output=True,
                                text=True, timeout=120)
        assert report.returncode == 4, report.stdout + report.stderr
        assert "to do" in report.stdout or "not done" in report.stdout, report.stdout
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        df = pd.read_parquet(tmp_path / "out" / "results.parquet")
        assert sorted(df["id"]) == [f"r{i:04d}" for i in range(n)]
        assert (df["status"] == "ok").all()
        final = sim.stats(per_prompt=True)["requests_by_prompt"]
        for ok_then, counts_then in snapshots:
            for key in ok_then:
                pk = prompt_key(f"Summarise: {texts[key]}")
                assert final[pk] == counts_then[pk], f"row {key} was recorded ok, then resent"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_drain_and_exit_4(tmp_path: Path, sig: signal.Signals) -> None:
    n = 120  # the signal comes after 20 answers, 8 in flight: the rerun sends the rest
    inp = make_csv(tmp_path / "in.csv", n)
    with SimulatorThread(SimulatorConfig(latency_ms=200, jitter_ms=50)) as sim:
        cmd = [sys.executable, "-m", "batchrunner", "run", "--input", str(inp),
               "--id-column", "id", "--prompt", "Summarise: {text}", "--model", "gpt-4o-mini",
               "--base-url", sim.base_url, "--output", str(tmp_path / "out"),
               "--concurrency", "8", "--progress", "none"]
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        with reaped(proc):
            deadline = time.monotonic() + 60
            while sim.stats()["completions"] < 20:
                assert time.monotonic() < deadline and proc.poll() is None, sim.stats()
                time.sleep(0.02)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 4, err
        assert "resume" in out + err
        journaled = Journal(tmp_path / "out").read()
        assert 0 < journaled.num_rows < n
        assert set(journaled["status"].to_pylist()) == {"ok"}  # drained, not failed
        sent_before = sim.stats()["requests"]
        assert sent_before == journaled.num_rows  # in-flight requests finished and were saved
        sim.set_latency(0)  # the rerun's rows answered at once: that it sends them is the check
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert sim.stats()["requests"] == n


def test_status_and_report_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from batchrunner.cli import main

    inp = make_csv(tmp_path / "in.csv", 25, {4: " [[sim:404]]"})
    monkeypatch.chdir(tmp_path)
    with SimulatorThread(SimulatorConfig()) as sim:
        code = main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "Q: {text}",
                     "--model", "gpt-4o-mini", "--base-url", sim.base_url,
                     "--output", "out", "--progress", "none"])
    assert code == 3
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "25 of 25 rows finished (24 ok, 1 failed, 0 to do)" in out
    assert "http_404: 1" in out
    advice, command = out.rstrip().splitlines()[-1].split(": batchrunner run ")
    assert advice.endswith(  # a resend alone fails again: fix first
        "fix what the endpoint refused in the 1 row that failed with http_404 (a model name, a "
        "request setting, a prompt longer than the model's context: the error_message says), "
        "or it fails again, then rerun with --retry-failed to send it")
    assert command.endswith(" --retry-failed")  # the command that does
    # A job file naming the directory does as well; a directory that is not there is named.
    (tmp_path / "job.toml").write_text(f'[input]\npath = "{inp}"\n[output]\ndir = "out"\n')
    assert main(["status", str(tmp_path / "job.toml")]) == 0
    assert capsys.readouterr().out == out
    assert main(["status", str(tmp_path / "outt")]) == 2
    assert "outt: no such directory" in capsys.readouterr().err
    first = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    (tmp_path / "out" / "results.parquet").unlink()
    (tmp_path / "out" / "cost_report.json").unlink()
    assert main(["report", "out"]) == 3
    df = results(tmp_path)
    assert len(df) == 25 and (df["status"] == "ok").sum() == 24
    rebuilt = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert rebuilt["rows"]["total"] == 25
    assert (first["job"]["input"], first["job"]["output"]) == (str(inp), str(tmp_path / "out"))
    # The rebuilt report keeps the run's figures: wall time, throughput, counters, job file,
    # and its paths, whole whatever the current directory.
    assert rebuilt["wall_s"] == first["wall_s"] > 0
    for key in ("requests_per_min", "counters", "requests", "job"):
        assert rebuilt[key] == first[key], key
    # A hand-edited job.json: what is not a number is left out, not a crash.
    meta_path = tmp_path / "out" / "job.json"
    meta = json.loads(meta_path.read_text())
    meta["timed_run"].update(wall_s="4.0s", counters={"http_429": None, "sent": 3})
    meta_path.write_text(json.dumps(meta))
    assert main(["report", str(tmp_path / "out")]) == 3
    rebuilt = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert rebuilt["wall_s"] is None and rebuilt["counters"] == {"sent": 3}
    assert main(["status", str(tmp_path / "nowhere")]) == 2


@pytest.mark.anyio
async def test_an_answer_billed_and_sent_again_counts_as_earlier_cost(tmp_path: Path) -> None:
    # Row 2's first answer is a 200 with usage but no choices: paid for, then sent again.
    inp = make_csv(tmp_path / "in.csv", 6, {2: " [[sim:no_choices*1]]"})
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
    assert s.ok == 6 and s.sent == 7
    df = results(tmp_path).set_index("id")
    earlier = df.loc["r0002", "earlier_cost_usd"]
    assert earlier > 0 and earlier == pytest.approx(df.loc["r0002", "cost_usd"])
    assert df["earlier_cost_usd"].isna().sum() == 5
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_earlier_attempts_usd"] == pytest.approx(earlier)
    assert report["cost_usd"] == pytest.approx(df["cost_usd"].sum())
    assert s.earlier_cost_usd == pytest.approx(earlier)
    assert "Earlier attempts, sent again" in (tmp_path / "out" / "cost_report.md").read_text()
    assert "earlier attempts of rows sent again" in (tmp_path / "out" / "report.html").read_text()
    assert "for earlier attempts of rows sent again" in format_summary(s)
    assert "for earlier attempts of rows sent again" in format_status(tmp_path / "out")


async def run_with_a_billed_failure(tmp_path: Path, prices: dict[str, Any]) -> RunSummary:
    """Three rows for model "m" at a server that answers each with 1,000 prompt and 50
    completion tokens: row 1's reply is a 200 error body with that usage (billed, not
    retried)."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    inp = make_csv(tmp_path / "in.csv", 3)
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        if "row 1 " in body["messages"][-1]["content"]:
            return web.json_response({"error": {"message": "too long",
                                                "code": "context_length_exceeded"},
                                      "usage": usage})
        return web.json_response({"model": "m", "usage": usage, "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "fine"}}]})

    runner, port = await serve_on_loopback(handler)
    try:
        job = replace(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model="m"),
                      prices=prices)
        return await run_job(job, FAST)
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_status_counts_the_cost_billed_for_failed_rows(tmp_path: Path) -> None:
    """A failed row's billed reply is in the job's cost: `status` said $0.0022 (the ok rows
    only) where the summary and the reports said $0.0033."""
    s = await run_with_a_billed_failure(tmp_path, {"m": {"input": 1.0, "output": 2.0}})
    assert (s.ok, s.failed, s.cost_usd) == (2, 1, pytest.approx(0.0033))  # 3 × $0.0011
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_failed_usd"] == pytest.approx(0.0011)
    assert "cost: $0.0033;" in format_summary(s)
    assert "; cost so far $0.0033\n" in format_status(tmp_path / "out") + "\n"


@pytest.mark.anyio
async def test_a_failed_row_billed_at_no_known_price_is_a_cost_unknown(tmp_path: Path) -> None:
    """The billed failure of a model with no price is a cost not known, as the ok rows' are:
    the summary and `status` said 2 rows were without a cost, not 3."""
    s = await run_with_a_billed_failure(tmp_path, {})
    assert (s.ok, s.failed, s.cost_usd, s.cost_unknown) == (2, 1, None, 3)
    assert ('cost: unknown: 3 rows without a cost (no price for m: add [prices."m"] with input '
            "and output (USD per 1M tokens), to a job file)") in format_summary(s)
    # As the summary says: unknown, not $0 (none of the rows has a cost).
    assert ("cost so far unknown: 3 rows without a cost (no price known"
            in format_status(tmp_path / "out"))


@pytest.mark.anyio
async def test_status_shows_the_cost_the_reports_show(tmp_path: Path) -> None:
    """Six rows whose costs add up to $0.009385: the reports sum them exactly ($0.00938, as
    the float nearest 0.009385 shows), `status` summed them as floats in journal order
    (0.009385000000000001) and said $0.00939."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    inp = make_csv(tmp_path / "in.csv", 6)
    prompt_tokens = [1100, 3816, 998, 1178, 1217, 1076]  # at $1 per 1M: $0.0011, ...

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        text = (await request.json())["messages"][-1]["content"]
        pt = prompt_tokens[int(text.split()[2])]  # "Summarise: row I about ..."
        return web.json_response({"model": "m", "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": pt, "completion_tokens": 0, "total_tokens": pt}})

    runner, port = await serve_on_loopback(handler)
    try:
        job = replace(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model="m",
                              concurrency=1), prices={"m": {"input": 1.0, "output": 0.0}})
        s = await run_job(job, FAST)
    finally:
        await runner.cleanup()
    assert s.cost_usd == 0.009385 and "cost: $0.00938;" in format_summary(s)
    assert "; cost so far $0.00938\n" in format_status(tmp_path / "out") + "\n"


@pytest.mark.anyio
async def test_rows_sent_again_by_a_rerun_carry_what_they_cost(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 12)
    async with Simulator(SimulatorConfig(reply_tokens_mean=200, reply_tokens_min=150)) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=10), FAST)
        first = results(tmp_path).set_index("id")["cost_usd"]
        assert (first > 0).all()
        opts = RunOptions(rerun_where="finish_reason == 'length'", force=True, retry=FAST.retry,
                          progress="none", handle_signals=False)
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        assert s.ok == 12 and s.length_cut == 0
        second = results(tmp_path).set_index("id")
        assert second["earlier_cost_usd"].to_dict() == pytest.approx(first.to_dict())
        assert s.earlier_cost_usd == pytest.approx(first.sum())
        # Resent once more: the first two answers are both carried.
        opts.rerun_where = "key == 'r0000'"
        await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), opts)
        third = results(tmp_path).set_index("id")
        assert third.loc["r0000", "earlier_cost_usd"] == pytest.approx(
            first["r0000"] + second.loc["r0000", "cost_usd"])
        # Nothing left to send: the figures stay (they live in the journal, not the run).
        s = await run_job(job_for(tmp_path, sim.base_url, inp, max_tokens=1000), FAST)
        assert s.sent == 0
        assert results(tmp_path)["earlier_cost_usd"].sum() == pytest.approx(
            third["earlier_cost_usd"].sum())


@pytest.mark.anyio
async def test_a_rerun_that_fails_billed_keeps_the_answer_and_counts_its_cost(
        tmp_path: Path) -> None:
    """An ok row rerun with a prompt whose every answer is a 200 without choices (billed, then
    failed): the old answer stays, and what the failed rerun cost is in the totals."""
    inp = make_csv(tmp_path / "in.csv", 4)
    rerun = RunOptions(rerun_where="key == 'r0002'", force=True, retry=FAST.retry,
                       progress="none", handle_signals=False)
    out = tmp_path / "out"

    def total() -> float:
        report = json.loads((out / "cost_report.json").read_text())
        return float(report["cost_usd"] + report["cost_earlier_attempts_usd"])

    def job(base_url: str, **over: Any) -> JobConfig:  # $1 a thousand tokens
        return replace(job_for(tmp_path, base_url, inp, **over),
                       prices={"gpt-4o-mini": {"input": 1000.0, "output": 1000.0}})

    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job(sim.base_url), FAST)
        first, answer = total(), results(tmp_path).set_index("id").loc["r0002"]
        s = await run_job(job(sim.base_url, prompt="Summarise: {text} [[sim:no_choices]]"),
                          rerun)
        assert s.ok == 4 and s.sent == 4  # four billed attempts; the old answer stays
        row = results(tmp_path).set_index("id").loc["r0002"]
        assert row["status"] == "ok" and row["content"] == answer["content"]
        billed = row["earlier_cost_usd"]
        assert billed > 0 and total() == pytest.approx(first + billed)
        assert f"(plus ${billed:,.4f} for earlier attempts" in format_status(out)
        # Rerun again and ok: the new answer carries both earlier answers' cost.
        await run_job(job(sim.base_url), rerun)
        row = results(tmp_path).set_index("id").loc["r0002"]
        assert row["earlier_cost_usd"] == pytest.approx(answer["cost_usd"] + billed)
        assert total() == pytest.approx(first + billed + row["cost_usd"])


NORMAL_USD, BILLED_USD = 2e-5, 0.0011  # the handler's usage below, at BILLED_PRICES
BILLED_PRICES = {"m": {"input": 1.0, "output": 2.0}}  # USD per 1M tokens


async def serve_billing(bill: set[str]) -> tuple[Any, str]:
    """A server (its runner, and base URL) that answers every row with 10 prompt and 5
    completion tokens ($0.00002 at ``BILLED_PRICES``), but the next request of a row named in
    ``bill`` ("row 1 ") with a 200 that reports 1,000 and 50 tokens ($0.0011) and has no
    choices: billed, no answer, sent again."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        text = (await request.json())["messages"][-1]["content"]
        row = next((r for r in bill if r in text), None)
        if row is not None:
            bill.discard(row)
            return web.json_response({"model": "m", "usage": {
                "prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}})
        return web.json_response({"model": "m", "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": f"answer to {text}"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    runner, port = await serve_on_loopback(handler)
    return runner, f"http://127.0.0.1:{port}/v1"


def report_costs(out: Path) -> tuple[float, float]:
    report = json.loads((out / "cost_report.json").read_text())
    return report["cost_usd"], report["cost_earlier_attempts_usd"]


@pytest.mark.anyio
async def test_a_billed_attempt_of_a_row_stopped_before_its_retry_is_counted(
        tmp_path: Path) -> None:
    """Row 1's first reply is billed ($0.0011) with no answer; the budget stops the job before
    its retry. The cost lived only in the run: the report, `status` and the next run's budget
    never counted it. It is journaled now: counted as earlier attempts' cost, the row to do;
    a plain rerun sends it and its cost is both attempts', counted once."""
    from batchrunner.cli import main
    from batchrunner.runner import prepare

    inp = make_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out"
    runner, base_url = await serve_billing({"row 1 "})
    try:
        job = replace(job_for(tmp_path, base_url, inp, model="m", concurrency=1,
                              max_cost_usd=0.0005), prices=BILLED_PRICES)
        s = await run_job(job, FAST)
        assert s.stopped and "budget reached" in s.stopped and s.sent == 2
        assert (s.ok, s.failed, s.pending) == (1, 0, 2)
        assert s.earlier_cost_usd == pytest.approx(BILLED_USD)
        assert report_costs(out) == pytest.approx((NORMAL_USD, BILLED_USD))
        df = results(tmp_path).set_index("id")
        row = df.loc["r0001"]
        assert pd.isna(row["status"]) and pd.isna(row["content"]) and row["attempts"] == 1
        assert row["earlier_cost_usd"] == pytest.approx(BILLED_USD)
        assert pd.isna(row["cost_usd"]) and df["status"].isna().sum() == 2
        report = json.loads((out / "cost_report.json").read_text())
        assert report["rows"]["total"] == 1 and report["rows"]["to_do"] == 2
        assert report["rows"]["by_status"] == {"ok": 1, "failed": 0}
        status = format_status(out)
        assert "1 of 3 rows finished (1 ok, 0 failed, 2 to do)" in status
        assert f"(plus {format_usd(BILLED_USD)} for earlier attempts" in status
        unlimited = replace(job, limits=replace(job.limits, max_cost_usd=None))
        assert prepare(unlimited, FAST).prior_cost == pytest.approx(NORMAL_USD + BILLED_USD)
        assert main(["report", str(out)]) == 4  # rows left to do
        assert report_costs(out) == pytest.approx((NORMAL_USD, BILLED_USD))
        s = await run_job(unlimited, FAST)
        assert (s.ok, s.pending, s.sent) == (3, 0, 2)
    finally:
        await runner.cleanup()
    row = results(tmp_path).set_index("id").loc["r0001"]
    assert row["status"] == "ok" and row["attempts"] == 1
    assert row["earlier_cost_usd"] == pytest.approx(BILLED_USD)
    assert report_costs(out) == pytest.approx((3 * NORMAL_USD, BILLED_USD))
    assert s.earlier_cost_usd == pytest.approx(BILLED_USD)
    assert len(Journal(out).read()) == 3  # compacted: the retrying record is gone


@pytest.mark.anyio
async def test_a_rerun_billed_then_stopped_keeps_the_answer_and_counts_the_billed_attempt(
        tmp_path: Path) -> None:
    """Row 1 is ok; rerun with --rerun-where, its first reply is billed ($0.0011) and the
    budget stops the job before its retry. It keeps its answer, and its cost is raised by the
    billed attempt (before, the attempt was in no record)."""
    inp = make_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out"
    bill: set[str] = set()
    runner, base_url = await serve_billing(bill)
    try:
        job = replace(job_for(tmp_path, base_url, inp, model="m", concurrency=1),
                      prices=BILLED_PRICES)
        await run_job(job, FAST)
        answer = results(tmp_path).set_index("id").loc["r0001", "content"]
        bill.add("row 1 ")
        rerun = RunOptions(rerun_where="key == 'r0001'", retry=FAST.retry, progress="none",
                           handle_signals=False)
        s = await run_job(replace(job, limits=replace(job.limits, max_cost_usd=0.0005)), rerun)
        assert s.stopped and "budget reached" in s.stopped and s.sent == 1
    finally:
        await runner.cleanup()
    assert (s.ok, s.failed, s.pending) == (3, 0, 0)
    row = results(tmp_path).set_index("id").loc["r0001"]
    assert row["status"] == "ok" and row["content"] == answer
    assert row["cost_usd"] == pytest.approx(NORMAL_USD)
    assert row["earlier_cost_usd"] == pytest.approx(BILLED_USD)
    assert report_costs(out) == pytest.approx((3 * NORMAL_USD, BILLED_USD))
    assert f"(plus {format_usd(BILLED_USD)} for earlier attempts" in format_status(out)
    assert "3 of 3 rows finished (3 ok, 0 failed, 0 to do)" in format_status(out)


@pytest.mark.anyio
async def test_a_journal_written_before_earlier_cost_is_read_with_nulls(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 8)
    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        (seg,) = Journal(tmp_path / "out").segments()
        old = pq.read_table(seg).drop_columns(["earlier_cost_usd"])
        pq.write_table(old, seg)
        Journal(tmp_path / "out").check()
        (tmp_path / "out" / "results.parquet").unlink()
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        assert s.sent == 0 and s.ok == 8
        df = results(tmp_path)
        assert df["earlier_cost_usd"].isna().all() and (df["cost_usd"] > 0).all()
        # A rerun over the old records: new records carry the old costs.
        opts = RunOptions(rerun_where="key == 'r0001'", force=True, retry=FAST.retry,
                          progress="none", handle_signals=False)
        await run_job(job_for(tmp_path, sim.base_url, inp), opts)
        again = results(tmp_path).set_index("id")
        assert again.loc["r0001", "earlier_cost_usd"] == pytest.approx(
            df.set_index("id").loc["r0001", "cost_usd"])


@pytest.mark.anyio
async def test_a_new_format_writes_its_results_and_names_the_earlier_file(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 4)
    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        s = await run_job(job_for(tmp_path, sim.base_url, inp, format="csv"), FAST)
    assert s.sent == 0 and len(results(tmp_path, "csv")) == 4
    assert ("  note: out/results.parquet is from an earlier run with --format parquet and is "
            "not updated") in format_summary(s)


def test_the_summary_shows_a_message_of_the_three_commonest_failures() -> None:
    s = RunSummary(name="j", rows=10, failed=10, error_types={"http_500": 4, "timeout": 3,
                                                              "http_400": 2, "no_choices": 1},
                   error_examples={"http_500": "upstream crashed", "timeout": "no answer",
                                   "http_400": "bad max_tokens", "no_choices": "empty"})
    lines = format_summary(s).splitlines()
    at = lines.index("  failures: http_500 4, timeout 3, http_400 2, no_choices 1")
    assert lines[at + 1:at + 4] == ["    http_500: upstream crashed", "    timeout: no answer",
                                    "    http_400: bad max_tokens"]
    assert "empty" not in format_summary(s)
    assert lines[-1] == (
        "  rerun with --retry-failed to send the failed rows again (rows that timed out may "
        "need a longer --timeout); first fix what the endpoint refused in the 2 rows that "
        "failed with http_400 (a model name, a request setting, a prompt longer than the "
        "model's context: the error_message says), or "
        "they fail again")
    assert "requests sent this run" in format_summary(s)
    s.error_types = {"http_500": 4, "timeout": 3}
    assert format_summary(s).splitlines()[-1] == (
        "  rerun with --retry-failed to send the failed rows again (rows that timed out may "
        "need a longer --timeout)")
    s.error_types = {"http_500": 4}
    assert format_summary(s).splitlines()[-1] == (
        "  rerun with --retry-failed to send the failed rows again")
    # Rebuilt outputs (`report`): no run line, and rows left to do say how to go on.
    rebuilt = RunSummary(name="j", rows=10, ok=4, pending=6, ran=False)
    assert "requests sent this run" not in format_summary(rebuilt)
    assert format_summary(rebuilt).splitlines()[-1] == (
        "  rerun the job to send the rows not done yet")


def test_status_gives_the_pace_of_a_run_in_progress_and_when_it_would_end() -> None:
    from batchrunner.status import _epoch, _pace

    # job.json's times are UTC; one written without a zone is read as UTC too.
    assert _epoch({"started_at": "2026-11-30T11:00:00"}) == _epoch(
        {"started_at": "2026-11-30T11:00:00Z"}) == 1_796_036_400.0
    assert _epoch({"started_at": "not a time"}) is None and _epoch(None) is None

    now = 10_000.0
    finished = np.array([0.0, now - 500, *(now - 60 + np.arange(300) * 0.2)])  # 300 in 1 min
    assert _pace(finished, 6_000, now, None) == (
        "  pace: 150 rows/min over the last 120 s; the 6,000 rows to do would take about 40 min")
    assert _pace(finished, 60_000, now, now - 3600).endswith("about 6.7 h")
    assert _pace(finished, 100, now, None).endswith("would take under a minute")
    assert _pace(finished[:3], 0, now, None) == "  pace: 0.5 rows/min over the last 120 s"
    # A start in the future (a clock set back) falls back to the whole window.
    assert _pace(finished, 0, now, now + 30) == "  pace: 150 rows/min over the last 120 s"
    assert _pace(finished, 0, now, None) == "  pace: 150 rows/min over the last 120 s"
    assert _pace(finished[:2], 10, now, None) == "  no row finished in the last 120 s"
    # A run that started 60 s ago: its pace is over the later 30 s, not diluted over 120.
    assert _pace(finished, 0, now, now - 60) == "  pace: 300 rows/min over the last 30 s"
    assert "not known yet" in _pace(finished, 0, now, now - 2)
    assert "not known yet" in _pace(finished, 0, now, now - 9)


def test_status_pace_leaves_out_the_burst_and_storm_at_the_start() -> None:
    """A server's bucket of a minute's worth drained at the start (600 rows in its first 2 s),
    then the limit, 10 rows a second: 60 s in, status read 1,180 rows a minute over the 60 s
    and 600 rows to do "under a minute", a pace the run cannot hold and a time left half
    what it takes. The pace is of the later half of the run so far: the limit's."""
    from batchrunner.status import _pace

    now = 10_000.0
    burst = now - 60 + np.arange(600) * (2.0 / 600)
    limited = now - 57.95 + np.arange(580) * 0.1  # 10 a second to now
    finished = np.concatenate([burst, limited])
    assert _pace(finished, 600, now, now - 60) == (
        "  pace: 600 rows/min over the last 30 s; the 600 rows to do would take about 1 min")
    # Four minutes in, the last two minutes, the burst long out of them.
    limited = now - 237.95 + np.arange(2380) * 0.1
    assert _pace(np.concatenate([burst - 180, limited]), 1200, now, now - 240) == (
        "  pace: 600 rows/min over the last 120 s; the 1,200 rows to do would take about 2 min")


@pytest.mark.anyio
async def test_status_names_the_last_run_and_a_run_that_never_finished(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 5)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
    assert s.exit_code == 0
    meta_path = tmp_path / "out" / "job.json"
    last = json.loads(meta_path.read_text())["last_run"]
    assert last["stopped"] is None and last["sent"] == 5
    assert last["started_at"] <= last["finished_at"]
    status = format_status(tmp_path / "out")
    assert (f"  last run: {last['started_at']} to {last['finished_at']}, "
            f"{last['sent']} requests sent") in status
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["stopped"] is None and report["rows"]["to_do"] == 0
    # A run killed while sending leaves its start and no end.
    meta = json.loads(meta_path.read_text())
    meta["last_run"].update(finished_at=None)
    meta_path.write_text(json.dumps(meta))
    assert "did not finish (killed, or the machine stopped): run the job again to resume" in (
        format_status(tmp_path / "out"))


def test_a_second_run_of_a_job_in_progress_is_refused_and_status_shows_the_first(
        tmp_path: Path) -> None:
    # A nightly job still running when the next night's starts: the second must not send the
    # same rows again. The first's answers are slow until the others have been refused (at
    # 100 ms, on a loaded machine, it finished before they had started).
    n = 60
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with SimulatorThread(SimulatorConfig(api_key=KEY, latency_ms=2000)) as sim:
        argv = [sys.executable, "-m", "batchrunner", "run", "--input", str(inp), "--id-column",
                "id", "--prompt", "Summarise: {text}", "--model", "gpt-4o-mini", "--base-url",
                sim.base_url, "--output", str(out), "--concurrency", "2", "--progress", "none"]
        first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        try:
            deadline = time.monotonic() + 30
            meta = out / "job.json"
            while not (is_locked(out) and meta.exists() and "pid" in meta.read_text()):
                assert time.monotonic() < deadline and first.poll() is None, first.stderr
                time.sleep(0.02)
            status = format_status(out)
            assert f"  a run is in progress (pid {first.pid}, started 20" in status
            assert "  pace: " in status or "  no row finished in the last" in status
            second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            rebuild = subprocess.run([sys.executable, "-m", "batchrunner", "report", str(out)],
                                     env=env, capture_output=True, text=True, timeout=60)
            assert first.poll() is None  # the first was running all along
            sim.set_latency(0)  # its rows left answered at once
        finally:
            with reaped(first):
                first.communicate(timeout=60)
        completions = sim.stats()["completions"]
    assert first.returncode == 0
    for refused in (second, rebuild):
        assert refused.returncode == 5  # not a bad job: a scheduler may try again later
        assert refused.stderr.startswith(
            f"batchrunner: error: another batchrunner run is using {out} (pid {first.pid}, "
            "started 20"), refused.stderr
        assert refused.stderr.rstrip().endswith("let it finish or stop it, then run again")
    assert completions == n  # no row sent twice
    assert not is_locked(out) and "a run is in progress" not in format_status(out)


def test_a_rehearsal_against_batchrunner_simulate_is_the_simulators_answers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README: `batchrunner simulate` serves the simulator to rehearse a job. A run sent to it
    by URL was recorded as real answers: the same command against the real endpoint then sent
    nothing and exited 0, the results the simulator's "Echo: ..." text, reported as real. Its
    answers now say where they come from: the run says they are not real, job.json records
    them as the simulator's (so the real run is refused unless forced, and the same command
    resumes the rehearsal), and a job whose rows done are real stops at the simulator's first
    answer, keeping none of them."""
    import argparse

    from batchrunner.cli import main
    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    served = config_from_args(parser.parse_args([]))  # what `batchrunner simulate` serves
    assert served.announce
    inp = make_csv(tmp_path / "in.csv", 6)
    common = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "{text}",
              "--model", "gpt-4o-mini", "--progress", "none"]
    with SimulatorThread(served) as sim, SimulatorThread(SimulatorConfig()) as real:
        rehearse = [*common, "--base-url", sim.base_url, "--output", "out"]
        assert main([*rehearse, "--limit", "2"]) == 0
        out = capsys.readouterr().out
        assert "(to the built-in simulator: the answers are not real)" in out
        assert json.loads((tmp_path / "out" / "job.json").read_text())["simulator"] is True
        # The same command, which the summary says sends the next rows, does so, as the
        # command status names to finish the job does: neither says --force.
        assert "--force" not in out
        assert main(["report", "out"]) == 0
        assert "--force" not in capsys.readouterr().out
        assert main([*rehearse, "--limit", "2"]) == 0
        assert "--force" not in capsys.readouterr().out
        finish = next(x for x in format_status(tmp_path / "out").splitlines()
                      if x.startswith("  to finish, 2 rows to do: "))
        command = shlex.split(finish.partition(": ")[2])
        assert "--force" not in command
        assert main([*command[1:], "--progress", "none"]) == 0
        capsys.readouterr()
        assert Journal(tmp_path / "out").read().num_rows == 6
        # No row answered ok (every row refused): nothing to mix, the same command runs on,
        # and neither says --force, which would let other changes through unasked.
        refused = [*common[:6], "[[sim:400]] {text}", *common[7:], "--base-url", sim.base_url,
                   "--output", "refused"]
        assert main([*refused, "--limit", "2"]) == 3
        assert "--force" not in capsys.readouterr().out
        finish = next(x for x in format_status(tmp_path / "refused").splitlines()
                      if x.startswith("  to finish, 4 rows to do: "))
        assert "--force" not in finish
        assert main([*refused, "--limit", "2"]) == 3
        capsys.readouterr()
        assert "- simulator: yes" in (tmp_path / "out" / "cost_report.md").read_text()

        assert main([*common, "--base-url", real.base_url, "--output", "out"]) == 2
        assert ("were answered by the built-in simulator, and this run would use a real "
                "endpoint") in capsys.readouterr().err
        assert real.stats()["requests"] == 0

        # The README's order: --simulator's answers, then batchrunner simulate by URL, which
        # only its answers tell from a real endpoint: the refusal says --force keeps them the
        # simulator's, and it does.
        assert main([*common, "--simulator", "--output", "first", "--limit", "2"]) == 0
        assert "--force" not in capsys.readouterr().out  # the same command runs on
        assert main(["report", "first"]) == 0
        assert "--force" not in capsys.readouterr().out
        finish = next(x for x in format_status(tmp_path / "first").splitlines()
                      if x.startswith("  to finish, 4 rows to do: "))
        assert "--force" not in finish
        served_url = [*common, "--base-url", sim.base_url, "--output", "first"]
        assert main(served_url) == 2
        assert ("or pass --force to mix them (if the URL is batchrunner simulate's, --force "
                "keeps every answer the simulator's)") in capsys.readouterr().err
        assert main([*served_url, "--force"]) == 0
        assert json.loads((tmp_path / "first" / "job.json").read_text())["simulator"] is True
        capsys.readouterr()

        # The other way round: real answers first, then the simulator by URL.
        assert main([*common, "--base-url", real.base_url, "--output", "real", "--limit",
                     "2"]) == 0
        capsys.readouterr()
        assert main([*common, "--base-url", sim.base_url, "--output", "real"]) == 4
        out = capsys.readouterr().out
        assert ("is batchrunner's simulator (batchrunner simulate), and the rows done in "
                "real were answered by a real endpoint") in out
        state = Journal(tmp_path / "real").read()
        assert state.num_rows == 2  # none of the simulator's answers kept
        assert json.loads((tmp_path / "real" / "job.json").read_text())["simulator"] is False
        assert main([*common, "--base-url", sim.base_url, "--output", "real", "--force"]) == 0
        assert json.loads((tmp_path / "real" / "job.json").read_text())["simulator"] == "mixed"
        assert Journal(tmp_path / "real").read().num_rows == 6


def test_a_rehearsals_rerun_at_its_url_goes_on_while_batchrunner_simulate_answers_there(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rehearsal's rerun against batchrunner simulate at the same URL was refused unless
    given --force, as only answers tell the simulator from a real endpoint. It goes on: its
    answers are taken while they are the simulator's, and the first that is not (a server
    that does not announce itself, at the same port) stops the run, none of its answers kept,
    saying to start afresh or pass --force; with --force they mix."""
    import argparse

    from batchrunner.cli import main
    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    served = config_from_args(parser.parse_args([]))  # what `batchrunner simulate` serves
    inp = make_csv(tmp_path / "in.csv", 6)
    common = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "{text}",
              "--model", "gpt-4o-mini", "--progress", "none", "--output", "out"]
    with SimulatorThread(served) as sim:
        port = sim.port
        rehearse = [*common, "--base-url", sim.base_url, "--concurrency", "2"]
        assert main([*rehearse, "--limit", "2"]) == 0
        capsys.readouterr()
        # estimate, which sends nothing, warned that the run is refused: it is not
        assert main(["estimate", *[a for a in rehearse[1:] if a not in ("--progress", "none")]]
                    ) == 0
        out = capsys.readouterr().out
        assert "rows: 6 in the input, 2 already done, 4 to send" in out
        assert "refused" not in out and "--force" not in out
        assert main([*rehearse, "--limit", "2"]) == 0
        out, err = capsys.readouterr()
        assert "--force" not in out + err and "mix" not in out + err
        assert sim.stats()["requests"] == 4
    assert Journal(tmp_path / "out").read().num_rows == 4
    # A server that is not batchrunner simulate at the same URL: each of its answers (two in
    # flight at once) is left unkept, and the run stops at the first.
    with SimulatorThread(SimulatorConfig(latency_ms=300), port=port) as real:
        assert main(rehearse) == 4
        out = capsys.readouterr().out
        assert (f"  stopped: the endpoint at http://127.0.0.1:{port}/v1 no longer answers as "
                "batchrunner simulate, which answered the rows done in out: none of its answers "
                "now was kept (their rows are left to do; what it billed for them counts in "
                "the job's cost) — to run the job there, start afresh with another --output "
                "directory, or pass --force to mix its answers with the simulator's") in out
        assert real.stats()["completions"] >= 1
        # The summary said the answers were the simulator's, beside what the real one billed
        (line,) = [x for x in out.splitlines() if x.startswith("  cost: ")]
        assert "answered by a real endpoint now: billed, not kept" in line, line
        journal = Journal(tmp_path / "out").read(["status"]).column("status").to_pylist()
        assert journal.count("ok") == 4 and set(journal) <= {"ok", "retrying"}
        meta = json.loads((tmp_path / "out" / "job.json").read_text())
        assert meta["simulator"] is True
        status = format_status(tmp_path / "out")
        assert "  to finish, 2 rows to do: fix what stopped it (above), then: batchrunner run " \
            in status and "--force" not in status.partition("to finish")[2]
        assert main([*rehearse, "--force"]) == 0
        assert "going on (--force)" in capsys.readouterr().err
        assert json.loads((tmp_path / "out" / "job.json").read_text())["simulator"] == "mixed"
    statuses = Journal(tmp_path / "out").read(["status"]).column("status").to_pylist()
    assert statuses.count("ok") == 6


def test_a_rehearsal_rerun_at_another_url_is_refused_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A URL that answered none of the rows is no simulator's until it answers: a rehearsal's
    rerun there is refused unless forced, as a real endpoint's would be."""
    import argparse

    from batchrunner.cli import main
    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    served = config_from_args(parser.parse_args([]))  # what `batchrunner simulate` serves
    inp = make_csv(tmp_path / "in.csv", 4)
    common = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "{text}",
              "--model", "gpt-4o-mini", "--progress", "none", "--output", "out"]
    with SimulatorThread(served) as sim, SimulatorThread(served) as other:
        assert main([*common, "--base-url", sim.base_url, "--limit", "2"]) == 0
        capsys.readouterr()
        again = [*common, "--base-url", other.base_url, "--rerun-where", "True"]
        assert main(again) == 2
        assert ("were answered by the built-in simulator, and this run would use a real "
                "endpoint") in capsys.readouterr().err
        assert main(["run", *again[1:], "--dry-run"]) == 0
        assert ("warning: the run is refused unless given --force: the rows done in "
                ) in capsys.readouterr().out
        assert other.stats()["requests"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("first", [True, False], ids=["simulator-first", "real-first"])
async def test_an_answer_from_another_kind_of_server_at_the_url_is_not_read(first: bool) -> None:
    """The client told batchrunner simulate's answers from a real endpoint's by the first
    answer only: a server of the other kind at the same port later (the simulator stopped, a
    real server started there) had its answers taken as the first one's kind. Each answer is
    told now: one of the other kind raises EndpointChanged, unread."""
    from batchrunner.client import ChatClient
    from batchrunner.errors import EndpointChanged

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with Simulator(SimulatorConfig(announce=first)) as sim:
        port = sim.port
        async with ChatClient(sim.base_url, KEY, timeout_s=10, connections=4) as client:
            assert (await client.complete(body)).finish_reason == "stop"
            assert client.simulator_answered is first
            await sim.stop()
            async with Simulator(SimulatorConfig(announce=not first), port=port) as now:
                with pytest.raises(EndpointChanged) as caught:
                    await client.complete(body)
                assert caught.value.simulator is not first
                assert now.stats()["completions"] == 1


# What stands in front of a server now and then (nginx while its upstream restarts, a gateway
# turning requests away, a network's sign-in page): its own answers, none of the server's
# headers with them.
FRONT_PAGES: dict[str, tuple[int, str, str]] = {
    "nginx-502": (502, "text/html", "<html><head><title>502 Bad Gateway</title></head><body>"
                  "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
                  "</body></html>"),
    "nginx-503": (503, "text/html", "<html><head><title>503 Service Temporarily Unavailable"
                  "</title></head><body><center><h1>503</h1></center><hr>nginx</body></html>"),
    "gateway-429": (429, "application/json", '{"error": {"message": "Too many requests, '
                    'slow down", "type": "rate_limit_error", "code": "rate_limited"}}'),
    "signin-200": (200, "text/html", "<!DOCTYPE html><html><head><title>Sign in</title>"
                   "</head><body>Please sign in to continue</body></html>"),
}


class Front:
    """A proxy on 127.0.0.1 in front of ``upstream`` (a simulator): the chat requests
    ``paged`` numbers (1 the first) get its ``page`` (of ``FRONT_PAGES``), the others are
    forwarded, their answers' headers with them."""

    def __init__(self, upstream: Simulator, page: str, paged: range) -> None:
        self.upstream = upstream.base_url.removesuffix("/v1")
        self.page = FRONT_PAGES[page]
        self.paged = paged
        self.requests = 0
        self.pages = 0  # the pages answered

    async def __aenter__(self) -> Front:
        self.session = aiohttp.ClientSession()
        self.runner, port = await serve_on_loopback(self.handle)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.endswith("/chat/completions"):
            self.requests += 1
            if self.requests in self.paged:
                self.pages += 1
                status, kind, text = self.page
                return web.Response(status=status, content_type=kind, text=text)
        sent = {k: v for k, v in request.headers.items()
                if k.lower() in ("authorization", "content-type")}
        async with self.session.request(request.method, self.upstream + request.path_qs,
                                        data=await request.read(), headers=sent) as r:
            return web.Response(status=r.status, body=await r.read(), headers={
                k: v for k, v in r.headers.items() if k.lower() not in (
                    "content-length", "transfer-encoding", "connection", "date", "server")})


@pytest.mark.anyio
@pytest.mark.parametrize(("announce", "page"), [
    (True, "nginx-502"), (True, "gateway-429"), (False, "nginx-502"),
], ids=["rehearsal-502", "rehearsal-429", "real-502"])
async def test_a_proxys_error_pages_in_a_rerun_are_retried_whatever_server_is_behind_it(
        tmp_path: Path, announce: bool, page: str) -> None:
    """A rehearsal's rerun at batchrunner simulate's URL took any answer without the
    simulator's header for another server's: an error page of what stands in front of the
    simulator (nginx's 502 while its upstream restarts, a gateway's 429) stopped the run, exit
    4, as "no longer answers as batchrunner simulate". Only a completion tells the endpoint's
    kind now: the pages are retried as any, and the run finishes, every row the simulator's.
    A real endpoint's rerun behind the same pages is a real endpoint's still."""
    n = 6
    inp = make_csv(tmp_path / "in.csv", n)
    fast = RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=6)
    async with Simulator(SimulatorConfig(announce=announce)) as sim, \
            Front(sim, page, range(3, 6)) as front:
        job = job_for(tmp_path, front.base_url, inp, concurrency=1)
        first = await run_job(job, RunOptions(limit=2, progress="none", handle_signals=False,
                                              retry=fast))
        assert first.exit_code == 0 and first.ok == 2, first.stopped
        with anyio.fail_after(60):
            s = await run_job(job, RunOptions(progress="none", handle_signals=False,
                                              retry=fast))
        assert front.pages == 3
        assert s.exit_code == 0 and not s.stopped and (s.ok, s.failed) == (n, 0), s.stopped
        assert sim.stats()["completions"] == n  # every row the simulator's, none twice
    assert json.loads((tmp_path / "out" / "job.json").read_text())["simulator"] is announce
    assert (results(tmp_path)["status"] == "ok").all()


@pytest.mark.anyio
@pytest.mark.parametrize("announce", [True, False], ids=["rehearsal", "real"])
async def test_a_fresh_runs_first_answer_a_proxys_503_page_tells_no_kind(
        tmp_path: Path, announce: bool) -> None:
    """The first answer told the endpoint's kind: a fresh rehearsal whose first answer was a
    proxy's 503 page (no simulator's header) was taken for a real endpoint's, and the
    simulator's first completion then stopped it, exit 4, as "batchrunner simulate now, where a
    real endpoint answered this run before". The first completion tells."""
    n = 4
    inp = make_csv(tmp_path / "in.csv", n)
    fast = RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=4)
    async with Simulator(SimulatorConfig(announce=announce)) as sim, \
            Front(sim, "nginx-503", range(1, 2)) as front:
        with anyio.fail_after(60):
            s = await run_job(job_for(tmp_path, front.base_url, inp, concurrency=1),
                              RunOptions(progress="none", handle_signals=False, retry=fast))
        assert front.pages == 1
        assert s.exit_code == 0 and not s.stopped and (s.ok, s.failed) == (n, 0), s.stopped
        assert sim.stats()["completions"] == n
    assert json.loads((tmp_path / "out" / "job.json").read_text())["simulator"] is announce


@pytest.mark.anyio
async def test_only_a_completion_tells_the_client_the_endpoints_kind() -> None:
    """Expecting batchrunner simulate's answers (a rehearsal's rerun), the client raised
    EndpointChanged at any answer without its header, a proxy's error page or sign-in page
    too: those are the errors they are (retried), and a completion without the header is what
    raises it."""
    from batchrunner.client import ChatClient
    from batchrunner.errors import BadResponseError, EndpointChanged, HTTPStatusError

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with Simulator(SimulatorConfig(announce=True)) as sim:
        for page, error in (("nginx-502", HTTPStatusError), ("signin-200", BadResponseError),
                            ("gateway-429", HTTPStatusError)):
            async with Front(sim, page, range(1, 2)) as front, ChatClient(
                    front.base_url, KEY, timeout_s=10, connections=2) as client:
                client.expect_simulator()
                with pytest.raises(error) as caught:
                    await client.complete(body)
                assert caught.value.retryable, caught.value
                assert (await client.complete(body)).finish_reason == "stop"
                assert client.simulator_answered
    async with Simulator(SimulatorConfig(announce=False)) as real, ChatClient(
            real.base_url, KEY, timeout_s=10, connections=2) as client:
        client.expect_simulator()
        with pytest.raises(EndpointChanged):
            await client.complete(body)
        assert real.stats()["completions"] == 1


def test_ctrl_c_in_a_rehearsal_says_to_run_the_same_command_which_resumes(
        tmp_path: Path) -> None:
    """A rehearsal against batchrunner simulate, Ctrl-C, and the same command: Ctrl-C's line
    said to run the same command to resume, the summary then to add --force, and the command
    was refused without it. It resumes and finishes, and no line says --force."""
    import argparse

    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    served = replace(config_from_args(parser.parse_args([])), latency_ms=200)
    n = 40
    inp = make_csv(tmp_path / "in.csv", n)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    with SimulatorThread(served) as sim:
        cmd = [sys.executable, "-m", "batchrunner", "run", "--input", str(inp),
               "--id-column", "id", "--prompt", "{text}", "--model", "gpt-4o-mini",
               "--base-url", sim.base_url, "--output", str(tmp_path / "out"),
               "--concurrency", "4", "--progress", "none"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while sim.stats()["completions"] < 8:
            assert time.monotonic() < deadline and proc.poll() is None, sim.stats()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 4, err
        assert "interrupted by Ctrl-C (SIGINT); finished rows are saved — run the same " \
            "command to resume" in out
        assert "--force" not in out + err
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "--force" not in done.stdout + done.stderr
        assert sim.stats()["completions"] == n  # no row sent twice


def test_status_after_a_rehearsal_with_failed_rows_names_the_retry_that_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rehearsal against batchrunner simulate that ended with failed rows and none to do:
    the run's summary and status say to rerun with --retry-failed, which runs (it said to add
    --force, which was needed)."""
    import argparse

    from batchrunner.cli import main
    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    served = config_from_args(parser.parse_args([]))  # what `batchrunner simulate` serves
    inp = make_csv(tmp_path / "in.csv", 4, marker={1: " [[sim:400]]"})
    with SimulatorThread(served) as sim:
        rehearse = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "{text}",
                    "--model", "gpt-4o-mini", "--progress", "none", "--output", "out",
                    "--base-url", sim.base_url]
        assert main(rehearse) == 3
        assert "--force" not in capsys.readouterr().out
        status = format_status(tmp_path / "out").splitlines()
        advice, command = status[-1].split(": batchrunner run ")
        assert advice.endswith("then rerun with --retry-failed to send it")
        args = shlex.split(command)  # status's command for it, as it prints it, runs
        assert args[-1] == "--retry-failed" and "--force" not in args
        assert main(["run", *args]) == 3
        assert sim.stats()["requests"] == 5


def test_the_simulators_answers_never_mix_with_real_ones_unasked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run against the built-in simulator says so; a rerun of its output against a real
    endpoint (a simulator thread stands in for one), or the other way round, is refused unless
    forced; a job file's simulator = true gives way to --base-url on the command line."""
    from batchrunner.cli import main

    inp = make_csv(tmp_path / "in.csv", 5)
    common = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "{text}",
              "--model", "gpt-4o-mini", "--progress", "none"]
    assert main([*common, "--simulator", "--output", "sim-out"]) == 0
    out = capsys.readouterr().out
    assert "(to the built-in simulator: the answers are not real)" in out
    report = json.loads((tmp_path / "sim-out" / "cost_report.json").read_text())
    assert report["job"]["simulator"] is True
    assert "- simulator: yes" in (tmp_path / "sim-out" / "cost_report.md").read_text()
    # Not the URL it was served at, on a port of its own: a server given that port later (the
    # thread below, by chance) was taken for a rehearsal's batchrunner simulate, and its
    # answers mixed unasked.
    assert "answered_endpoint" not in json.loads((tmp_path / "sim-out" / "job.json").read_text())

    with SimulatorThread(SimulatorConfig()) as real:
        again = [*common, "--base-url", real.base_url, "--output", "sim-out"]
        assert main(again) == 2
        err = capsys.readouterr().err
        assert ("were answered by the built-in simulator, and this run would use a real "
                "endpoint") in err and "--force" in err
        assert real.stats()["requests"] == 0
        # Forced, but every row is done: nothing is sent, nothing mixes, and the record says
        # so (the simulator answered every row).
        assert main([*again, "--force"]) == 0
        assert "their answers mix (--force)" in capsys.readouterr().err
        assert real.stats()["requests"] == 0
        assert json.loads((tmp_path / "sim-out" / "job.json").read_text())["simulator"] is True
        # Forced with a row to send: from its answer on, the directory holds some of each,
        # whichever answers next.
        assert main([*again, "--force", "--rerun-where", "key == 'r0000'"]) == 0
        assert real.stats()["requests"] == 1
        assert json.loads((tmp_path / "sim-out" / "job.json").read_text())["simulator"] == "mixed"
        assert main([*common, "--simulator", "--output", "sim-out"]) == 0
        report = json.loads((tmp_path / "sim-out" / "cost_report.json").read_text())
        assert report["job"]["simulator"] == "some rows"
        assert "- simulator: some rows" in (tmp_path / "sim-out" / "cost_report.md").read_text()
        capsys.readouterr()

        assert main([*common, "--base-url", real.base_url, "--output", "real-out"]) == 0
        assert main([*common, "--simulator", "--output", "real-out"]) == 2
        assert "answered by a real endpoint" in capsys.readouterr().err

        job = tmp_path / "job.toml"
        job.write_text(f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\n'
                       'model = "gpt-4o-mini"\nprompt = "{text}"\n[endpoint]\nsimulator = true\n'
                       '[output]\ndir = "file-out"\n')
        sent = real.stats()["requests"]
        assert main(["run", str(job), "--base-url", real.base_url, "--progress", "none"]) == 0
        assert real.stats()["requests"] == sent + 5
        assert "built-in simulator" not in capsys.readouterr().out


@pytest.mark.anyio
async def test_a_row_that_cannot_be_sent_names_its_column_and_the_advice_says_fix_it_first(
        tmp_path: Path) -> None:
    """A null prompt field fails its row as invalid_row naming the column; the advice is to fix
    the input before --retry-failed, which alone would fail the row again."""
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "question": ["why?", None, "how?"],
                             "topic": ["x", "y", None]}), inp)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp,
                                  prompt="Q: {question} ({topic})"), FAST)
    df = results(tmp_path).set_index("id")
    assert df.loc["b", "error_message"] == ("not sent: column 'question' is null, and the "
                                            "prompt needs it")
    assert df.loc["c", "error_message"].startswith("not sent: column 'topic' is null")
    assert format_summary(s).splitlines()[-1] == (
        "  fix the input of the 2 rows that could not be sent (invalid_row: the error_message "
        "of each says why), then rerun with --retry-failed to send them")
    status = format_status(tmp_path / "out")
    assert status.splitlines()[-1].startswith(format_summary(s).splitlines()[-1] + ": batchrunner "
                                              "run --input ")  # and the command for them
    assert status.splitlines()[-1].endswith(" --retry-failed")
    mixed = RunSummary(name="j", rows=3, failed=3, error_types={"http_500": 2, "invalid_row": 1})
    assert format_summary(mixed).splitlines()[-1] == (
        "  rerun with --retry-failed to send the failed rows again; first fix the input of the "
        "1 row that could not be sent (invalid_row: its error_message says why)")


@pytest.mark.anyio
async def test_the_bar_counts_the_whole_jobs_rows_on_a_rerun(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar starts at the rows done before; its ok= and failed= count them too, so
    '10/10 ok=10' rather than '10/10 ok=5'."""
    # A log's whole line: pytest-xdist's workers have COLUMNS=80 and LINES=24 set, to which
    # tqdm 4.66 sizes a bar on a stream with no terminal (79 columns, too few for every count:
    # failed= is left out), where a later tqdm asks the stream alone.
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    inp = make_csv(tmp_path / "in.csv", 5, marker={1: " [[sim:400]]"})
    bar = RunOptions(retry=FAST.retry, progress="bar", handle_signals=False)
    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        make_csv(inp, 10, marker={1: " [[sim:400]]"})
        capsys.readouterr()
        await run_job(job_for(tmp_path, sim.base_url, inp), bar)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "10/10" in last and "ok=9 failed=1 " in last, last


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
async def test_finished_at_is_a_utc_time_in_the_results(tmp_path: Path, fmt: str) -> None:
    inp = make_csv(tmp_path / "in.csv", 3)
    before = pd.Timestamp.now(tz="UTC").floor("ms")
    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp, format=fmt), FAST)
    after = pd.Timestamp.now(tz="UTC")
    at = pd.to_datetime(results(tmp_path, fmt)["finished_at"], utc=True)
    assert ((before <= at) & (at <= after)).all(), at.tolist()
    if fmt == "parquet":
        assert str(results(tmp_path)["finished_at"].dtype) == "datetime64[ms, UTC]"


async def requests_reach(sim: Simulator, n: int) -> None:
    """Wait (20 s at most) until ``sim`` has had ``n`` requests."""
    for _ in range(2000):
        if sim.stats()["requests"] >= n:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"waited 20 s for {n} requests: {sim.stats()}")


@pytest.mark.anyio
async def test_requests_cut_off_by_a_stop_are_said(tmp_path: Path) -> None:
    """Ctrl-C, and requests still unanswered when the drain runs out: the summary says they
    were cut off (the server may bill them) and that their rows are sent again."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(6)],
                  "text": [f"row {i} [[sim:hang]]" for i in range(6)]}).to_csv(inp, index=False)
    async with Simulator(SimulatorConfig()) as sim:
        async def interrupt() -> None:
            await requests_reach(sim, 4)
            os.kill(os.getpid(), signal.SIGINT)

        async with anyio.create_task_group() as tg:
            tg.start_soon(interrupt)
            with anyio.fail_after(30):
                s = await run_job(job_for(tmp_path, sim.base_url, inp, concurrency=4),
                                  RunOptions(drain_s=0.3, progress="none", retry=FAST.retry))
    assert s.exit_code == 4 and s.pending == 6 and s.cut_off == 4
    assert ("  4 requests were still in flight and cut off: the server may bill them, and their "
            "rows are sent again on the next run") in format_summary(s)
    # Counted at their estimate, as tries cut in an outage are: journaled with their rows
    # (for the next runs' budgets) and in the reports, apart from the usage servers reported.
    cut = Journal(tmp_path / "out").read().to_pandas()
    assert sorted(cut["status"]) == ["retrying"] * 4, cut
    assert (cut["unknown_tries"] == 1).all() and (cut["unreported_usd"] > 0).all(), cut
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_unreported"]["rows"] == 4, report["cost_unreported"]


def test_status_of_a_job_file_that_has_not_run_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from batchrunner.cli import main

    inp = make_csv(tmp_path / "in.csv", 3)
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{inp.name}"\n[request]\nmodel = "gpt-4o-mini"\n'
                   'prompt = "Q: {text}"\n[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
    assert main(["status", str(job)]) == 2
    assert (f"job file {job} has not run yet ({tmp_path / 'out'} holds no job.json): run it "
            f"with: batchrunner run {job}") in capsys.readouterr().err


def test_report_after_the_input_changed_says_to_run_the_job(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`report` rebuilds from the journal and the input as the last run saw it: an input
    changed since cannot be matched that way (it used to crash), so it says to rerun."""
    from batchrunner.cli import main

    inp = make_csv(tmp_path / "in.csv", 8)
    args = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "Q: {text}", "--model",
            "gpt-4o-mini", "--simulator", "--output", str(tmp_path / "out"), "--progress", "none"]
    assert main(args) == 0
    lines = inp.read_text().splitlines()
    inp.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # a row removed
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out")]) == 2
    assert "in.csv changed since the job's last run" in capsys.readouterr().err
    assert main(args) == 0 and main(["report", str(tmp_path / "out")]) == 0


@pytest.mark.anyio
async def test_limit_sends_the_first_rows_to_do_and_a_rerun_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit N sends the first N rows to do, in input order, and exits 0 (what was asked);
    each rerun with it sends the next N; retried failed rows count among the N."""
    from batchrunner.estimate import estimate, format_estimate
    from batchrunner.runner import prepare

    inp = make_csv(tmp_path / "in.csv", 12, marker={1: " [[sim:400]]"})

    def limit(n: int, **kw: Any) -> RunOptions:
        return replace(FAST, limit=n, **kw)

    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        est = estimate(prepare(job, limit(5)))
        assert (est.to_send, est.already_done, est.limited) == (5, 0, 7)
        assert "5 to send; 7 more left for later runs by --limit" in format_estimate(est)
        first = await run_job(job, limit(5))
        assert (first.ok, first.failed, first.pending, first.limited) == (4, 1, 7, 7)
        assert first.exit_code == 3  # row 1 failed; no rows left "stopped"
        assert sim.stats()["requests"] == 5
        text = format_summary(first)
        assert "--limit 5 left 7 rows to do: the same command sends the next 5 rows" in text
        assert "--retry-failed" in text
        done = set(results(tmp_path).dropna(subset=["status"])["id"])
        assert done == {f"r{i:04d}" for i in range(5)}

        second = await run_job(job, limit(5))
        assert (second.ok, second.failed, second.pending, second.sent) == (9, 1, 2, 5)
        # The failed row comes first among the rows to do when retried.
        third = await run_job(job, limit(2, retry_failed=True))
        assert third.sent == 2 and (third.ok, third.failed, third.pending) == (10, 1, 1)
        assert json.loads((tmp_path / "out" / "job.json").read_text())["last_run"]["limit"] == 2
        assert "(--limit 2)" in format_status(tmp_path / "out")

        last = await run_job(job, limit(50))  # more than is left: as without it
        assert (last.ok, last.pending, last.limited, last.sent) == (11, 0, 0, 1)
        assert last.exit_code == 3 and "--limit" not in format_summary(last)
        assert "limit" not in json.loads((tmp_path / "out" / "job.json").read_text())["last_run"]


def test_limit_must_be_a_whole_number_of_rows(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from batchrunner.cli import main

    inp = make_csv(tmp_path / "in.csv", 3)
    for bad in ("0", "-2", "2.5", "ten"):
        assert main(["run", "--input", str(inp), "--prompt", "{text}", "--model", "m",
                     "--simulator", "--output", str(tmp_path / "o"), "--limit", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"batchrunner: error: --limit takes a whole number of rows, 1 or more, " \
                      f"got {bad!r}"
    assert not (tmp_path / "o").exists()


@pytest.mark.anyio
async def test_a_server_on_this_machine_is_sent_no_key_when_none_is_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM started without --api-key, or `batchrunner simulate`, on 127.0.0.1: with
    OPENAI_API_KEY unset the run sends no Authorization header; a server that wants one stops
    the job saying to set it, and a rerun with it finishes."""
    monkeypatch.delenv("OPENAI_API_KEY")
    inp = make_csv(tmp_path / "in.csv", 6)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        assert (s.exit_code, s.ok) == (0, 6)
    out = tmp_path / "other"
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp, output=str(out)), FAST)
        assert s.exit_code == 4 and s.stopped is not None
        assert "the endpoint wants an API key (HTTP 401" in s.stopped
        assert "none was sent: set OPENAI_API_KEY in the environment or a .env file" in s.stopped
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        s = await run_job(job_for(tmp_path, sim.base_url, inp, output=str(out)), FAST)
        assert (s.exit_code, s.ok) == (0, 6)


@pytest.mark.anyio
async def test_a_key_under_a_guides_name_is_named_when_a_server_here_wants_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway guide's .env (NBILITY_API_KEY) against a server on this machine that checks
    keys: none was sent, and the message said to set OPENAI_API_KEY alone, the reader left to
    find --api-key-env. It names the variable that holds one; with it, the job finishes."""
    for name in list(os.environ):  # none of the machine's: the message names the .env's
        if name.upper().endswith("_API_KEY"):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(f"NBILITY_API_KEY={KEY}\n")
    inp = make_csv(tmp_path / "in.csv", 4)
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim:
        s = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        assert s.exit_code == 4 and s.stopped is not None and s.pending == 4
        assert s.stopped.endswith(
            "none was sent: set OPENAI_API_KEY in the environment or a .env file, or pass "
            f"--api-key-env NBILITY_API_KEY (NBILITY_API_KEY from {tmp_path / '.env'} is set), "
            "then rerun to resume")
        assert KEY not in s.stopped
        s = await run_job(job_for(tmp_path, sim.base_url, inp, api_key_env="NBILITY_API_KEY"),
                          FAST)
        assert (s.exit_code, s.ok) == (0, 4)


@pytest.mark.anyio
async def test_a_server_on_this_machine_that_answers_no_key_with_403_says_none_was_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI's HTTPBearer (before 0.121), which many local servers use, answers a request
    without a key with 403 {"detail": "Not authenticated"}: the job stopped saying the endpoint
    refused the API key and to check OPENAI_API_KEY, which was not set."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    monkeypatch.delenv("OPENAI_API_KEY")
    inp = make_csv(tmp_path / "in.csv", 3)

    async def bearer_required(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"detail": "Not authenticated"}, status=403)

    runner, port = await serve_on_loopback(bearer_required)
    try:
        s = await run_job(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp), FAST)
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and s.stopped is not None and s.pending == 3
    assert s.stopped.startswith("the endpoint wants an API key (HTTP 403: Not authenticated) — "
                                "none was sent: set OPENAI_API_KEY")


@pytest.mark.anyio
async def test_an_input_touched_while_the_job_runs_is_still_its_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its modification time changed, not its bytes (a backup tool, a re-export of the same
    rows): the run ends as it would have, its results written."""
    import batchrunner.runner as runner

    inp = make_csv(tmp_path / "in.csv", 12)
    pipeline = runner._pipeline

    async def touched_meanwhile(run: Any) -> None:
        await pipeline(run)
        staged = tmp_path / "export.csv"
        staged.write_bytes(inp.read_bytes())
        os.replace(staged, inp)

    monkeypatch.setattr(runner, "_pipeline", touched_meanwhile)
    async with Simulator(SimulatorConfig()) as sim:
        summary = await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
    assert summary.exit_code == 0 and len(results(tmp_path)) == 12


@pytest.mark.anyio
async def test_an_input_replaced_while_the_job_runs_never_gets_the_answers_of_other_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tonight's export replaces the input while the job still sends last night's: the results
    are not merged with rows in another order (each answer would land on another row); the run
    stops, exit 4, its rows saved, and the next run writes every answer beside its own row."""
    import batchrunner.runner as runner
    from batchrunner.errors import StopJob

    inp = make_csv(tmp_path / "in.csv", 30)
    rows = pd.read_csv(inp)
    pipeline = runner._pipeline

    async def replaced_meanwhile(run: Any) -> None:
        await pipeline(run)
        staged = tmp_path / "export.csv"
        rows.iloc[::-1].to_csv(staged, index=False)  # the same rows, in another order
        os.replace(staged, inp)

    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        with monkeypatch.context() as m:
            m.setattr(runner, "_pipeline", replaced_meanwhile)
            with pytest.raises(StopJob, match=r"in\.csv changed while the job ran") as e:
                await run_job(job, FAST)
        assert "run the same command" in str(e.value)
        assert not (tmp_path / "out" / "results.parquet").exists()
        # What the run did, printed above its stop's line: it printed that line alone.
        said = runner.format_summary(e.value.summary).splitlines()
        assert said[0] == "batchrunner: in — 30 rows: 30 ok, 0 failed", said
        assert "  stopped: the input changed while the job ran (the line below)" in said, said
        assert any(line.startswith("  cost: $") for line in said), said
        status = format_status(tmp_path / "out")
        assert "changed while the job ran" in status and "30 ok" in status
        sent = sim.stats()["requests"]
        again = await run_job(job, FAST)
        assert again.exit_code == 0 and sim.stats()["requests"] == sent  # nothing sent twice
    df = results(tmp_path)
    assert list(df["id"]) == list(rows["id"][::-1])
    for text, content in zip(df["text"], df["content"], strict=True):
        assert content.startswith(f"Echo: [{prompt_key(f'Summarise: {text}')}]")


@pytest.mark.anyio
async def test_a_run_interrupted_as_its_input_was_replaced_says_both(tmp_path: Path) -> None:
    """A scheduler's SIGTERM (Ctrl-C here) stops a run whose input tonight's export replaced
    meanwhile: its stop said only that the input changed, and the log no longer said that the
    run was interrupted. It says both, the input's change (what to do next) last."""
    from batchrunner.errors import StopJob

    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(6)],
                  "text": [f"row {i} [[sim:hang]]" for i in range(6)]}).to_csv(inp, index=False)
    async with Simulator(SimulatorConfig()) as sim:
        async def replace_and_interrupt() -> None:
            await requests_reach(sim, 4)
            staged = tmp_path / "export.csv"
            pd.DataFrame({"id": ["r0"], "text": ["tonight's row"]}).to_csv(staged, index=False)
            os.replace(staged, inp)
            os.kill(os.getpid(), signal.SIGINT)

        async with anyio.create_task_group() as tg:
            tg.start_soon(replace_and_interrupt)
            with anyio.fail_after(30), pytest.raises(StopJob) as e:
                await run_job(job_for(tmp_path, sim.base_url, inp, concurrency=4),
                              RunOptions(drain_s=0.3, progress="none", retry=FAST.retry))
    said = str(e.value)
    assert said.startswith("interrupted by Ctrl-C (SIGINT), and input "), said
    assert said.endswith(" changed while the job ran (replaced, rewritten or removed): the "
                         "results and reports were not written from it, as its rows may no "
                         "longer be those sent; finished rows are saved — run the same command "
                         "again to send the rows that changed and write the results"), said
    last = json.loads((tmp_path / "out" / "job.json").read_text())["last_run"]
    assert last["stopped"] == said and last["stop_kind"] == "input_changed"
    status = format_status(tmp_path / "out")
    assert f"  last run: stopped {last['finished_at']}: {said}" in status.splitlines(), status


@pytest.mark.anyio
async def test_a_budget_stop_as_the_input_was_replaced_says_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped for its budget while tonight's export replaced its input: the stop said
    only that the input changed, and the same command, run as it said, stopped again at once
    for the budget it never named. It says both, the budget first."""
    import batchrunner.runner as runner
    from batchrunner.errors import StopJob

    inp = make_csv(tmp_path / "in.csv", 40)
    pipeline = runner._pipeline

    async def replaced_meanwhile(run: Any) -> None:
        await pipeline(run)
        staged = tmp_path / "export.csv"
        make_csv(staged, 41)
        os.replace(staged, inp)

    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp, max_cost_usd=0.0001, concurrency=2)
        with monkeypatch.context() as m:
            m.setattr(runner, "_pipeline", replaced_meanwhile)
            with pytest.raises(StopJob) as e:
                await run_job(job, FAST)
    said = str(e.value)
    assert said.startswith("budget reached: "), said
    assert "; and input " in said and " changed while the job ran " in said, said
    last = json.loads((tmp_path / "out" / "job.json").read_text())["last_run"]
    assert last["stopped"] == said and last["stop_kind"] == "input_changed"
    assert f"  last run: stopped {last['finished_at']}: {said}" in format_status(
        tmp_path / "out").splitlines()


@pytest.mark.anyio
async def test_an_input_replaced_while_a_job_keyed_by_position_runs_says_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows keyed by position (no id column): the same command again is refused, as for any
    input changed since the last run, until --force says the rows kept their places. The stop
    says so, and with --force the row whose text changed is sent again, the others not."""
    import dataclasses

    import batchrunner.runner as runner
    from batchrunner.errors import StopJob, UsageError

    inp = make_csv(tmp_path / "in.csv", 20)
    pipeline = runner._pipeline

    async def replaced_meanwhile(run: Any) -> None:
        await pipeline(run)
        staged = tmp_path / "export.csv"
        make_csv(staged, 20, marker={7: " (edited)"})
        os.replace(staged, inp)

    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp, id_column=None)
        with monkeypatch.context() as m:
            m.setattr(runner, "_pipeline", replaced_meanwhile)
            with pytest.raises(StopJob, match=r"in\.csv changed while the job ran") as e:
                await run_job(job, FAST)
        said = str(e.value)
        assert "--force" in said, said
        with pytest.raises(UsageError, match="--force"):
            await run_job(job, FAST)  # as the stop said: not without --force
        sent = sim.stats()["requests"]
        again = await run_job(job, dataclasses.replace(FAST, force=True))
        assert again.exit_code == 0 and sim.stats()["requests"] == sent + 1
    df = results(tmp_path)
    assert df["text"][7].endswith("(edited)")
    for text, content in zip(df["text"], df["content"], strict=True):
        assert content.startswith(f"Echo: [{prompt_key(f'Summarise: {text}')}]")


def test_a_job_begun_with_both_token_limits_resumes_with_the_one_now_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--max-tokens N over a job file's [request.extra] max_completion_tokens: older runs sent
    both, and job.json holds both; the limit is now sent under max_completion_tokens alone,
    and the resume of such a job was refused as changed ("max_tokens: 400 → not set"). The
    same limit under both names is that one limit: resumed. Two that differ are a change."""
    from batchrunner.cli import main
    from batchrunner.config import settings_fingerprint

    pd.DataFrame({"id": range(4), "text": ["a", "b", "c", "d"]}).to_csv(
        tmp_path / "in.csv", index=False)
    job = tmp_path / "job.toml"
    with SimulatorThread(SimulatorConfig()) as sim:
        job.write_text(f'[input]\npath = "in.csv"\nid_column = "id"\n[request]\n'
                       f'model = "gpt-4o-mini"\nprompt = "Say {{text}}"\n[request.extra]\n'
                       f'max_completion_tokens = 400\n[endpoint]\nbase_url = "{sim.base_url}"\n'
                       f'[output]\ndir = "out"\n')
        run = ["run", str(job), "--max-tokens", "400", "--progress", "none"]
        assert main([*run, "--limit", "2"]) == 0
        meta_path = tmp_path / "out" / "job.json"
        meta = json.loads(meta_path.read_text())
        for sent in (400, 300):  # as older code wrote it: both limits
            meta["request"]["max_tokens"] = sent
            meta["request_fingerprint"] = settings_fingerprint(meta["request"])
            meta_path.write_text(json.dumps(meta))
            capsys.readouterr()
            if sent == 300:
                assert main(run) == 2
                assert "(max_tokens: 300 → not set)" in capsys.readouterr().err
            else:
                assert "changed since" not in format_status(tmp_path / "out")
                assert main([*run, "--limit", "3"]) == 0, capsys.readouterr().err
                assert "changed" not in capsys.readouterr().err


def test_a_finished_jobs_rerun_says_there_is_nothing_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same command after the job finished said "$0.0000 of it this run; 0 requests sent
    this run", as if it had tried. It says there was nothing to do, and, with rows failed,
    how to send them again."""
    from batchrunner.cli import main

    inp = make_csv(tmp_path / "in.csv", 3, marker={1: " [[sim:400]]"})
    cmd = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "{text}", "--model",
           "gpt-4o-mini", "--simulator", "--progress", "none", "--output", str(tmp_path / "out")]
    assert main(cmd) == 3
    capsys.readouterr()
    assert main(cmd) == 3
    lines = capsys.readouterr().out.splitlines()
    assert "  nothing to do: earlier runs did the 3 rows (1 failed), so none was sent" in lines
    assert not any("requests sent" in line or "this run" in line for line in lines), lines
    assert "then rerun with --retry-failed to send it" in lines[-1]
    assert main([*cmd, "--retry-failed"]) == 3
    assert "  nothing to do: " not in capsys.readouterr().out
    (tmp_path / "all.csv").write_text("id,text\na,one\nb,two\n")
    cmd[2] = str(tmp_path / "all.csv")
    cmd[-1] = str(tmp_path / "all")
    assert main(cmd) == 0
    capsys.readouterr()
    assert main(cmd) == 0
    assert "  nothing to do: earlier runs did the 2 rows, so none was sent" in \
        capsys.readouterr().out.splitlines()


@pytest.mark.anyio
@pytest.mark.parametrize("first", [False, True], ids=["real-first", "simulator-first"])
async def test_a_run_whose_endpoint_changes_kind_keeps_none_of_the_new_ones_answers(
        tmp_path: Path, first: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run took the first answer's kind (batchrunner simulate's, or not) for all of them: a
    server at the URL that answers as the other kind later had its answers recorded with the
    first's. The run stops at the first of them, keeping none, its row left to do, and says
    what to do: to wait for the endpoint meant, or, the rows done being the simulator's, to
    start afresh."""
    from aiohttp import web

    from batchrunner.client import SIMULATOR_HEADER
    from tests.servers import serve_on_loopback

    answered = 0

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal answered
        answered += 1
        body = {"id": f"c{answered}", "object": "chat.completion", "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
        said = first if answered <= 2 else not first  # the other kind from the third on
        return web.json_response(body, headers={SIMULATOR_HEADER: "1"} if said else {})

    monkeypatch.chdir(tmp_path)  # the stop names the output directory from here: out
    inp = make_csv(tmp_path / "in.csv", 5)
    runner, port = await serve_on_loopback(handler)
    try:
        s = await run_job(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, concurrency=1),
                          FAST)
    finally:
        await runner.cleanup()
    assert answered == 3 and s.exit_code == 4 and s.ok == 2 and s.pending == 3
    journal = Journal(tmp_path / "out").read().to_pylist()
    kept = [r for r in journal if r["status"] != "retrying"]
    assert len(kept) == 2 and all(r["content"] == "ok" for r in kept)
    # The real endpoint's answer not kept was billed: its row carries its cost, from its
    # usage (a ``retrying`` record), as a billed try's; the simulator's bills nothing.
    assert [r["earlier_cost_usd"] for r in journal if r["status"] == "retrying"] == (
        [pytest.approx((5 * 0.15 + 1 * 0.60) / 1e6)] if first else [])
    at = f"the endpoint at http://127.0.0.1:{port}/v1"
    assert s.stopped == (
        f"{at} no longer answers as batchrunner simulate, which answered the rows done in "
        "out: none of its answers now was kept (their rows are left to do; what it billed for "
        "them counts in the job's cost) — to run the job there, start afresh with another "
        "--output directory, or pass --force to mix its answers with the simulator's"
        if first else
        f"{at} answers as batchrunner simulate now, where a real endpoint answered this run "
        "before: none of its answers now was kept (their rows are left to do) — rerun the job "
        "once the endpoint it is meant for serves that URL")
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["simulator"] is first
    assert meta["last_run"]["stop_kind"] == "fix_first"
