"""Cost control: estimate before (nothing sent), budget during (stop, resume), prices."""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from batchrunner.cli import main
from batchrunner.config import load_job
from batchrunner.pricing import PriceBook
from batchrunner.report import format_usd
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, format_summary, run_job
from batchrunner.simulator import Simulator, SimulatorConfig, SimulatorThread
from batchrunner.status import format_status, round_up
from tests.servers import run_job_file, serve_on_loopback

FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=3), progress="none",
                  handle_signals=False)


KEY = "sk-test"
pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def make_input(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "in.csv"
    texts = [f"describe item {i} " + "detail " * (i % 7) for i in range(n)]
    texts[3] = ""  # an empty prompt: reported, never sent
    pd.DataFrame({"id": range(n), "text": texts}).to_csv(path, index=False)
    return path


def test_estimate_sends_nothing_and_reports_per_model(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    inp = make_input(tmp_path, 40)
    with SimulatorThread(SimulatorConfig()) as sim:
        args = ["--input", str(inp), "--id-column", "id", "--prompt", "{text}",
                "--model", "gpt-4o-mini", "--max-tokens", "100", "--rpm", "600",
                "--base-url", sim.base_url, "--output", str(tmp_path / "out")]
        assert main(["estimate", *args]) == 0
        out = capsys.readouterr().out
        assert main(["run", "--dry-run", *args]) == 0
        assert capsys.readouterr().out == out
        assert sim.stats()["requests"] == 0
    assert "39 " in out and "gpt-4o-mini" in out
    assert "3,900" in out  # 39 sendable rows × max_tokens 100
    assert "1 row will not be sent" in out and "row 3" in out
    assert "about 4 s (600 requests/min)" in out
    assert not (tmp_path / "out").exists()


def test_estimate_names_where_its_prices_come_from(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A job that prices its models itself, at its gateway's prices (the price library knows
    none for a gateway's own model names), was told its estimate came from the library."""
    costly_job(tmp_path, make_input(tmp_path, 5), max_tokens=10, concurrency=1)
    assert main(["estimate", str(tmp_path / "job.toml")]) == 0
    out = capsys.readouterr().out
    assert "estimated cost: $0.1010 (job [prices])" in out and "genai-prices" not in out
    assert main(["estimate", str(tmp_path / "job.toml"), "--model", "gpt-4o-mini"]) == 0
    assert "(genai-prices " in capsys.readouterr().out


def test_estimate_of_a_rerun_counts_the_rows_sent_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na,kettle\nb,tent\nc,lamp\n")
    with SimulatorThread(SimulatorConfig()) as sim:
        args = ["--input", str(inp), "--id-column", "id", "--prompt", "{text}",
                "--model", "gpt-4o-mini", "--max-tokens", "10", "--base-url", sim.base_url,
                "--output", str(tmp_path / "out")]
        assert main(["run", *args, "--progress", "none"]) == 0
        capsys.readouterr()
        assert main(["estimate", *args]) == 0
        assert "rows: 3 in the input, 3 already done, 0 to send\n" in capsys.readouterr().out
        assert main(["estimate", *args, "--rerun-where", "key != 'b'"]) == 0
        assert ("rows: 3 in the input, 1 already done and kept, 2 to send (2 of them done "
                "before, sent again)") in capsys.readouterr().out
        assert main(["estimate", *args, "--retry-failed"]) == 0
        said = capsys.readouterr()
        assert ("--retry-failed: no row of the input has failed: it has nothing to resend"
                in said.out + said.err)


def test_estimate_after_a_change_of_request_settings_warns_and_estimates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run after the request settings changed is refused (exit 2) unless given --force:
    estimate, which sends nothing, was refused alike, so the engineer could not learn what
    the forced run would cost. It warns, naming the change, and prints the estimate."""
    inp = make_input(tmp_path, 6)
    with SimulatorThread(SimulatorConfig()) as sim:
        args = ["--input", str(inp), "--id-column", "id", "--prompt", "{text}",
                "--model", "gpt-4o-mini", "--base-url", sim.base_url,
                "--output", str(tmp_path / "out")]
        assert main(["run", *args, "--max-tokens", "10", "--limit", "2",
                     "--progress", "none"]) == 0
        capsys.readouterr()
        assert main(["estimate", *args, "--max-tokens", "20"]) == 0
        said = capsys.readouterr()
        assert main(["run", *args, "--max-tokens", "20", "--progress", "none"]) == 2
        refusal = capsys.readouterr().err.strip()
        assert sim.stats()["requests"] == 2
    assert "rows: 6 in the input, 2 already done, 3 to send" in said.out, said
    assert "estimated cost: $" in said.out, said
    warning = next(x for x in said.out.splitlines() if "refused" in x)
    assert warning == ("  warning: the run is refused unless given --force: "
                       + refusal.removeprefix("batchrunner: error: ")), (warning, refusal)
    assert "(max_tokens: 10 → 20)" in warning, warning


def test_estimate_warns_when_the_budget_will_stop_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = make_input(tmp_path, 40)
    args = ["--input", str(inp), "--prompt", "{text}", "--model", "gpt-4o-mini",
            "--max-tokens", "100"]
    assert main(["estimate", *args, "--max-cost", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "  warning: more than max_cost_usd $0.001: the run will stop at the budget, after " \
           "about " in out and " of the 39 rows" in out
    assert main(["estimate", *args, "--max-cost", "100"]) == 0
    assert "max_cost_usd" not in capsys.readouterr().out
    # Without max_tokens, a reply's length has no bound: the budget is not one either.
    assert main(["estimate", *args[:-2], "--max-cost", "100"]) == 0
    said = capsys.readouterr()
    assert ("max_cost_usd is set but max_tokens is not: with no bound on a reply's length"
            in said.out + said.err)


def test_estimate_needs_no_output_directory(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    inp = make_input(tmp_path, 40)
    args = ["--input", str(inp), "--prompt", "{text}", "--model", "gpt-4o-mini",
            "--max-tokens", "100"]
    assert main(["estimate", *args]) == 0
    out = capsys.readouterr().out
    assert "0 already done, 39 to send" in out  # position 3 is empty: the 4th row
    assert "row 4: the prompt is empty" in out  # counted from 1, as input errors count
    assert main(["run", "--dry-run", *args]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # nothing made
    assert main(["run", *args]) == 2  # a run does need one
    assert "no output directory" in capsys.readouterr().err


def test_estimate_counts_a_max_tokens_column_of_the_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """max_tokens from a column (from_columns): each row's own bound, the job's for a row
    without, and the estimate says so."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text,budget\na,kettle,100\nb,tent,\nc,lamp,50\n")
    args = ["--input", str(inp), "--prompt", "{text}", "--model", "gpt-4o-mini",
            "--from-column", "max_tokens=budget"]
    assert main(["estimate", *args, "--max-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert "completion tokens from: each row's max_tokens, an upper bound" in out
    assert "   170 " in out  # 100 + 20 + 50


def test_estimate_names_a_reasoning_models_max_completion_tokens_as_its_bound(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An o-series job bounds its replies with [request.extra] max_completion_tokens (its
    model takes no max_tokens): the estimate used it but said "each row's max_tokens"."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na,kettle\nb,tent\n")
    job = tmp_path / "j.toml"
    job.write_text('[input]\npath = "in.csv"\n[request]\nmodel = "o4-mini"\n'
                   'prompt = "{text}"\n[request.extra]\nmax_completion_tokens = 400\n')
    assert main(["estimate", str(job)]) == 0
    out = capsys.readouterr().out
    assert "completion tokens from: max_completion_tokens (400), an upper bound" in out, out
    assert "   800 " in out, out


def test_estimate_says_where_a_batch_files_completion_tokens_come_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Batch rows carry their own max_tokens: the estimate says it used them (and a guess for
    rows without), not that it guessed them all."""
    inp = tmp_path / "b.jsonl"
    inp.write_text("".join(json.dumps({
        "custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                 **({"max_tokens": 50} if i else {})}}) + "\n" for i in range(4)))
    assert main(["estimate", "--input", str(inp)]) == 0
    out = capsys.readouterr().out
    assert ("completion tokens from: each row's max_tokens where it sets one (an upper bound);"
            " a guess of 256 tokens for the 1 row without") in out
    assert "406" in out  # 3 × 50 + 256
    inp.write_text("".join(line.replace('"messages"', '"max_tokens": 50, "messages"', 1)
                           if '"max_tokens"' not in line else line
                           for line in inp.read_text().splitlines(keepends=True)))
    assert main(["estimate", "--input", str(inp)]) == 0
    assert "completion tokens from: each row's max_tokens, an upper bound" in (
        capsys.readouterr().out)
    inp.write_text("".join(json.dumps({
        "custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}})
        + "\n" for i in range(4)))
    assert main(["estimate", "--input", str(inp)]) == 0
    assert ("completion tokens from: a guess of 256 tokens (set max_tokens in the bodies for a "
            "bound)") in capsys.readouterr().out


@pytest.mark.anyio
async def test_estimate_is_close_to_the_real_cost(tmp_path: Path) -> None:
    from batchrunner.estimate import estimate
    from batchrunner.runner import prepare

    inp = make_input(tmp_path, 60)
    async with Simulator(SimulatorConfig(reply_tokens=50)) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model": "gpt-4o-mini", "max_tokens": 50,
                              "base_url": sim.base_url, "output": str(tmp_path / "out")})
        before = estimate(prepare(job, FAST))
        s = await run_job(job, FAST)
    assert before.cost_usd is not None and s.cost_usd is not None
    assert before.cost_usd == pytest.approx(s.cost_usd, rel=0.15)


def costly_job(tmp_path: Path, inp: Path, *, max_tokens: int | None, concurrency: int) -> Path:
    """``job.toml`` over ``inp`` for "sim-model", priced at 1,000 USD per 1M tokens."""
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "sim-model"\n'
        f'prompt = "{{text}}"\n'
        + ("" if max_tokens is None else f"max_tokens = {max_tokens}\n") + '[limits]\n'
        f'concurrency = {concurrency}\n[output]\ndir = "out"\n'
        '[prices."sim-model"]\ninput = 1000.0\noutput = 1000.0\n')
    return job


@pytest.mark.anyio
async def test_budget_stops_before_passing_and_rerun_with_more_continues(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    costly_job(tmp_path, make_input(tmp_path, 200), max_tokens=20, concurrency=4)
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim:
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url, "max_cost_usd": 1.0})
        s = await run_job(job, FAST)
        assert s.exit_code == 4 and s.stopped and "max_cost_usd" in s.stopped
        assert s.stopped.startswith("budget reached: the next request could pass max_cost_usd "
                                    "$1.00 (")
        assert "spent" in s.stopped and "when it stopped" in s.stopped
        assert s.cost_usd is not None and 0 < s.cost_usd <= 1.0
        sent = sim.stats()["requests"]
        assert 0 < sent < 199
        # The same command stops again at once (the job's spend counts against the budget):
        # the one status names raises the command's own --max-cost (it overrides the job
        # file's max_cost_usd, which the stop named too) to what the rows left cost at the
        # job's cost a row so far, plus what the requests in flight were held at when it
        # stopped, rounded up. It named the old one.
        assert s.stopped.endswith("; raise --max-cost and rerun to continue"), s.stopped
        spent, ok = s.cost_usd, s.ok
        finish = next(x for x in format_status(tmp_path / "out").splitlines()
                      if x.startswith("  to finish, "))
        held = json.loads((tmp_path / "out" / "job.json").read_text())["last_run"]["held_usd"]
        assert 0 < held <= 5 * 60 * 1000 / 1e6  # 4 in flight and the one not sent, at most
        left = (199 - ok) * (spent / ok)
        raised = round_up(spent + left + held)
        assert finish.startswith(
            f"  to finish, {199 - ok} rows to do: this command raises the command's --max-cost "
            f"1 to {raised:g}, which the job's cost so far counts against: the "
            f"{format_usd(spent)} spent plus {format_usd(left)} for the rows left at the job's "
            f"{format_usd(spent / ok)} a row so far, plus {format_usd(held)} for the requests "
            "in flight (held at their most), rounded up "), finish
        command = shlex.split(finish.rpartition("too): ")[2])
        assert command[:3] == ["batchrunner", "run", str(tmp_path / "job.toml")], command
        assert command[-2:] == ["--max-cost", f"{raised:g}"] and command.count("--max-cost") == 1
        # So does report's summary, where it said only to rerun the job.
        capsys.readouterr()
        assert main(["report", str(tmp_path / "out")]) == 4
        assert capsys.readouterr().out.splitlines()[-1] == (
            "  raise the command's --max-cost 1, which the job's cost so far counts against and "
            f"the last run stopped at (batchrunner status {tmp_path / 'out'} names the command, "
            "with it raised to what the rows left cost at the job's cost a row so far), then "
            "rerun the job to send the rows not done yet")
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url, "max_cost_usd": raised})
        s = await run_job(job, FAST)
        assert s.exit_code == 3  # the empty-prompt row is the one failure
        assert s.ok == 199 and sim.stats()["requests"] == 199
        assert s.cost_usd is not None and s.cost_usd <= raised


def test_the_command_status_names_after_a_budget_stop_runs_as_printed_and_finishes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After a budget stop, status named the same command, which stopped again at once: the
    job's spend so far counts against the budget. The command it names now raises the budget
    (here the job file's max_cost_usd, with --max-cost), and run as printed finishes the job.
    Where no row has a cost yet (the first request's estimate was over the budget), it names
    the estimate's command, which runs as printed too."""
    inp = make_input(tmp_path, 200)
    # 16 requests in flight, each held at max_tokens 100 where replies are 10 tokens: a
    # budget with a tenth more than the job's cost stopped again, 16 requests short of room.
    job = costly_job(tmp_path, inp, max_tokens=100, concurrency=16)
    with SimulatorThread(SimulatorConfig(reply_tokens=10)) as sim:
        job.write_text(job.read_text().replace(
            "[limits]\n", f'[endpoint]\nbase_url = "{sim.base_url}"\n[limits]\n'
            "max_cost_usd = 3.0\n"))
        assert main(["run", str(job), "--progress", "none"]) == 4
        finish = next(x for x in format_status(tmp_path / "out").splitlines()
                      if x.startswith("  to finish, "))
        assert "this command raises max_cost_usd (--max-cost) to " in finish, finish
        command = shlex.split(finish.rpartition("too): ")[2])
        assert command[:3] == ["batchrunner", "run", str(job)] and "--max-cost" in command
        capsys.readouterr()
        assert main([*command[1:], "--progress", "none"]) == 3, capsys.readouterr()
        assert sim.stats()["requests"] == 199  # every row sent once; the empty one never
        assert "199 ok, 1 failed" in capsys.readouterr().out

        job.write_text(job.read_text().replace("max_cost_usd = 3.0", "max_cost_usd = 0.001"))
        assert main(["run", str(job), "--progress", "none", "--output", "out2"]) == 4
        finish = next(x for x in format_status(tmp_path / "out2").splitlines()
                      if x.startswith("  to finish, "))
        assert finish.startswith(
            "  to finish, 200 rows to do: raise max_cost_usd (--max-cost), which the job's cost so "
            "far counts against, above what the rows left cost (no row has a cost yet to tell "
            "it): batchrunner estimate "), finish
        command = shlex.split(finish.partition("tell it): ")[2].removesuffix(" tells it"))
        capsys.readouterr()
        assert main(command[1:]) == 0
        assert "estimated cost: $" in capsys.readouterr().out
        assert sim.stats()["requests"] == 199


@pytest.mark.anyio
async def test_budget_with_an_unknown_price_stops_at_once(tmp_path: Path) -> None:
    """The rows name their model (a job of one model is refused before it starts: see
    test_a_budget_with_a_model_of_no_price_is_refused_before_any_request)."""
    inp = make_input(tmp_path, 10)
    pd.read_csv(inp).assign(model="my-private-model").to_csv(inp, index=False)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model_column": "model", "base_url": sim.base_url,
                              "output": str(tmp_path / "out"), "max_cost_usd": 5.0})
        s = await run_job(job, FAST)
        assert s.exit_code == 4 and s.stopped and "my-private-model" in s.stopped
        assert sim.stats()["requests"] == 0
    # status said to raise max_cost_usd, then rerun: the same stop again, whatever the budget.
    finish = next(x for x in format_status(tmp_path / "out").splitlines()
                  if x.startswith("  to finish, "))
    assert finish.startswith("  to finish, 10 rows to do: fix what stopped it (above), then: "
                             "batchrunner run "), finish
    assert "max_cost_usd" not in finish, finish


@pytest.mark.anyio
async def test_unknown_model_cost_is_unknown_never_zero(tmp_path: Path) -> None:
    inp = make_input(tmp_path, 10)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model": "my-private-model", "base_url": sim.base_url,
                              "output": str(tmp_path / "out")})
        s = await run_job(job, FAST)
    assert s.cost_usd is None
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["cost_usd"].isna().all()
    assert "my-private-model" in (tmp_path / "out" / "cost_report.md").read_text()


@pytest.mark.anyio
@pytest.mark.parametrize(("asked", "answered", "priced", "cost", "source"), [
    # OpenAI names the dated snapshot: the job's price for the model asked for holds, and the
    # report shows the rows under the model asked for.
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o-mini", 3.0, "job [prices]"),
    # A gateway names the model asked for its own way: the same.
    ("gpt-4o", "openai/gpt-4o", "gpt-4o", 3.0, "job [prices]"),
    # A gateway routed an alias to a model the library prices: priced, and reported, as it.
    ("my-alias", "gpt-4o", "gpt-4o", 12.5, "genai-prices"),
])
async def test_a_reply_is_priced_as_the_model_that_answered_as_the_report_shows(
        tmp_path: Path, asked: str, answered: str, priced: str, cost: float, source: str
) -> None:
    """The row's cost and the report's price for the model it is priced as agree."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": answered,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000,
                      "total_tokens": 2_000_000}})

    inp = make_input(tmp_path, 5)
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "{asked}"\n'
        'prompt = "{text}"\n[output]\ndir = "out"\n'
        f'[prices."{asked}"]\ninput = 1.0\noutput = 2.0\n')
    s = await run_job_file(handler, tmp_path / "job.toml", FAST, max_cost_usd=100.0)
    assert s.exit_code == 3 and s.ok == 4  # row 3 is the empty prompt
    assert s.cost_usd == pytest.approx(4 * cost)
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    ok = df[df["status"] == "ok"]
    assert ok["model"].tolist() == [answered] * 4
    assert ok["priced_as"].tolist() == [priced] * 4
    assert ok["cost_usd"].tolist() == [pytest.approx(cost)] * 4
    by_model = json.loads((tmp_path / "out" / "cost_report.json").read_text())["by_model"]
    assert by_model[priced]["price_source"].startswith(source)
    price = by_model[priced]["price"]
    assert price["input"] + price["output"] == pytest.approx(cost)  # 1M tokens of each


@pytest.mark.anyio
async def test_deepseek_cache_hits_are_priced_as_cached_tokens(tmp_path: Path) -> None:
    """DeepSeek's API gives its cache hits as usage.prompt_cache_hit_tokens (beside
    prompt_cache_miss_tokens), not OpenAI's prompt_tokens_details.cached_tokens: they are
    cached tokens all the same, billed at the cached price, and the report counts them so."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "deepseek-chat",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
                      "prompt_cache_hit_tokens": 800, "prompt_cache_miss_tokens": 200}})

    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na,kettle\nb,tent\n")
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "deepseek-chat"\n'
        'prompt = "{text}"\n[output]\ndir = "out"\n'
        '[prices."deepseek-chat"]\ninput = 0.27\noutput = 1.10\ncached_input = 0.07\n')
    s = await run_job_file(handler, tmp_path / "job.toml", FAST)
    # A row: 200 × 0.27 + 800 × 0.07 + 100 × 1.10 = 220 USD per 1M rows, not 380.
    assert s.exit_code == 0 and s.cost_usd == pytest.approx(2 * 220e-6)
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["cached_tokens"].tolist() == [800, 800]
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["tokens"]["cached"] == 1600 and report["cost_usd"] == pytest.approx(440e-6)


@pytest.mark.anyio
async def test_the_budget_holds_when_replies_carry_no_usage(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    """A gateway that leaves usage out still bills: each such reply counts against
    max_cost_usd at its estimate, so the job stops near the cap instead of running through."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": range(30), "text": [f"item {i} [[sim:no_usage]]" for i in range(30)]}
                 ).to_csv(inp, index=False)
    costly_job(tmp_path, inp, max_tokens=100, concurrency=1)
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim:
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url, "max_cost_usd": 1.0})
        s = await run_job(job, FAST)
        sent = sim.stats()["requests"]
    # Each reply is estimated at ~0.1 USD (100 completion tokens at 1000 USD per 1M, plus the
    # prompt): about ten fit under 1 USD.
    assert s.exit_code == 4 and s.stopped and "max_cost_usd" in s.stopped
    assert 5 <= sent <= 10
    assert s.cost_usd is None  # unknown, never 0
    err = capsys.readouterr().err
    assert err.count("the reply has no usage") == 1


@pytest.mark.anyio
async def test_replies_with_no_usage_count_in_the_next_runs_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reply with no usage counted at its estimate in the run that got it only: the same
    job under a $1 budget, run in parts of 4 rows, sent all 20 rows of five runs (some $2.20
    estimated) where one run stops near 9. Each such reply's estimate is now journaled with
    its row, as a cut try's is: the next runs' budgets count it, and the summary, both reports
    and status show it apart."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": range(20), "text": [f"item {i} [[sim:no_usage]]" for i in range(20)]}
                 ).to_csv(inp, index=False)
    costly_job(tmp_path, inp, max_tokens=100, concurrency=1)
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim:
        first = await run_job(load_job(tmp_path / "job.toml", {"base_url": sim.base_url}),
                              RunOptions(**{**FAST.__dict__, "limit": 4}))
        assert first.ok == 4 and first.unreported_rows == 4
        guessed = first.unreported_usd
        assert guessed == pytest.approx(4 * 0.11, rel=0.1)  # ~10 prompt + 100 tokens each
        assert f"estimated at {format_usd(guessed)}" in format_summary(first)
        report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
        assert report["cost_unreported"] == {"rows": 4, "estimated_usd": guessed}
        assert main(["status", str(tmp_path / "out")]) == 0
        assert f"estimated at {format_usd(guessed)}" in capsys.readouterr().out
        runs = []
        for _ in range(5):  # under $1 in parts: the first run's $0.44 counts from the start
            s = await run_job(load_job(tmp_path / "job.toml", {"base_url": sim.base_url,
                                                               "max_cost_usd": 1.0}),
                              RunOptions(**{**FAST.__dict__, "limit": 4}))
            runs.append(s.exit_code)
            if s.exit_code == 4:
                break
        assert runs[-1] == 4 and sim.stats()["requests"] <= 9


def test_the_budget_holds_a_routed_model_at_the_price_of_the_one_that_answered(
        tmp_path: Path) -> None:
    from batchrunner.limiter import Limiter
    from batchrunner.progress import NullProgress
    from batchrunner.runner import _Run, _Work, prepare

    inp = make_input(tmp_path, 5)
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "my-alias"\n'
        'prompt = "{text}"\n[output]\ndir = "out"\n'
        '[prices."my-alias"]\ninput = 0.1\noutput = 0.1\n')
    job = load_job(tmp_path / "job.toml", {"base_url": "http://127.0.0.1:9/v1",
                                           "max_cost_usd": 10.0})
    run = _Run(prepare(job, FAST), FAST, None, Limiter(None, None),  # no client: not sent
               NullProgress(), None, max_concurrency=1, fixed_concurrency=True)
    item = _Work(key="0", body={"model": "my-alias"}, model="my-alias", prompt_estimate=1_000_000,
                 completion_max=1_000_000)
    assert run._estimated_cost(item) == pytest.approx(0.2)  # the job's price for the alias
    run.routed["my-alias"] = "gpt-4o"  # as _success records a reply priced as gpt-4o
    assert run._estimated_cost(item) == pytest.approx(12.5)  # the library's gpt-4o price


@pytest.mark.anyio
async def test_the_budget_counts_the_input_rows_not_an_earlier_inputs(tmp_path: Path) -> None:
    """A nightly job keyed by id, its output directory kept: last night's rows, not in
    tonight's input, are left out of the budget as the reports leave them out (they used to
    count, so a nightly budget was reached before a request was sent)."""
    inp = tmp_path / "in.csv"

    def job(night: str, budget: float | None) -> Any:
        pd.DataFrame({"id": [f"{night}{i}" for i in range(20)],
                      "text": [f"describe item {i}" for i in range(20)]}).to_csv(inp, index=False)
        return load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                               "model": "gpt-4o-mini", "max_tokens": 50, "simulator": True,
                               "output": str(tmp_path / "out"), "max_cost_usd": budget})

    first = await run_job(job("a", None), FAST)
    assert first.exit_code == 0 and first.cost_usd
    second = await run_job(job("b", first.cost_usd * 1.5), FAST)
    assert second.exit_code == 0 and not second.stopped and second.ok == 20
    assert second.cost_usd == pytest.approx(first.cost_usd, rel=0.5)  # tonight's rows only


@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "billed"), [
    ("reset", True),  # the connection dropped once the request was sent
    ("truncated", True),  # a body cut mid-way: half a completion
    ("slow", True),  # timed out at the client: the server went on with it
    ("500", False),  # an error answer: not billed
    ("429", False),
])
async def test_the_budget_counts_a_try_that_may_have_been_billed_without_usage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str, billed: bool) -> None:
    """A try sent and never answered whole (a timeout, a connection dropped after the request
    went out, a body cut short) reports no usage but may well have been billed: a provider goes
    on with a request whose client has gone. Such tries counted for nothing against
    max_cost_usd, so a job whose every row failed so once spent, unseen, up to twice what the
    budget allowed. Each now counts at its estimate (the prompt and max_tokens), warned once; a
    try the server answered with an error counts nothing. The results show reported usage
    only."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": range(20), "text": [f"item {i} [[sim:{fault}*1]]" for i in range(20)]}
                 ).to_csv(inp, index=False)
    costly_job(tmp_path, inp, max_tokens=100, concurrency=1)
    async with Simulator(SimulatorConfig(reply_tokens=20, slow_ms=2000)) as sim:
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url, "max_cost_usd": 1.0,
                                               "timeout_s": 0.5})
        s = await run_job(job, FAST)
        sent = sim.stats()["requests"]
    err = capsys.readouterr().err
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["earlier_cost_usd"].isna().all()  # no usage reported for the failed tries
    if billed:
        # A failed try is estimated at ~0.11 USD (100 completion tokens at 1000 USD per 1M,
        # plus the prompt), a whole one costs ~0.03: some seven rows fit under 1 USD, not 20.
        assert s.exit_code == 4 and s.stopped and s.stopped.startswith("budget reached")
        assert s.ok < 10 and sent < 20
        assert err.count("with no usage reported") == 1
    else:
        assert s.exit_code == 0 and s.ok == 20 and sent == 40
        assert "with no usage reported" not in err


@pytest.mark.anyio
@pytest.mark.parametrize("max_tokens", [100, None])
async def test_the_warning_of_a_try_with_no_usage_says_what_its_estimate_is_made_of(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], max_tokens: int | None) -> None:
    """The warning said such tries count at "the prompt and max_tokens" in a job that sets no
    max_tokens, where the estimate takes the answers' mean length so far."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": range(4), "text": [f"item {i} [[sim:reset*1]]" for i in range(4)]}
                 ).to_csv(inp, index=False)
    costly_job(tmp_path, inp, max_tokens=max_tokens, concurrency=1)
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim:
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url, "max_cost_usd": 100.0})
        s = await run_job(job, FAST)
    err = capsys.readouterr().err
    assert s.exit_code == 0 and s.ok == 4, err
    said = ("(the prompt and max_tokens)" if max_tokens else
            "(the prompt, and the answers' mean length so far, as it sets no max_tokens)")
    assert "with no usage reported" in err and said in err, err


@pytest.mark.anyio
async def test_rows_billed_then_stopped_before_their_retry_count_for_fail_fast(
        tmp_path: Path) -> None:
    """A budget stopped the job with most of its rows billed once and waiting to be sent
    again (their only record a `retrying` one); the endpoint then refused every request. The
    rerun's first 20 rows all failed alike, but the rule that stops such a job left those rows
    out as if --retry-failed had resent them: all 40 rows were sent and failed (exit 3) rather
    than the job stopping after 20, naming what to fix. Only rows with an outcome (resent by
    --retry-failed or --rerun-where) are left out now."""
    refuse = False

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        if refuse:
            return web.json_response({"error": {
                "message": "Unsupported parameter: 'max_tokens'", "type": "invalid_request_error",
                "code": "unsupported_parameter"}}, status=400)
        return web.json_response({  # billed, no usable answer: sent again
            "id": "chatcmpl-1", "object": "chat.completion", "model": "sim-model",
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})

    costly_job(tmp_path, make_input(tmp_path, 41), max_tokens=20, concurrency=1)
    # Backoffs longer than any run: a billed row waits for its retry until the budget stops.
    slow = RunOptions(retry=RetryPolicy(base_s=1e6, cap_s=1e6, max_attempts=3),
                      progress="none", handle_signals=False)
    runner, port = await serve_on_loopback(handler)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        job = load_job(tmp_path / "job.toml", {"base_url": base, "max_cost_usd": 1.0})
        first = await run_job(job, slow)
        assert first.exit_code == 4 and first.ok == first.failed - 1 == 0  # the empty row
        assert first.pending == 40 and 20 <= first.sent < 40
        refuse = True
        s = await run_job(load_job(tmp_path / "job.toml", {"base_url": base}), FAST)
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and s.sent == 20 and s.failed == 21 and s.pending == 20
    assert s.stopped and s.stopped.startswith(
        "the first 20 rows to finish all failed with http_400 and none succeeded")


@pytest.mark.anyio
async def test_the_summary_names_the_models_without_a_cost_and_what_to_add(
        tmp_path: Path) -> None:
    """The run's summary counted "N rows without a cost (see report)": which model, and what
    to set, only the report said. It now names them in the line, as the estimate does."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": range(6), "text": ["kettle", "tent", "lamp [[sim:no_usage]]"] * 2,
                  "model": ["my-private-model", "other-private", "gpt-4o-mini"] * 2}
                 ).to_csv(inp, index=False)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model_column": "model", "base_url": sim.base_url,
                              "output": str(tmp_path / "out")})
        s = await run_job(job, FAST)
    assert s.exit_code == 0 and s.cost_unknown == 6
    cost = next(line for line in format_summary(s).splitlines() if line.startswith("  cost: "))
    assert ("6 rows without a cost (no price for my-private-model and other-private: add "
            '[prices."my-private-model"] and [prices."other-private"], each with input and '
            "output (USD per 1M tokens), to a job file; no usage reported by gpt-4o-mini)"
            ) in cost, cost


@pytest.mark.anyio
async def test_the_summary_states_no_cost_it_does_not_know(tmp_path: Path) -> None:
    """No reply reported usage: the summary said "cost: $0.0000, and 2 rows without a cost", a
    cost it did not know. It now says the cost is unknown, and why."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na,kettle [[sim:no_usage]]\nb,tent [[sim:no_usage]]\n")
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model": "gpt-4o-mini", "base_url": sim.base_url,
                              "output": str(tmp_path / "out")})
        s = await run_job(job, FAST)
    assert s.exit_code == 0 and s.cost_usd is None and s.cost_unknown == 2
    cost = next(line for line in format_summary(s).splitlines() if line.startswith("  cost: "))
    assert cost.startswith("  cost: unknown: 2 rows without a cost (no usage reported by "
                           "gpt-4o-mini), plus tries of 2 rows that may have been billed with "
                           f"no usage reported, estimated at {format_usd(s.unreported_usd)}; "
                           "wall "), cost
    assert s.unreported_usd > 0
    assert "$" not in cost.partition("estimated at")[0]  # no cost it does not know


@pytest.mark.parametrize(("model", "said"), [
    ("gpt-4o-mni", "estimated cost: unknown for gpt-4o-mni: 'gpt-4o-mni' may be a typo of "
                   "'gpt-4o-mini': fix the model name, or add [prices.\"gpt-4o-mni\"] with input "
                   "and output (USD per 1M tokens), to a job file"),
    ("my-finetune-local", "estimated cost: unknown for my-finetune-local: add "
                          '[prices."my-finetune-local"] with input and output'),
])
def test_an_estimate_for_a_typo_of_a_priced_model_names_the_one_meant(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, said: str) -> None:
    """The estimate of a job whose model is a typo (no budget, so not refused) said its cost
    is unknown and to add a price for the typo: it names the model meant, as the budget's
    refusal does."""
    inp = make_input(tmp_path, 5)
    code = main(["estimate", "--input", str(inp), "--id-column", "id", "--prompt", "{text}",
                 "--model", model, "--max-tokens", "10", "--simulator",
                 "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert said in out, out


@pytest.mark.parametrize(("model", "said"), [
    # A typo of a model the price library knows: named, and nothing sent.
    ("gpt-4o-mni", "no price is known for model 'gpt-4o-mni' (did you mean 'gpt-4o-mini'?)"),
    # A model of the user's own server: told how to price it at 0.
    ("my-finetune-local", "a model on a server of your own, which bills no tokens, takes "
                          "input = 0 and output = 0"),
    # The seeds' gateway models the library does not know: no other version of a model named
    # as the one meant (it said "did you mean 'deepseek-v3p2'?", "'qwen3.8-omni-flash'?").
    ("deepseek-v3", "no price is known for model 'deepseek-v3', so the budget cannot be kept: "
                    'add [prices."deepseek-v3"] with input and output (USD per 1M tokens)'),
    ("qwen3-omni-flash", "no price is known for model 'qwen3-omni-flash', so the budget cannot "
                         'be kept: add [prices."qwen3-omni-flash"] with input and output'),
])
def test_a_budget_with_a_model_of_no_price_is_refused_before_any_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, said: str) -> None:
    """A budget whose model has no price cannot be kept: the job ran, stopped at its first
    request (exit 4, results and reports of nothing written), and a typo had no hint. It is
    bad input: one line naming the fix, exit 2, nothing sent."""
    inp = make_input(tmp_path, 5)
    with SimulatorThread(SimulatorConfig()) as sim:
        code = main(["run", "--input", str(inp), "--id-column", "id", "--prompt", "{text}",
                     "--model", model, "--max-tokens", "10", "--max-cost", "1",
                     "--base-url", sim.base_url, "--output", str(tmp_path / "out"),
                     "--progress", "none"])
        assert sim.stats()["requests"] == 0
    err = capsys.readouterr().err
    assert code == 2, err
    assert said in err and f'[prices."{model}"]' in err and "max_cost_usd" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("old_journal", [False, True])
async def test_a_row_answered_after_an_error_status_is_priced_once_its_price_is_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], old_journal: bool) -> None:
    """Rows answered while their model had no price, then rerun once the job prices it: a 503
    or a 429 before the answer is no billed try (a status reply), so the row's cost is its
    answer's, as a row answered at once; only one whose earlier try may have been billed with
    no usage said (a connection reset once it was sent) keeps no cost. The 503-then-ok row
    was counted as tried twice and left with no cost. A journal written before the tries
    billed were recorded reads, and prices the rows answered in one try only, as then."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na,alpha [[sim:503*1]]\nb,beta\nc,gamma [[sim:429*1]]\n"
                   "d,delta [[sim:reset*1]]\ne,epsilon [[sim:500*1]]\n")
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "my-model"\n'
        'prompt = "{text}"\nmax_tokens = 20\n[output]\ndir = "out"\n')
    async with Simulator(SimulatorConfig()) as sim:
        first = await run_job(load_job(job, {"base_url": sim.base_url}), FAST)
        assert first.ok == 5 and first.cost_usd is None
        if old_journal:
            from batchrunner.journal import Journal

            (seg,) = Journal(tmp_path / "out").segments()
            pq.write_table(pq.read_table(seg).drop_columns(["unknown_tries"]), seg)
        job.write_text(job.read_text() + '[prices."my-model"]\ninput = 1000.0\noutput = 1000.0\n')
        again = await run_job(load_job(job, {"base_url": sim.base_url}), FAST)
    assert again.sent == 0
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("id")
    assert df["attempts"].tolist() == [2, 1, 1, 2, 2]
    tokens = (df["prompt_tokens"] + df["completion_tokens"]) * 1000.0 / 1_000_000
    priced = df.index[df["cost_usd"].notna()].tolist()
    assert priced == (["b", "c"] if old_journal else ["a", "b", "c", "e"])
    assert df.loc[priced, "cost_usd"].tolist() == pytest.approx(tokens[priced].tolist())
    assert again.cost_unknown == 5 - len(priced)
    if old_journal:
        return
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_complete"] is False and report["rows"]["cost_unknown"] == 1
    assert report["cost_usd"] is None
    assert report["cost_known_usd"] == pytest.approx(df["cost_usd"].sum())
    (warning,) = [w for w in report["warnings"] if "my-model" in w]
    assert warning.startswith("model 'my-model': 1 row had a try before its last that may have "
                              "been billed at a cost not known")
    assert main(["status", str(tmp_path / "out")]) == 0
    assert "(plus 1 row without a cost" in capsys.readouterr().out


@pytest.mark.anyio
async def test_two_models_answered_by_one_name_are_each_charged_their_own_price(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job asks a gateway's route of gpt-4o (x/gpt-4o, at the job's price) and gpt-4o
    itself (at its own): both answer with the same dated name. Each row was charged the one
    price that name found (the route's row at gpt-4o's, $0.0035 for 1,000 + 100 tokens where
    its own is $0.0012), and the reports showed one model. Each row is now priced as the model
    it asked for, records that name (priced_as), and the results, both reports, status and
    the budget count each at its own price."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}})

    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "text": ["x", "y", "z"],
                  "llm": ["x/gpt-4o", "gpt-4o", "x/gpt-4o"]}).to_csv(inp, index=False)
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel_column = "llm"\n'
        'prompt = "{text}"\nmax_tokens = 100\n[output]\ndir = "out"\n'
        '[prices."x/gpt-4o"]\ninput = 1.0\noutput = 2.0\n'
        '[prices."gpt-4o"]\ninput = 2.5\noutput = 10.0\n')
    s = await run_job_file(handler, tmp_path / "job.toml", FAST)
    assert s.exit_code == 0
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("id")
    assert df["model"].tolist() == ["gpt-4o-2024-08-06"] * 3
    assert df["priced_as"].tolist() == ["x/gpt-4o", "gpt-4o", "x/gpt-4o"]
    assert df["cost_usd"].tolist() == pytest.approx([0.0012, 0.0035, 0.0012])
    assert s.cost_usd == pytest.approx(0.0059)
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_usd"] == pytest.approx(0.0059)
    by_model = report["by_model"]
    assert {m: (e["rows"], e["cost_usd"]) for m, e in by_model.items()} == {
        "x/gpt-4o": (2, pytest.approx(0.0024)), "gpt-4o": (1, pytest.approx(0.0035))}
    assert by_model["x/gpt-4o"]["price"]["input"] == 1.0
    assert by_model["gpt-4o"]["price_source"] == "job [prices]"
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert "x/gpt-4o" in md and "gpt-4o-2024-08-06" not in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "x/gpt-4o" in html
    assert main(["status", str(tmp_path / "out")]) == 0
    assert f"cost so far {format_usd(0.0059)}" in capsys.readouterr().out
    # The budget holds what was spent at each model's own price: $0.0059, not $0.0105.
    pd.DataFrame({"id": ["d"], "text": ["w"], "llm": ["gpt-4o"]}).to_csv(
        inp, mode="a", header=False, index=False)
    with (tmp_path / "job.toml").open("a") as f:
        f.write("[limits]\nmax_cost_usd = 0.0095\n")  # the new row's estimate is $0.001 or so
    again = await run_job_file(handler, tmp_path / "job.toml", FAST)
    assert again.exit_code == 0 and again.sent == 1


@pytest.mark.anyio
async def test_tries_with_no_usage_reported_count_in_the_next_runs_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each row's first answer is cut (no usage said: the server may have billed it). The
    budget counted such a try at its estimate in the run that sent it only, so a job run in
    parts (--limit, or rerun after a stop) spent past its budget: 40 such rows under $3 in five
    runs came to about $4.10. Each record now carries its row's estimate (a row failed so in
    two runs, then retried, keeps both tries'), the next run's budget starts from it, and the
    summary, both reports and status say the cost is at least what was reported, plus that."""
    inp = tmp_path / "in.csv"
    texts = [f"item {i} [[sim:truncated*1]]" for i in range(6)]
    texts[3] = "item 3 [[sim:truncated*2]]"
    pd.DataFrame({"id": range(6), "text": texts}).to_csv(inp, index=False)
    job = costly_job(tmp_path, inp, max_tokens=50, concurrency=1)
    once = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=1), progress="none",
                      handle_signals=False)
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim:
        first = await run_job(load_job(job, {"base_url": sim.base_url}),
                              RunOptions(**{**FAST.__dict__, "limit": 3}))
        assert first.ok == 3 and first.unreported_rows == 3
        guessed = first.unreported_usd
        assert guessed == pytest.approx(3 * 0.065, rel=0.2)  # ~15 prompt + 50 tokens each
        assert f"at least {format_usd(first.cost_usd)}" in format_summary(first)
        report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
        assert report["cost_unreported"] == {"rows": 3, "estimated_usd": guessed}
        assert "at least " in (tmp_path / "out" / "cost_report.md").read_text()
        assert "at least " in (tmp_path / "out" / "report.html").read_text()
        assert main(["status", str(tmp_path / "out")]) == 0
        assert f"estimated at {format_usd(guessed)}" in capsys.readouterr().out
        # A row cut on its one try fails, twice; sent again, its record keeps both estimates.
        failed = await run_job(load_job(job, {"base_url": sim.base_url}),
                               RunOptions(**{**once.__dict__, "limit": 1}))
        assert failed.failed == 1 and failed.unreported_rows == 4
        one = failed.unreported_usd - guessed
        failed = await run_job(load_job(job, {"base_url": sim.base_url}),
                               RunOptions(**{**once.__dict__, "retry_failed": True,
                                             "limit": 1}))
        assert failed.failed == 1 and failed.unreported_usd == pytest.approx(guessed + 2 * one)
        # The same command sends the next row, not row 3 again (it went on with the
        # --retry-failed that --limit held back).
        nxt = await run_job(load_job(job, {"base_url": sim.base_url}),
                            RunOptions(**{**FAST.__dict__, "retry_failed": True, "limit": 1}))
        assert (nxt.ok, nxt.failed, nxt.unreported_rows) == (4, 1, 5)
        row_4 = nxt.unreported_usd - failed.unreported_usd
        assert row_4 == pytest.approx(one)
        # What was spent is what was reported and the estimates: a budget that leaves less
        # than a row's worth past it sends nothing.
        spent = nxt.cost_usd + nxt.unreported_usd
        sent = sim.stats()["requests"]
        stopped = await run_job(load_job(job, {"base_url": sim.base_url,
                                               "max_cost_usd": spent + 0.05}), FAST)
        assert stopped.exit_code == 4 and sim.stats()["requests"] == sent
        assert f"({format_usd(spent)} spent when it stopped)" in str(stopped.stopped)
        # A --retry-failed run after it sends row 3 again, and the row left.
        again = await run_job(load_job(job, {"base_url": sim.base_url}),
                              RunOptions(**{**FAST.__dict__, "retry_failed": True}))
        assert (again.ok, again.failed, again.sent) == (6, 0, 3)
        assert again.unreported_rows == 6
        # Row 5's cut try at its own estimate: the prompt's, learnt from the replies so far.
        assert again.unreported_usd == pytest.approx(guessed + 2 * one + 2 * row_4, rel=0.01)
        assert again.unreported_usd > nxt.unreported_usd


@pytest.mark.anyio
async def test_rows_still_to_do_beside_earlier_costs_are_those_with_a_cost(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job stopped with two rows still to do: one whose first answer was billed with usage
    and no usable answer, one whose first answer was cut (no usage: an estimate only). The
    summary, status and both reports said the earlier attempts' cost was that "of 2 rows still
    to do", the cut row's $0 reported among them. They now count the rows whose earlier
    attempts have a reported cost; the cut row's estimate is shown apart, as before."""
    inp = tmp_path / "in.csv"
    texts = ["billed [[sim:no_choices*1]]", "cut [[sim:truncated*1]]",
             *(f"filler {i}" for i in range(20))]
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(inp, index=False)
    costly_job(tmp_path, inp, max_tokens=20, concurrency=1)
    # Backoffs longer than any run: the two rows wait for their retries until the budget stops.
    slow = RunOptions(retry=RetryPolicy(base_s=1e6, cap_s=1e6, max_attempts=3),
                      progress="none", handle_signals=False)
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim:
        s = await run_job(load_job(tmp_path / "job.toml",
                                   {"base_url": sim.base_url, "max_cost_usd": 0.3}), slow)
    assert s.exit_code == 4 and s.pending >= 2
    assert s.billed_to_do == 1 and s.billed_to_do_usd > 0 and s.unreported_rows == 1
    said = f"{format_usd(s.billed_to_do_usd)} for earlier attempts of 1 row still to do"
    assert said in format_summary(s)
    assert main(["status", str(tmp_path / "out")]) == 0
    assert said in capsys.readouterr().out
    out = tmp_path / "out"
    report = json.loads((out / "cost_report.json").read_text())
    assert report["rows"]["billed_to_do"] == 1
    assert "Earlier attempts, 1 row still to do (USD)" in (out / "cost_report.md").read_text()
    assert (f"{format_usd(s.billed_to_do_usd)} for earlier attempts of 1 row still to do"
            in (out / "report.html").read_text())


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_rows_are_priced_at_the_service_tier_that_answered(tmp_path: Path,
                                                                 stream: bool) -> None:
    """A job asking for OpenAI's flex tier (about half the standard price) was priced at the
    standard price, and so was a reply answered at the priority tier (about twice): each row is
    priced at the tier its reply says answered it (every chunk of a stream says it), else at
    the one its request asked for."""
    said = {"a": "flex", "b": "priority", "c": "default", "d": None}
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000,
             "total_tokens": 2_000_000}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        assert body["service_tier"] == "flex"
        tier = {"service_tier": t} if (t := said[body["messages"][-1]["content"]]) else {}
        head = {"id": "chatcmpl-1", "model": "gpt-5-2025-08-07", **tier}
        if not stream:
            return web.json_response({
                **head, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in ({"choices": [{"index": 0, "delta": {"content": "ok"}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": usage}):
            await resp.write(b"data: " + json.dumps({**head, **chunk}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{k},{k}\n" for k in said))
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "gpt-5"\n'
        f'prompt = "{{text}}"\nstream = {str(stream).lower()}\n[request.extra]\n'
        'service_tier = "flex"\n[output]\ndir = "out"\n')
    s = await run_job_file(handler, tmp_path / "job.toml", FAST)
    book = PriceBook()
    at = {t: book.cost("gpt-5-2025-08-07", prompt_tokens=1_000_000,
                       completion_tokens=1_000_000, service_tier=t)
          for t in ("flex", "priority", None)}
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert s.exit_code == 0 and df["status"].tolist() == ["ok"] * 4
    assert df["cost_usd"].tolist() == [pytest.approx(at["flex"]), pytest.approx(at["priority"]),
                                       pytest.approx(at[None]), pytest.approx(at["flex"])]
    assert s.cost_usd == pytest.approx(2 * at["flex"] + at["priority"] + at[None])
    assert df["service_tier"].tolist() == ["flex", "priority", "default", "flex"]
    by_model = json.loads((tmp_path / "out" / "cost_report.json").read_text())["by_model"]
    tiers = by_model["gpt-5-2025-08-07"]["service_tiers"]
    assert {t: tiers[t]["rows"] for t in tiers} == {"flex": 2, "priority": 1}
    flex = book.tier_price("gpt-5-2025-08-07", "flex")
    assert flex is not None and tiers["flex"]["price"] == flex.as_dict()
    report = (tmp_path / "out" / "cost_report.md").read_text()
    line = (f"gpt-5-2025-08-07: 2 rows answered at service tier flex, priced at its price: "
            f"{flex.input:g} / {flex.effective_cached_input:g} / {flex.output:g}.")
    assert f"- {line}" in report
    assert html.escape(line) in (tmp_path / "out" / "report.html").read_text()


def test_the_estimate_is_at_the_service_tier_asked_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The estimate priced a job asking for the priority tier at the standard price, half of
    what it would cost (and a flex job's at twice)."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{i},describe item {i}\n" for i in range(10)))
    shown = {}
    for tier in ("", "flex", "priority"):
        (tmp_path / "job.toml").write_text(
            f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "gpt-5"\n'
            'prompt = "{text}"\n[request.extra]\nmax_completion_tokens = 100000\n'
            + (f'service_tier = "{tier}"\n' if tier else "")
            + '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
        assert main(["estimate", str(tmp_path / "job.toml")]) == 0
        out = capsys.readouterr().out
        shown[tier] = float(out.split("estimated cost: $")[1].split()[0].replace(",", ""))
    book = PriceBook()
    for tier in ("flex", "priority"):
        assert shown[tier] == pytest.approx(
            shown[""] * (book.cost("gpt-5", prompt_tokens=0, completion_tokens=10 ** 6,
                                   service_tier=tier) or 0)
            / (book.cost("gpt-5", prompt_tokens=0, completion_tokens=10 ** 6) or 1), rel=0.01)


def test_the_budget_holds_a_request_at_the_service_tier_it_asks_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A request asking for the priority tier was held against the budget at the standard
    price, half of what it may cost: a budget it could pass let it be sent."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{i},describe item {i}\n" for i in range(5)))
    book = PriceBook()
    standard = book.cost("gpt-5", prompt_tokens=10, completion_tokens=10_000) or 0.0
    priority = book.cost("gpt-5", prompt_tokens=10, completion_tokens=10_000,
                         service_tier="priority") or 0.0
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        for tier, exit_code in (("default", 0), ("priority", 4)):
            (tmp_path / f"{tier}.toml").write_text(
                f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "gpt-5"\n'
                'prompt = "{text}"\n[request.extra]\nmax_completion_tokens = 10000\n'
                f'service_tier = "{tier}"\n[limits]\nconcurrency = 1\n'
                f'max_cost_usd = {(standard + priority) / 2}\n'
                f'[output]\ndir = "out-{tier}"\n')
            assert main(["run", str(tmp_path / f"{tier}.toml"), "--base-url", sim.base_url,
                         "--progress", "none"]) == exit_code, capsys.readouterr()
        assert sim.stats()["requests"] == 5  # the default tier's rows only
    assert "max_cost_usd" in capsys.readouterr().out


@pytest.mark.anyio
async def test_a_spend_past_the_budget_is_said_with_by_how_much(tmp_path: Path) -> None:
    """Prompts far longer in tokens than four characters a token (Chinese text, say): the
    requests in flight when the budget stopped the job were held at a tenth of what they cost,
    and the spend came to several times the budget, while the stop line said "$0.0000 spent and
    $0.0972 held" and no line said it was passed. The summary says by how much."""
    import asyncio

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        await asyncio.sleep(0.05)
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}})

    costly_job(tmp_path, make_input(tmp_path, 60), max_tokens=20, concurrency=8)
    s = await run_job_file(handler, tmp_path / "job.toml", FAST, max_cost_usd=0.5)
    assert s.exit_code == 4 and s.stopped and s.stopped.startswith("budget reached"), s
    assert s.cost_usd is not None and s.cost_usd > 0.5, s
    said = format_summary(s)
    assert (f"  warning: the job's spend, {format_usd(s.cost_usd)}, passed max_cost_usd $0.5000 "
            f"by {format_usd(s.cost_usd - 0.5)}: the requests in flight as it stopped cost more "
            "than they were held at") in said, said
