"""The command line itself: how it refuses a bad command line, its help, and its exit codes."""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from types import FrameType
from typing import Any

import pandas as pd
import pytest

import batchrunner.cli
from batchrunner import progress
from batchrunner.cli import EPILOG, build_parser
from batchrunner.progress import program, program_words, shell_quote
from batchrunner.runner import _without_key
from batchrunner.simulator import SimulatorConfig, SimulatorThread
from tests.loopback_site.loopback_guard import OUTSIDE_LOG

KEY = "sk-test-cli-0123456789"

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = batchrunner.cli.main(list(argv))
    except SystemExit as e:  # argparse's own exit (--help): never for a bad command line
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), f"not exactly one line: {err!r}"
    assert err.startswith("batchrunner: error: "), err
    return err.removeprefix("batchrunner: error: ").rstrip("\n")


def job_args(tmp_path: Path, *extra: str, inp: str = "in.csv") -> list[str]:
    """A job of three rows against the built-in simulator; its input is written if missing."""
    if not (tmp_path / inp).exists():
        pd.DataFrame({"id": ["a", "b", "c"], "text": ["one", "two", "three"]}).to_csv(
            tmp_path / inp, index=False)
    return ["run", "--input", str(tmp_path / inp), "--id-column", "id",
            "--prompt", "Say {text}", "--model", "gpt-4o-mini", "--simulator",
            "--output", str(tmp_path / "out"), "--progress", "none", *extra]


# -- an option a command does not have: that command's error, in one line ---------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["estimate", "job.toml", "--progress", "none"],
     "estimate has no option --progress (an option of run) — see batchrunner estimate --help"),
    (["run", "job.toml", "--bogus"], "run has no option --bogus — see batchrunner run --help"),
    (["run", "job.toml", "--max-tokns", "5"],
     "run has no option --max-tokns (did you mean --max-tokens?) — see batchrunner run --help"),
    (["run", "job.toml", "--results-format", "csv"],
     "run has no option --results-format (did you mean --format?) — see batchrunner run "
     "--help"),
    (["run", "job.toml", "--bogus=1", "--dry-rn"],
     "run has no options --bogus, --dry-rn (did you mean --dry-run?) — see batchrunner run "
     "--help"),
    (["status", "out", "--model", "m"],
     "status has no option --model (an option of run and estimate) — see batchrunner status "
     "--help"),
    # Options are not taken by their first letters: --n is the request field, not --name.
    (["run", "job.toml", "--n", "3"],
     "run has no option --n (the request field n: set it in a job file's [request.extra], or "
     "per row with --from-column n=COLUMN) — see batchrunner run --help"),
    (["estimate", "job.toml", "--seed", "7"],
     "estimate has no option --seed (the request field seed: set it in a job file's "
     "[request.extra], or per row with --from-column seed=COLUMN) — see batchrunner estimate "
     "--help"),
    (["run", "job.toml", "--max_tokens", "5"],  # ours, spelt as the field: not the field
     "run has no option --max_tokens (did you mean --max-tokens?) — see batchrunner run --help"),
    (["run", "job.toml", "--top", "0.5"],
     "run has no option --top (did you mean --top-p?) — see batchrunner run --help"),
    (["run", "job.toml", "--max-retries", "2"],  # the OpenAI SDK's setting
     "run has no option --max-retries (the OpenAI SDK's max_retries N is --max-attempts N+1 "
     "here: the first try and N retries) — see batchrunner run --help"),
    (["run", "job.toml", "--retry"],
     "run has no option --retry (did you mean --retry-failed?) — see batchrunner run --help"),
    # The OpenAI SDK's api_key: it was "an option of simulate", which takes the key the
    # simulator asks for
    (["run", "job.toml", "--api-key", "sk-abcdefghijklmnopqrstuv"],
     "run has no option --api-key (the key is read from OPENAI_API_KEY, in the environment or "
     "a .env file, never from an option; --api-key-env names another variable) — see "
     "batchrunner run --help"),
    # A --prompt the shell split in words, unquoted: "job file {name}: not found" or "run
    # takes no argument '{name}'"
    (["run", "--input", "in.csv", "--prompt", "Describe:", "{name}", "--model", "m"],
     "'{name}' looks like part of a prompt template: put the whole --prompt in quotes "
     "(--prompt 'Describe: {name}')"),
    (["run", "job.toml", "--prompt", "Describe", "the", "{name}"],
     "'{name}' looks like part of a prompt template: put the whole --prompt in quotes "
     "(--prompt 'Describe: {name}')"),
    (["simulate", "--por", "8001"],
     "simulate has no option --por (did you mean --port?) — see batchrunner simulate --help"),
    (["report", "out", "more"], "report takes no argument 'more' — see batchrunner report --help"),
    (["--bogus", "status", "out"], "batchrunner has no option --bogus — see batchrunner --help"),
    (["status"], "the following arguments are required: OUT_DIR — see batchrunner status --help"),
])
def test_an_unknown_argument_is_refused_by_its_command_in_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert one_error_line(err) == message
    assert list(tmp_path.iterdir()) == []


# -- a value an option cannot read: one line naming the option and what it takes ----------------


@pytest.mark.parametrize(("option", "value", "takes"), [
    ("--rpm", "fast", "a number of requests per minute"),
    ("--tpm", "lots", "a number of tokens per minute"),
    ("--concurrency", "many", "a whole number of requests"),
    ("--concurrency", "4.5", "a whole number of requests"),
    ("--max-tokens", "1.5", "a whole number of tokens"),
    ("--timeout", "2m", "a number of seconds"),
    ("--max-attempts", "six", "a whole number of attempts"),
    ("--max-cost", "$5", "an amount in US dollars (e.g. 2.50)"),
    ("--temperature", "hot", "a number from 0 to 2"),
    ("--top-p", "high", "a number from 0 to 1"),
])
@pytest.mark.parametrize("command", ["run", "estimate"])
def test_a_number_option_given_no_number_is_one_line_naming_it(
    command: str, option: str, value: str, takes: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(capsys, command, "job.toml", option, value)
    assert (code, out) == (2, "")
    assert one_error_line(err) == f"{option} takes {takes}, got {value!r}"


def test_other_argument_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["run", "--from-column", "user"],
         "--from-column takes FIELD=COLUMN, e.g. user=customer_id, got 'user'"),
        (["run", "--format", "xlsx"],
         "--format: invalid choice: 'xlsx' (choose from 'parquet', 'csv', 'jsonl')"),
        (["run", "--input"], "--input: expected one argument — see batchrunner run --help"),
        (["simulate", "--port", "x"], "--port: must be a port from 0 to 65535 (0: any free "
         "one), got 'x' — see batchrunner simulate --help"),
        (["simulate", "--port", "99999"], "--port: must be a port from 0 to 65535 (0: any free "
         "one), got '99999' — see batchrunner simulate --help"),
    ]:
        code, out, err = cli(capsys, *argv)
        assert (code, out) == (2, ""), argv
        assert one_error_line(err) == message


def test_an_empty_model_from_the_command_line_asks_about_the_shell_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model "$NBILITY_MODEL"`` with the variable set only in a .env file (as a gateway's
    guide sets it): the shell passes an empty word, and the error said only that --model must
    be a non-empty string. It asks whether a shell variable is empty, and says why."""
    code, out, err = cli(capsys, *job_args(tmp_path, "--model", ""))
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        "--model must be a non-empty string, got '' (a shell variable that is empty or unset? "
        "a .env file's variables are batchrunner's, not the shell's: export it, or give the "
        "value itself)")


def test_numbers_still_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *job_args(tmp_path, "--rpm", "600", "--tpm", "1e5",
                                           "--concurrency", "4", "--max-tokens", "20",
                                           "--timeout", "30", "--max-attempts", "2",
                                           "--max-cost", "1", "--temperature", "0.5",
                                           "--top-p", "1"))
    assert code == 0, err
    assert "3 ok" in out


# -- help ------------------------------------------------------------------------------------


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return {"batchrunner": parser, **parser.commands}


@pytest.mark.parametrize("command", list(_parsers()))
def test_every_option_has_help(command: str) -> None:
    parser = _parsers()[command]
    missing = [a.option_strings or a.dest for a in parser._actions
               if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []


@pytest.mark.parametrize("command", list(_parsers()))
def test_help_fits_a_terminal_of_80_columns(
        command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The top level's and run's descriptions were one line each of 118 and 125 characters,
    and run's example one of 102: a terminal broke them mid-word."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli(capsys, *([] if command == "batchrunner" else [command]), "--help")
    assert code == 0
    assert [line for line in out.splitlines() if len(line) > 80] == []


def test_help_says_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "run", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "--format {parquet,csv,jsonl} results format (default parquet)" in flat
    for option in ("--temperature X sampling temperature", "--max-tokens N most tokens",
                   "--top-p P nucleus sampling"):
        assert option in flat
    # Every limit says what it is without the option: none, no budget; the name its source.
    for option in ("--rpm N requests per minute (default: none, the server's x-ratelimit-* "
                   "headers pace the run)", "--tpm N tokens per minute (default: none",
                   "--max-cost USD stop before the job's total spend could pass this many US "
                   "dollars (default: no budget)", "--name NAME job name shown in progress and "
                   "reports (default: the job file's name, else the input's)"):
        assert option in flat
    code, out, _ = cli(capsys, "simulate", "--help")
    flat = " ".join(out.split())
    for option in ("--latency-ms MS milliseconds before each request is answered (default: 0)",
                   "--jitter-ms MS up to this many milliseconds more, drawn uniformly "
                   "(default: 0)", "--ms-per-token MS milliseconds between a stream's tokens "
                   "(default: 0)", "--fault KIND=RATE the share of requests, 0 to 1,",
                   "--rpm N requests per minute per key (default: unlimited)"):
        assert option in flat


# -- exit codes: what the footer says of report and status is what they do ---------------------


def test_report_exits_4_with_rows_left_to_do_and_status_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    flat = " ".join(EPILOG.split())
    assert "from report: rows are left to do" in flat and "status, estimate: 0 or 2" in flat
    # An output directory that is a file, or another job's, is refused (exit 2), as README says.
    assert "2 bad job, option, input or output directory (nothing sent)" in flat
    (tmp_path / "file").write_text("")
    assert cli(capsys, *job_args(tmp_path, "--output", str(tmp_path / "file")))[0] == 2
    # A budget below one request's cost stops the run with every row left to do.
    code, _, err = cli(capsys, *job_args(tmp_path, "--max-cost", "0.0000001"))
    assert code == 4, err
    assert cli(capsys, "report", "out")[0] == 4
    assert cli(capsys, "status", "out")[0] == 0
    assert cli(capsys, *job_args(tmp_path))[0] == 0
    assert cli(capsys, "report", "out")[0] == 0


def test_report_after_a_limit_run_exits_as_that_run_did_and_names_the_rows_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`--limit 2` to try a job, then `report`: the rows --limit left are what was asked, not
    a run cut short, so report exits as the run did (0, or 3 with a failed row) and says how
    to send the rest; once a run stops with rows left to do, it exits 4 again."""
    pd.DataFrame({"id": ["a", "b", "c", "d"],
                  "text": ["one", "two", "three", "four"]}).to_csv(tmp_path / "in.csv",
                                                                   index=False)
    assert cli(capsys, *job_args(tmp_path, "--limit", "2"))[0] == 0
    code, out, err = cli(capsys, "report", "out")
    assert code == 0, err
    assert "--limit 2 left 2 rows to do: the same command sends the next 2 rows" in out, out
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert (report["rows"]["by_status"], report["rows"]["to_do"]) == ({"ok": 2, "failed": 0}, 2)
    pd.DataFrame({"id": ["a", "b", "c", "d", "e"],
                  "text": ["one", "two", "three [[sim:400]]", "four", "five"]}).to_csv(
        tmp_path / "in.csv", index=False)
    assert cli(capsys, *job_args(tmp_path, "--limit", "1"))[0] == 3  # row c is refused
    code, out, _ = cli(capsys, "report", "out")
    assert code == 3 and "--limit 1 left 2 rows to do" in out, out
    # A job.json edited by hand, its limit not a number: read as no limit, no traceback.
    meta_path = tmp_path / "out" / "job.json"
    meta = json.loads(meta_path.read_text())
    meta["last_run"]["limit"] = "all"
    meta_path.write_text(json.dumps(meta))
    code, out, _ = cli(capsys, "report", "out")
    assert code == 4 and "--limit" not in out, out
    # A run that stops with rows left to do (its budget): report says to rerun, exit 4.
    assert cli(capsys, *job_args(tmp_path, "--max-cost", "0.0000001"))[0] == 4
    code, out, _ = cli(capsys, "report", "out")
    assert code == 4 and "--limit" not in out, out


# -- report needs the job's input where the job read it ------------------------------------------


def test_report_with_the_input_moved_says_to_put_it_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(capsys, *job_args(tmp_path))[0] == 0
    inp = tmp_path / "in.csv"
    inp.rename(tmp_path / "moved.csv")
    code, out, err = cli(capsys, "report", "out")
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        f"the job's input {inp} is gone: report rebuilds the results from it — put it back "
        "at that path, or run the job again with --input naming where it is now (it resumes, "
        "and rebuilds the results and reports)")
    # Both ways out work: put it back, or run the job again naming where it is now.
    (tmp_path / "moved.csv").rename(inp)
    assert cli(capsys, "report", "out")[0] == 0
    (tmp_path / "moved").mkdir()
    inp.rename(tmp_path / "moved" / "in.csv")
    code, out, err = cli(capsys, *job_args(tmp_path, inp="moved/in.csv"))
    assert code == 0, err
    assert "  nothing to do: earlier runs did the " in out
    assert cli(capsys, "report", "out")[0] == 0


def test_report_with_the_input_unreadable_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(capsys, *job_args(tmp_path))[0] == 0
    (tmp_path / "in.csv").write_bytes(b"")
    code, _, err = cli(capsys, "report", "out")
    assert code == 2
    assert "the file is empty" in one_error_line(err)


# -- progress: what the log lines say is true --------------------------------------------------


def test_main_gives_back_the_signal_handlers_it_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``main`` stops a run on SIGTERM or SIGHUP as on Ctrl-C; once it returns (a run, or a
    command refused), the program that called it has its own handlers back. They were left
    at main's, so that a SIGTERM later raised KeyboardInterrupt in that program wherever it
    was, and the calling program's own SIGHUP handler was lost."""
    watched = (signal.SIGTERM, signal.SIGHUP)

    def mine(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("not sent")

    before = {sig: signal.signal(sig, mine) for sig in watched}
    try:
        code, _, err = cli(capsys, *job_args(tmp_path))
        assert code == 0, err
        assert {sig: signal.getsignal(sig) for sig in watched} == dict.fromkeys(watched, mine)
        code, _, _ = cli(capsys, "status", "out/nightly")  # refused
        assert code == 2
        assert {sig: signal.getsignal(sig) for sig in watched} == dict.fromkeys(watched, mine)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_log_line_never_rounds_up_to_100_percent_nor_says_1_requests(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from batchrunner import progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    log = progress.LogProgress("nightly", every_s=30.0)
    log.start(240, 0)
    now[0] += 31
    log.update(progress.Counts(ok=239, in_flight=1), 239)
    now[0] += 31  # the last row is still out: one request in flight
    log.update(progress.Counts(ok=239, in_flight=1), 0)
    lines = capsys.readouterr().err.splitlines()
    assert "239/240 (99 %) rows" in lines[1], lines[1]
    assert lines[2].endswith("(no row finished for 31 s; 1 request in flight)"), lines[2]


def test_the_projected_cost_of_a_cheap_job_is_not_shown_below_the_cost_so_far() -> None:
    from batchrunner.progress import Counts, _postfix

    c = Counts(ok=77, tokens=5_142, cost_usd=0.0027, projected_usd=0.0042)  # was ~$0.00
    assert _postfix(c).endswith("cost=$0.0027 (~$0.0042 job)")
    assert _postfix(c, compact=True).endswith("cost=$0.0027 (~$0.0042 job)")
    c.projected_usd = 1234.567
    assert _postfix(c).endswith("(~$1,234.57 job)")


def test_under_limit_the_projected_cost_is_the_whole_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """10 rows alike (one reply length), 2 sent under --limit: the job is 5 times the run."""
    from batchrunner import progress

    monkeypatch.setattr(progress.LogProgress.__init__, "__defaults__", (0.0,))  # every row
    pd.DataFrame({"id": [f"r{i}" for i in range(10)], "text": ["same"] * 10}).to_csv(
        tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        'name = "ten"\n[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {text}"\n'
        '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n'
        '[simulator]\nreply_tokens = 1000\n')
    code, _, err = cli(capsys, "run", "job.toml", "--limit", "2", "--progress", "log")
    assert code == 0, err
    last = [line for line in err.splitlines() if "cost=$" in line][-1]
    cost, projected = (float(v) for v in
                       re.search(r"cost=\$([\d.]+) \(~\$([\d.]+) job\)", last).groups())
    assert 4.5 * cost < projected < 5.5 * cost, last


@pytest.mark.parametrize("table", ["", "[simulator]\ntrack_prompts = true\n"])
def test_the_simulator_a_run_starts_keeps_no_count_per_prompt_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    table: str,
) -> None:
    """Its counts by prompt are a map of every row's prompt (150 MB a million rows) that
    nothing in a run reads."""
    from batchrunner import simulator

    seen: list[simulator.Simulator] = []
    real = simulator.Simulator.__aenter__

    async def entered(self: simulator.Simulator) -> simulator.Simulator:
        seen.append(self)
        return await real(self)

    monkeypatch.setattr(simulator.Simulator, "__aenter__", entered)
    pd.DataFrame({"id": ["a", "b", "c"], "text": ["x", "y", "z"]}).to_csv(
        tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        'name = "three"\n[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {text}"\n'
        '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n' + table)
    code, _, err = cli(capsys, "run", "job.toml", "--progress", "none")
    assert code == 0, err
    (sim,) = seen
    assert sim.stats()["completions"] == 3
    assert len(sim.stats(per_prompt=True)["completions_by_prompt"]) == (3 if table else 0)


def test_estimate_says_its_completion_tokens_are_the_mean_of_every_answer_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Two runs of one row each: the mean is of both answers, not of 'the previous run'."""
    assert cli(capsys, *job_args(tmp_path, "--limit", "1"))[0] == 0
    code, out, _ = cli(capsys, "estimate", *job_args(tmp_path)[1:-2])
    assert code == 0
    assert re.search(r"completion tokens from: mean of 1 answer so far \(\d+ tokens\)", out), out
    assert cli(capsys, *job_args(tmp_path, "--limit", "1"))[0] == 0
    code, out, _ = cli(capsys, "estimate", *job_args(tmp_path)[1:-2])
    assert re.search(r"completion tokens from: mean of 2 answers so far \(\d+ tokens\)", out), out


def test_estimate_takes_each_models_mean_at_most_each_rows_max_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A job whose rows name their models, half of them answered: the estimate gave the other
    model's rows (a reasoning model's) the answered chat model's mean, and lost the warning
    of their unbounded thinking. Each model takes its own mean, at most the row's max_tokens;
    a model with no answer yet its max_tokens, or the guess and the warning."""
    inp = tmp_path / "mixed.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(7)], "text": ["hello there"] * 7,
                  "model": ["gpt-4o-mini"] * 4 + ["o4-mini"] * 3}).to_csv(inp, index=False)
    args = ["--input", str(inp), "--id-column", "id", "--prompt", "Say {text}",
            "--model-column", "model", "--simulator", "--output", str(tmp_path / "out")]
    assert cli(capsys, "run", *args, "--limit", "3", "--progress", "none")[0] == 0
    code, out, _ = cli(capsys, "estimate", *args)
    assert code == 0
    assert ("completion tokens from: each model's mean of its answers so far (3 answers), at "
            "most each row's max_tokens; for the 3 rows of models with none yet, their "
            "max_tokens, or a guess") in out, out
    assert "warning: 3 rows ask for thinking (model o4-mini) with no max_tokens" in out, out
    mini = next(line for line in out.splitlines() if line.strip().startswith("gpt-4o-mini"))
    o4 = next(line for line in out.splitlines() if line.strip().startswith("o4-mini"))
    assert int(o4.split()[3].replace(",", "")) > int(mini.split()[3].replace(",", "")), out
    # A concurrency set bounds the time too, by the answers' time, which no rate tells.
    code, out, _ = cli(capsys, "estimate", *args, "--rpm", "6000", "--concurrency", "4")
    assert ("(6,000 requests/min; longer where answers take over 0.04 s, as concurrency 4 "
            "sends no more at once)") in out, out
    # A long system prompt, cached by the APIs at a lower price: said not counted.
    code, out, _ = cli(capsys, "estimate", *args, "--system", "Write short. " * 400)
    assert "  prompt caching not counted: the system prompt's ~1,300 tokens, the same in " in out
    assert "prompt caching" not in cli(capsys, "estimate", *args, "--system", "Be brief.")[1]
    # The limit lowered since: each row's max_tokens bounds the mean.
    code, out, _ = cli(capsys, "estimate", *args, "--max-tokens", "1")
    o4 = next(line for line in out.splitlines() if line.strip().startswith("o4-mini"))
    assert o4.split()[3] == "3", out


def test_simulate_on_a_port_in_use_says_so_in_plain_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    # Called in-process where Ctrl-C is ignored (a pytest-xdist worker), it is left ignored: the
    # event loop's close reset it to Ctrl-C's handler, which the processes started later in
    # the same process inherited as their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # put back by the conftest
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli(capsys, "simulate", "--port", str(port))
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        f"cannot listen on 127.0.0.1:{port}: Address already in use (another server is on it: "
        "stop that one, or give another --port)")


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_or_report_of_a_job_file_not_found_says_job_file_not_directory(
    command: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(capsys, command, "jobs/nightly.toml")
    assert (code, out) == (2, "")
    assert one_error_line(err) == "job file jobs/nightly.toml: not found — check the path"
    code, out, err = cli(capsys, command, "out/nightly")
    assert one_error_line(err) == ("out/nightly: no such directory — give a run's output "
                                   "directory (its --output), or its job file")


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_or_report_of_a_file_says_it_is_a_file_not_an_output_directory(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The input given where the output directory goes (status tickets.csv) was said to be
    'not a batchrunner output directory (no job.json)', which a newcomer read as a broken
    run. It says it is a file, and what to give."""
    (tmp_path / "tickets.csv").write_text("id,text\n1,a\n")
    code, out, err = cli(capsys, command, str(tmp_path / "tickets.csv"))
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        f"{tmp_path / 'tickets.csv'} is a file, not a run's output directory — give the "
        "directory the run wrote to (its --output, holding job.json), or its job file (.toml)")


def test_the_summary_says_how_many_requests_met_a_429(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A run slowed by 429s says so at its end, not only in the cost report."""
    pd.DataFrame({"id": ["a", "b"], "text": ["one [[sim:429*2]]", "two"]}).to_csv(
        tmp_path / "in.csv", index=False)
    code, out, err = cli(capsys, *job_args(tmp_path))
    assert code == 0, err
    assert ("; 4 requests sent this run (2 answered 429, rate limited; to the built-in "
            "simulator: the answers are not real)\n") in out
    code, out, err = cli(capsys, *job_args(tmp_path))  # nothing sent: nothing to say of 429s
    assert "429" not in out and "  nothing to do: earlier runs did the 2 rows" in out


def test_the_bar_on_an_80_column_terminal_keeps_room_for_itself_and_the_cost(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tqdm cuts a line longer than the terminal at its end, where the cost is, and shrinks
    the bar to one character: the counts beside it are fitted to the width instead, the cost
    kept first."""
    import time

    from batchrunner import progress

    def drawn(width: int) -> list[str]:
        monkeypatch.setattr(progress, "_columns", lambda: width)  # a terminal's, not capsys's
        bar = progress.TqdmProgress("job")
        bar.start(20_000, 0)
        tq = bar._bar
        tq.dynamic_ncols = lambda fp: (width - 1, 24)  # as tqdm reads a terminal's width
        tq.start_t -= 60.0  # a minute into the run
        counts = progress.Counts(failed=45, retrying=12, rate_limited=345, tokens=1_234_567,
                                 cost_usd=12.3456, projected_usd=99.87)
        for _ in range(3):
            counts.ok += 1_000
            tq.last_print_t = time.time() - 1.0  # a redraw is due: 1,000 rows a second
            bar.update(counts, 1_000)
        bar.close()
        return [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
                if "/20000" in line]

    for width, shown in [(80, "cost=$12.3456]"),
                         (120, "ok=3,000 failed=45 429s=345 cost=$12.3456 (~$99.87 job)]")]:
        lines = drawn(width)
        assert lines
        for line in lines:
            assert len(line) < width and re.search(r"\|[^|]{8,}\| ", line), line  # a bar
        assert lines[-1].endswith(shown), lines[-1]


def test_the_summary_of_rows_cut_at_max_tokens_says_how_to_answer_them_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The summary named the way as "rerun with --max-tokens N ...", N left to guess: it is
    the whole command, with twice the max_tokens the rows used up, and it runs as printed."""
    code, out, err = cli(capsys, *job_args(tmp_path, "--max-tokens", "1"))
    assert code == 0, err
    said = ("  warning: 3 rows cut at max_tokens (finish_reason=length): to answer them again "
            "with a larger one (twice the job's max_tokens of 1, the most they were given; and "
            "give the job's later runs --max-tokens 2, which stop at a change of its request "
            "settings otherwise), run: ")
    (line,) = [line for line in out.splitlines() if line.startswith(said)]
    command = line.removeprefix(said)
    assert " --max-tokens 2 " in command and " --max-tokens 1 " not in command, command
    assert command.endswith(" --force --rerun-where \"finish_reason == 'length'\""), command
    argv = shlex.split(command)
    assert argv[0] == "batchrunner"
    # What it says works: the rows are sent again, with the larger max_tokens.
    code, out, err = cli(capsys, *argv[1:], "--progress", "none")
    assert code == 0, err
    assert "3 requests sent this run" in out
    assert "twice the job's max_tokens of 2, the most they were given" in out
    assert "--max-tokens 4 " in out
    assert set(pd.read_parquet(tmp_path / "out" / "results.parquet")["completion_tokens"]) == {2}


def test_rows_cut_by_an_earlier_runs_larger_limit_are_sent_with_twice_that(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Rows cut at 4 tokens, then the job's max_tokens lowered to 2 for the rest (--force): the
    command for all the rows cut said twice the job's max_tokens, --max-tokens 4, which sent
    the rows cut at 4 with no more than they had, to be cut and paid for again."""
    code, out, err = cli(capsys, *job_args(tmp_path, "--max-tokens", "4", "--limit", "2"))
    assert code == 0, err
    code, out, err = cli(capsys, *job_args(tmp_path, "--max-tokens", "2", "--force"))
    assert code == 0, err
    assert ("(twice the 4 tokens some of them were cut at by an earlier run (the job's "
            "max_tokens is 2 now); and give the job's later runs --max-tokens 8, which stop "
            "at a change of its request settings otherwise), run: ") in out, out
    assert " --max-tokens 8 " in out and " --max-tokens 4 " not in out, out


def test_max_completion_tokens_is_an_option_and_the_cut_rows_command_keeps_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A reasoning model takes max_completion_tokens, not max_tokens, and only a job file could
    set it; --max-completion-tokens sends it. The command for the rows it cut raises it by its
    own name: a --max-tokens beside it would be refused."""
    code, out, err = cli(capsys, *job_args(tmp_path, "--max-completion-tokens", "1"))
    assert code == 0, err
    said = ("twice the job's max_completion_tokens of 1, the most they were given; and give "
            "the job's later runs --max-completion-tokens 2, which stop at a change of its "
            "request settings otherwise), run: ")
    (line,) = [line for line in out.splitlines() if said in line]
    command = line.partition(said)[2]
    assert " --max-completion-tokens 2 " in command and "--max-tokens" not in command, command
    code, out, err = cli(capsys, *shlex.split(command)[1:], "--progress", "none")
    assert code == 0, err
    assert "--max-completion-tokens 4 " in out
    assert set(pd.read_parquet(tmp_path / "out" / "results.parquet")["completion_tokens"]) == {2}
    # --max-tokens over a job file's max_completion_tokens is sent under the file's name; the
    # command raises the option given, not a second limit beside it (refused).
    job = tmp_path / "job.toml"
    job.write_text("[request.extra]\nmax_completion_tokens = 120\n")
    code, out, err = cli(capsys, "run", str(job), *job_args(tmp_path, "--max-tokens", "1",
                                                             "--output", str(tmp_path / "o3"))[1:])
    assert code == 0, err
    command = next(line for line in out.splitlines() if "run: " in line).partition("run: ")[2]
    assert " --max-tokens 2 " in command and "--max-completion-tokens" not in command, command
    code, out, err = cli(capsys, *shlex.split(command)[1:], "--progress", "none")
    assert code == 0, err
    # Beside --max-tokens: one line, nothing sent.
    code, out, err = cli(capsys, *job_args(tmp_path, "--max-completion-tokens", "5",
                                           "--max-tokens", "5"))
    assert code == 2 and one_error_line(err).startswith(
        "--max-tokens and --max-completion-tokens are both set — APIs refuse a request with both")


def test_the_command_for_rows_cut_under_a_budget_raises_it_and_runs_to_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A job with a budget: the command for its rows cut at max_tokens kept the budget, which
    counts the job's whole cost, so run as printed it stopped at it after a few rows, or at
    once (walked). It raises --max-cost by twice what the cut rows cost, and a tenth more."""
    pd.DataFrame({"id": [f"r{i}" for i in range(40)],
                  "text": [f"describe product {i} in detail" for i in range(40)]}).to_csv(
        tmp_path / "in.csv", index=False)
    code, out, err = cli(capsys, *job_args(tmp_path, "--max-tokens", "20", "--max-cost",
                                            "0.0007"))
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if "cut at max_tokens" in line]
    assert "; and --max-cost raised to $" in line, line
    command = line.split(", run: ", 1)[1]
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    cut_usd, spent = report["rows"]["cut_at_length_usd"], report["cost_usd"]
    budget = float(shlex.split(command)[shlex.split(command).index("--max-cost") + 1])
    assert budget >= spent + 2.2 * cut_usd > 0.0007, (budget, spent, cut_usd)
    code, out, err = cli(capsys, *shlex.split(command)[1:], "--progress", "none")
    assert code == 0, err  # every cut row sent again, none stopped by the budget
    assert f"{report['rows']['cut_at_length']} requests sent this run" in out, out
    assert "stopped" not in out


def test_report_names_the_cut_rows_command_with_the_job_files_budget_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``report`` rebuilds the summary from job.json, which holds no job file's limits: its
    command for rows cut at max_tokens kept the job file's budget, and stopped at it."""
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"id": [f"r{i}" for i in range(40)],
                  "text": [f"describe product {i} in detail" for i in range(40)]}).to_csv(
        tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\nid_column = "id"\n[request]\nmodel = "gpt-4o-mini"\n'
        'prompt = "Say {text}"\nmax_tokens = 20\n[endpoint]\nsimulator = true\n'
        '[limits]\nmax_cost_usd = 0.0007\n[output]\ndir = "out"\n')
    code, out, err = cli(capsys, "run", "job.toml", "--progress", "none")
    assert code == 0, err
    (ran,) = [line for line in out.splitlines() if "cut at max_tokens" in line]
    assert "; and --max-cost raised to $" in ran and " --max-cost " in ran, ran
    code, out, err = cli(capsys, "report", "out")
    assert code == 0, err
    (rebuilt,) = [line for line in out.splitlines() if "cut at max_tokens" in line]
    assert rebuilt == ran


@pytest.mark.parametrize(("limit", "cut", "left"), [
    (1, "1 row cut at max_tokens (finish_reason=length): to answer it", "2 rows not done yet are"),
    (2, "2 rows cut at max_tokens (finish_reason=length): to answer them",
     "1 row not done yet is"),
])
def test_rows_cut_while_rows_are_left_to_do_name_no_command_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: int, cut: str, left: str,
) -> None:
    """A run that left rows to do (a budget stop, --limit) named the command with the larger
    max_tokens all the same: run as printed after a budget stop, it met the same budget and
    stopped again (walked). The summary names it once the rows left are done ("1 row ... is
    done", not "are")."""
    code, out, err = cli(capsys, *job_args(tmp_path, "--max-tokens", "1", "--limit", str(limit)))
    assert code == 0, err
    they = "it was" if limit == 1 else "they were"
    assert (f"  warning: {cut} again with a larger one, once the {left} done, the run's summary "
            f"names the command, with twice the job's max_tokens of 1, the most {they} "
            "given\n") in out


def test_the_command_for_rows_cut_with_n_choices_says_all_are_asked_again() -> None:
    """With n > 1 the note that every choice is asked for again goes before the command, not
    after it, where a copy of the line would take it in."""
    from batchrunner.runner import RunSummary, format_summary

    command = "batchrunner run job.toml --max-tokens 80 --force --rerun-where \"...\""
    said = format_summary(RunSummary(name="eval", rows=3, ok=3, length_cut=1, choices_asked=3,
                                     cut_advice="twice the 40 tokens it used up",
                                     cut_command=command))
    assert ("  warning: 1 row cut at max_tokens (finish_reason=length): to answer it again with "
            "a larger one (twice the 40 tokens it used up; all n = 3 choices of it are asked "
            f"for again, not only those cut), run: {command}\n") in said


def test_rows_cut_with_no_max_tokens_asked_say_to_set_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """No max_tokens asked: the server's own limit cut the rows, and twice nothing is no
    value: the summary says what to choose, in words."""
    args = job_args(tmp_path)
    args.remove("--simulator")
    with SimulatorThread(SimulatorConfig(api_key=KEY, default_max_tokens=1)) as sim:
        code, out, err = cli(capsys, *args, "--base-url", sim.base_url)
    assert code == 0, err
    assert ("  warning: 3 rows cut at max_tokens (finish_reason=length): to answer them again "
            "with a larger one, rerun the job with a --max-tokens above the completion_tokens "
            "they used (no max_tokens was asked: the server's own limit cut them), and --force "
            "--rerun-where \"finish_reason == 'length'\"\n") in out


def test_a_one_row_job_reads_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    pd.DataFrame({"id": ["a"], "text": ["one"]}).to_csv(tmp_path / "in.csv", index=False)
    code, _, err = cli(capsys, *job_args(tmp_path))
    assert code == 0, err
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert "| 1 attempt, 0 retries, 0 × 429 |" in re.sub(" +", " ", md)
    html = (tmp_path / "out" / "report.html").read_text()
    assert ">1 sent<" in html and "over 1 ok row<" in html and "1 ok row in " in html


def test_status_pace_of_one_row_left() -> None:
    import numpy as np

    from batchrunner.status import _pace

    now = 1_000_000.0
    line = _pace(np.array([now - 50.0, now - 30.0, now - 20.0, now - 10.0]), 1, now, now - 60.0)
    assert line == ("  pace: 6.0 rows/min over the last 30 s; the 1 row to do would take under a "
                    "minute")


def test_progress_says_how_long_the_endpoint_has_been_unreachable() -> None:
    from batchrunner.progress import Counts, _postfix

    c = Counts(ok=5, unreachable_s=42.4)
    assert _postfix(c, compact=True) == "ok=5 unreachable=42s tokens=0 cost=$0.0000"
    assert _postfix(c).endswith("cost=$0.0000 (no connection to the endpoint for 42 s)")
    # Its port takes connections and closes them (a container up before its server): not
    # "no connection".
    c.unreachable_cut, c.outage_s, c.connect_wait = True, 300.0, True
    assert _postfix(c, compact=True) == "ok=5 unreachable=42s (cut) tokens=0 cost=$0.0000"
    assert _postfix(c).endswith("cost=$0.0000 (no answer from the endpoint for 42 s, its "
                                "connections taken, then closed unanswered; the job waits 5 min "
                                "for it to come back, then stops)")
    c.unreachable_cut, c.outage_s, c.connect_wait = False, 0.0, False
    # A gateway answers for the endpoint: what it says, not "no connection" (the URL is
    # right; the model or the server behind it is not), cut and with no terminal escapes.
    c.unreachable_by = "HTTP 503: No available channel\x1b[2J for model x" + "!" * 200
    c.outage_s = 300.0
    assert _postfix(c, compact=True) == "ok=5 unreachable=42s (503) tokens=0 cost=$0.0000"
    line = _postfix(c)
    assert "(no answer from the endpoint for 42 s, only its gateway's HTTP 503: No available " \
        "channel?[2J for model x!!!" in line and "\x1b" not in line
    assert line.endswith("!…; the job stops after 5 min of these)")
    c.unreachable_s = 0.4  # under a second: not worth a word
    assert "unreachable" not in _postfix(c, compact=True) and "connection" not in _postfix(c)


def test_status_of_a_run_that_stopped_finishing_rows_says_so_rather_than_when_it_ends() -> None:
    """74 rows in 5 s, then none for 40 s (the endpoint away): the pace over the
    window read '98 rows/min; the 166 rows to do would take about 2 min'."""
    import numpy as np

    from batchrunner.status import _pace

    now = 1_000_000.0
    finished = np.linspace(now - 45.0, now - 40.0, 74)
    assert _pace(finished, 166, now, now - 90.0) == (
        "  pace: 99 rows/min over the last 45 s, but no row has finished for 40 s")
    finished = np.linspace(now - 45.0, now - 1.0, 74)  # finishing still: when it would end
    assert _pace(finished, 166, now, now - 90.0).endswith(
        "; the 166 rows to do would take about 2 min")
    # A slow job (a row every 2 min) 60 s after its last row is not stalled.
    assert _pace(np.array([now - 180.0, now - 60.0]), 10, now, None) == (
        "  pace: 0.5 rows/min over the last 120 s; the 10 rows to do would take about 20 min")


# -- output that nobody reads any more: `| head -1`, a `tee` killed ------------------------------


def _batchrunner(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchrunner", *args]


@pytest.mark.parametrize("closed", ["stderr", "stdout"])
def test_a_run_whose_output_pipe_closes_goes_on_to_the_end(tmp_path: Path, closed: str) -> None:
    """`batchrunner run job.toml 2>&1 | tee run.log` and the tee killed (or `| head -1`): the
    bar's next line, or the summary, goes into a pipe nobody reads. The output is lost, the
    run's work is not: every row is sent and journaled, the results written, and the exit code
    is the run's own, with no error for the pipe."""
    n = 300
    pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
                 ).to_csv(tmp_path / "in.csv", index=False)
    kept = tmp_path / "kept.txt"
    with SimulatorThread(SimulatorConfig(latency_ms=20)) as sim, kept.open("w") as kept_file:
        args = ["run", "--input", str(tmp_path / "in.csv"), "--id-column", "id",
                "--prompt", "Say {text}", "--model", "gpt-4o-mini", "--base-url", sim.base_url,
                "--concurrency", "4", "--output", str(tmp_path / "out"), "--progress", "bar"]
        pipes = {"stdout": kept_file, "stderr": kept_file, closed: subprocess.PIPE}
        proc = subprocess.Popen(_batchrunner(*args), cwd=tmp_path, **pipes)
        try:
            pipe = proc.stderr if closed == "stderr" else proc.stdout
            assert pipe is not None
            if closed == "stderr":
                assert pipe.read(1)  # the bar is drawn: the run is under way
            pipe.close()
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 0, kept.read_text()
        assert sim.stats()["completions"] == n
    results = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (results["status"] == "ok").sum() == n
    text = kept.read_text()
    if closed == "stderr":  # the summary still reaches stdout
        assert f"{n} ok" in text, text
    else:  # and nothing is said of the pipe
        assert "Traceback" not in text and "error" not in text.lower(), text


def test_status_report_and_estimate_into_a_closed_pipe_exit_quietly(tmp_path: Path) -> None:
    """`batchrunner status out | head -1`: what head did not read is dropped, without a word
    on stderr, and each command exits as it would have."""
    assert subprocess.run(_batchrunner(*job_args(tmp_path)), cwd=tmp_path, timeout=120,
                          capture_output=True).returncode == 0
    estimate = ["estimate", *job_args(tmp_path)[1:-2]]  # run's options but --progress
    for args, expected in ((["status", "out"], 0), (["report", "out"], 0), (estimate, 0)):
        proc = subprocess.Popen(_batchrunner(*args), cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.close()
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert (proc.returncode, err) == (expected, b""), args


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("full", ["both", "stdout", "stderr"])
def test_a_log_with_no_room_left_does_not_stop_the_run_nor_change_its_exit_code(
        tmp_path: Path, full: str) -> None:
    """A cron job's log on a full disk (/dev/full: every write fails with ENOSPC). The run
    died with exit code 120 before sending a row when stdout and stderr both went there, and
    after its rows when stdout alone did ("batchrunner: error: No space left on device", a
    traceback of the interpreter's last flush); `status` then called it killed. The log is
    lost, the run is not: every row is answered, the exit code is the run's, and the other
    output says once that the first cannot be written, then what was not written there."""
    n = 40
    pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
                 ).to_csv(tmp_path / "in.csv", index=False)
    args = ["run", "--input", str(tmp_path / "in.csv"), "--id-column", "id",
            "--prompt", "Say {text}", "--model", "gpt-4o-mini", "--simulator",
            "--output", str(tmp_path / "out"), "--progress", "log"]
    kept = tmp_path / "kept.txt"
    with open("/dev/full", "wb") as no_room, kept.open("wb") as log:
        outputs = {"stdout": no_room if full in ("both", "stdout") else log,
                   "stderr": no_room if full in ("both", "stderr") else log}
        proc = subprocess.run(_batchrunner(*args), cwd=tmp_path, timeout=120, **outputs)
    assert proc.returncode == 0, kept.read_text()
    results = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (results["status"] == "ok").sum() == n
    text = kept.read_text()
    assert "Traceback" not in text and "error" not in text, text
    if full != "both":
        assert text.count(f"batchrunner: warning: {full} cannot be written (No space left on "
                          "device): going on without writing there") == 1, text
        assert f"{n} ok" in text, text  # the summary: on stdout, or after it could not be
    # Bad input still exits 2, its line on the other output.
    with open("/dev/full", "wb") as no_room, kept.open("wb") as log:
        proc = subprocess.run(_batchrunner("run", "--input", str(tmp_path / "none.csv"),
                                           "--prompt", "Say {text}", "--model", "m",
                                           "--simulator", "--output", str(tmp_path / "o2")),
                              cwd=tmp_path, timeout=120, stdout=log, stderr=no_room)
    assert proc.returncode == 2
    assert "batchrunner: error: input" in kept.read_text()


UTC_STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "


def test_an_error_or_a_warning_in_a_log_file_says_when_it_came(tmp_path: Path) -> None:
    """A nightly job's log (``>> cron.log 2>&1``) had its progress lines stamped with the UTC
    time, but not the line of a night that failed at its start (bad input, exit 2) nor a
    warning before its first row: a morning's reader could not tell which night wrote them.
    Written to a file they begin with the time too; to a pipe (cron's mail, journald) or a
    terminal, as they were."""
    (tmp_path / "in.csv").write_text("id,text\na,hello\n")
    bad = ["run", "--input", str(tmp_path / "none.csv"), "--prompt", "Say {text}", "--model",
           "m", "--simulator", "--output", str(tmp_path / "bad")]
    log = tmp_path / "cron.log"
    with log.open("ab") as f:
        proc = subprocess.run(_batchrunner(*bad), cwd=tmp_path, timeout=120, stdout=f, stderr=f)
        assert proc.returncode == 2
        warned = ["run", "--input", str(tmp_path / "in.csv"), "--prompt", "Say {text}",
                  "--model", "gpt-4o-mini", "--simulator", "--output", str(tmp_path / "out"),
                  "--max-cost", "5"]
        proc = subprocess.run(_batchrunner(*warned), cwd=tmp_path, timeout=120, stdout=f,
                              stderr=f)
        assert proc.returncode == 0
    lines = log.read_text().splitlines()
    assert re.fullmatch(UTC_STAMP + r"batchrunner: error: input \S*none\.csv: .*", lines[0]), lines
    warning = [line for line in lines if "batchrunner: warning:" in line]
    assert len(warning) == 1 and re.match(
        UTC_STAMP + "batchrunner: warning: max_cost_usd is set but max_tokens is not", warning[0]
    ), lines
    piped = subprocess.run(_batchrunner(*bad), cwd=tmp_path, timeout=120, capture_output=True,
                           text=True)
    assert piped.returncode == 2
    assert piped.stderr.startswith("batchrunner: error: input "), piped.stderr


# -- a path whose name is not UTF-8 (Latin-1 bytes, say) -----------------------------------------


LATIN1 = os.fsdecode(b"caf\xe9")  # how Python names the bytes c a f 0xE9 on Linux


@pytest.mark.parametrize("where", ["input", "folder", "output", "output parent"])
def test_a_path_whose_name_is_not_utf8_is_refused_in_one_line_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str,
) -> None:
    """The Arrow and Parquet files are opened by UTF-8 names: an input, a Parquet folder's
    file or an output directory named in Latin-1 was sent (and paid for) and then failed
    reading its own journal, or crashed with a traceback. It is refused up front, naming it
    with its odd bytes shown as \\x escapes."""
    rows = pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]})
    inp, out = tmp_path / "in.csv", tmp_path / "out"
    if where == "input":
        inp = tmp_path / f"{LATIN1}.csv"
    elif where == "folder":
        inp = tmp_path / "parts"
        inp.mkdir()
        rows.to_parquet(inp / "part.parquet")  # Arrow writes no other name
        (inp / "part.parquet").rename(inp / f"{LATIN1}.parquet")
    elif where == "output":
        out = tmp_path / LATIN1
    else:
        out = tmp_path / LATIN1 / "out"
    if where != "folder":
        rows.to_csv(inp, index=False)
    with SimulatorThread(SimulatorConfig()) as sim:
        code, out_text, err = cli(
            capsys, "run", "--input", str(inp), "--id-column", "id", "--prompt", "Say {text}",
            "--model", "gpt-4o-mini", "--base-url", sim.base_url, "--output", str(out),
            "--progress", "none")
        assert sim.stats()["requests"] == 0
    assert (code, out_text) == (2, ""), err
    line = one_error_line(err)
    assert "caf\\xe9" in line and "UTF-8" in line, line
    assert not out.exists()
    code, _, err = cli(capsys, "estimate", "--input", str(inp), "--id-column", "id",
                       "--prompt", "Say {text}", "--model", "gpt-4o-mini", "--output", str(out))
    assert code == 2 and "caf\\xe9" in one_error_line(err)


def test_a_job_file_whose_path_is_not_utf8_runs_and_is_shown_with_escapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A job file is read by Python, which takes any name: only where it is shown (job.json,
    the reports, status) does a Latin-1 name need writing as UTF-8 text. The run's reports
    crashed on it, after every row was sent; they show it with \\x escapes."""
    pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]}).to_csv(
        tmp_path / "in.csv", index=False)
    jobs = tmp_path / LATIN1
    jobs.mkdir()
    (jobs / "job.toml").write_text(
        f'name = "two"\n[input]\npath = "{tmp_path / "in.csv"}"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {text}"\n'
        f'[endpoint]\nsimulator = true\n[output]\ndir = "{tmp_path / "out"}"\n')
    code, out, err = cli(capsys, "run", str(jobs / "job.toml"), "--progress", "none")
    assert code == 0, err
    assert "2 ok" in out
    shown = str(tmp_path / "caf\\xe9" / "job.toml")
    report = json.loads((tmp_path / "out" / "cost_report.json").read_bytes().decode("utf-8"))
    assert report["job"]["job_file"] == shown
    assert cli(capsys, "report", str(jobs / "job.toml"))[0] == 0
    assert cli(capsys, "status", "out")[0] == 0


def test_a_command_named_for_paths_not_utf8_or_needing_quotes_runs_as_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job file in a directory named in Latin-1 bytes, with a space and a quote in it, run
    from there (a crontab's `cd`): job.json kept the paths with their odd bytes as \\x text,
    and status named `cd '.../caf\\xe9 o'"'"'k' && batchrunner run ...`, which no shell runs
    (the bytes are not those characters). The paths are kept as they are, and every path of
    the command is quoted one way: shlex's, or printf's octal escapes for bytes a terminal
    would not show, which /bin/sh reads as bash does. Run by each exactly as printed, it runs
    the job on. A job file not run yet is named quoted too."""
    pd.DataFrame({"id": [f"r{i}" for i in range(5)], "text": ["one"] * 5}).to_csv(
        tmp_path / "in.csv", index=False)
    jobs = tmp_path / os.fsdecode(b"caf\xe9 o'k")
    jobs.mkdir()
    (jobs / "job.toml").write_text(
        f'name = "five"\n[input]\npath = "{tmp_path / "in.csv"}"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {text}"\n'
        f'[endpoint]\nsimulator = true\n[output]\ndir = "{tmp_path / "out"}"\n')
    monkeypatch.chdir(jobs)
    code, _, err = cli(capsys, "run", "job.toml", "--limit", "2", "--progress", "none")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "status", "out")
    finish = next(x for x in out.splitlines() if x.startswith("  to finish, "))
    quoted = f"\"$(printf '{tmp_path}/caf\\351 o\\047k')\""
    assert finish == (f"  to finish, 3 rows to do: cd {quoted} && batchrunner run "
                      f"\"$(printf '{tmp_path}/caf\\351 o\\047k/job.toml')\""), finish
    command = finish.partition("to do: ")[2]
    # Run by /bin/sh, as cron runs a line (dash here: it reads no bash $'...'), then bash.
    shell = (f'batchrunner() {{ "{sys.executable}" -m batchrunner "$@"; }}; '
             f"{command} --progress none --limit 1")
    for sh, ok in (("sh", 3), ("bash", 4)):
        done = subprocess.run([sh, "-c", shell], capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, (sh, done.stderr)
        assert f"{ok} ok, 0 failed".encode() in done.stdout, (sh, done.stdout)
    # Not run yet: the command named to run it is quoted.
    (tmp_path / "my jobs").mkdir()
    (tmp_path / "my jobs" / "job.toml").write_text(
        (jobs / "job.toml").read_text().replace(str(tmp_path / "out"), "out"))
    code, _, err = cli(capsys, "status", "my jobs/job.toml")
    assert code == 2 and one_error_line(err).endswith(
        "run it with: batchrunner run 'my jobs/job.toml'"), err


# -- a row whose attempt was billed, stopped before its retry: still to do -------------------------


def test_a_row_billed_then_stopped_before_its_retry_reads_as_still_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Row r0's first reply is billed ($0.01 here) with no answer, and the budget stops the job
    before its retry. Its results row showed the billed attempt's time as `finished_at`, and
    the summary and `status` counted the $0.01 as 'earlier attempts of rows sent again', though
    nothing was sent again: the row is to do, its billed attempt said as such."""
    pd.DataFrame({"id": ["r0", "r1", "r2"],
                  "text": ["zero [[sim:no_choices*1]]", "one", "two"]}).to_csv(
        tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        'name = "billed"\n[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {text}"\nmax_tokens = 10\n'
        '[endpoint]\nsimulator = true\n[limits]\nconcurrency = 1\nmax_cost_usd = 0.015\n'
        '[output]\ndir = "out"\nformat = "csv"\n'
        '[prices."gpt-4o-mini"]\ninput = 0\noutput = 1000\n'  # $0.001 a reply token
        '[simulator]\nreply_tokens = 10\n')
    code, out, err = cli(capsys, "run", "job.toml", "--progress", "none")
    assert code == 4 and "budget reached" in out, (out, err)
    row = pd.read_csv(tmp_path / "out" / "results.csv").set_index("id").loc["r0"]
    assert pd.isna(row["status"]) and pd.isna(row["finished_at"]), row
    assert (row["attempts"], row["earlier_cost_usd"]) == (1, 0.01)
    said = "(plus $0.0100 for earlier attempts of 1 row still to do)"
    assert said in out and "sent again" not in out, out
    code, out, _ = cli(capsys, "status", "out")
    assert said in out and "sent again" not in out, out
    assert cli(capsys, "report", "out")[0] == 4
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["rows"]["billed_to_do"] == 1
    assert report["cost_to_do_attempts_usd"] == report["cost_earlier_attempts_usd"] == 0.01
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert "| Earlier attempts, 1 row still to do (USD) | $0.0100" in md
    assert "sent again" not in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "plus $0.0100 for earlier attempts of 1 row still to do" in html
    assert "sent again" not in html
    assert pd.isna(pd.read_csv(tmp_path / "out" / "results.csv").loc[0, "finished_at"])
    # Answered by the rerun (a new simulator: billed once more first), the row's billed
    # attempts are earlier attempts of a row sent again.
    code, out, _ = cli(capsys, "run", "job.toml", "--progress", "none", "--max-cost", "1")
    assert code == 0 and "(plus $0.0200 for earlier attempts of rows sent again)" in out, out
    assert "still to do" not in out


def test_earlier_attempts_of_rows_sent_again_and_of_rows_to_do_are_told_apart() -> None:
    from batchrunner.status import plus_earlier

    assert plus_earlier(0.0) == ""
    assert plus_earlier(0.03) == " (plus $0.0300 for earlier attempts of rows sent again)"
    assert plus_earlier(0.03, 2, 0.03) == (
        " (plus $0.0300 for earlier attempts of 2 rows still to do)")
    assert plus_earlier(0.03, 1, 0.01) == (
        " (plus $0.0200 for earlier attempts of rows sent again and $0.0100 of 1 row still to "
        "do)")


def key_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str], written: str) -> str:
    """The one line a run gives with OPENAI_API_KEY set to ``written`` (a key for a simulator
    that wants KEY): exit 2, nothing sent, nothing written, the key not shown."""
    monkeypatch.setenv("OPENAI_API_KEY", written)
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        args = job_args(tmp_path)
        args.remove("--simulator")
        code, out, err = cli(capsys, *args, "--base-url", sim.base_url)
        assert sim.stats()["requests"] == 0
    assert (code, out) == (2, "")
    assert KEY not in err
    assert not (tmp_path / "out").exists()
    return one_error_line(err)


@pytest.mark.parametrize("written", [
    f"Bearer {KEY}", f"bearer  {KEY}", f"Authorization: Bearer {KEY}"])
def test_a_key_written_with_its_bearer_prefix_is_refused_saying_to_drop_it(
        tmp_path: Path, written: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway's docs show the header (``Authorization: Bearer sk-...``), and the key is
    pasted with it: one line saying to set the key alone, nothing sent, the key not shown."""
    assert key_refused(tmp_path, monkeypatch, capsys, written) == (
        f"OPENAI_API_KEY holds '{written.rpartition(' ')[0].rstrip()} ' before the key: set it "
        "to the key alone (batchrunner sends the Authorization: Bearer header itself)")


def _job_with_a_path_from_the_cwd(tmp_path: Path, key: str, written: str) -> None:
    """data/in.csv, data/reply.schema.json and jobs/job.toml under ``tmp_path``, the job's
    ``key`` (path or schema_file) written as ``written``, from ``tmp_path`` rather than from the
    job file; its other path written from the file."""
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs").mkdir()
    pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]}).to_csv(
        tmp_path / "data" / "in.csv", index=False)
    (tmp_path / "data" / "reply.schema.json").write_text('{"type": "object"}')
    inp = written if key == "path" else "../data/in.csv"
    schema = f'schema_file = "{written}"\n' if key == "schema_file" else ""
    (tmp_path / "jobs" / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n'
        f'[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {{text}}"\n{schema}'
        '[endpoint]\nsimulator = true\n[output]\ndir = "../out"\n')


@pytest.mark.parametrize(("key", "written"), [("path", "data/in.csv"),
                                              ("schema_file", "data/reply.schema.json")])
def test_a_job_file_path_written_from_the_current_directory_says_how_to_write_it(
        tmp_path: Path, key: str, written: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Paths in a job file are relative to the file: jobs/tickets.toml run from the project's
    directory with path = "data/in.csv" (the path from where the command is typed) named
    jobs/data/in.csv, not found. The one line says so and how to write it from the file."""
    _job_with_a_path_from_the_cwd(tmp_path, key, written)
    table = "input" if key == "path" else "request"
    for command in ("run", "estimate"):
        code, out, err = cli(capsys, command, "jobs/job.toml")
        assert (code, out) == (2, "")
        assert one_error_line(err) == (
            f"job file jobs/job.toml: [{table}] {key} {written!r} is not found beside the job "
            f"file (paths in a job file are relative to it); for {tmp_path / written} write "
            f"{key} = \"../{written}\"")
    assert not (tmp_path / "out").exists()
    (tmp_path / "jobs" / "job.toml").write_text(
        (tmp_path / "jobs" / "job.toml").read_text().replace(written, f"../{written}", 1))
    assert cli(capsys, "run", "jobs/job.toml", "--progress", "none")[0] == 0


@pytest.mark.parametrize("url", ["https://api.openai.com", "https://api.openai.com/",
                                 "http://api.openai.com/v1", "https://API.openai.com/v2"])
def test_openais_url_without_v1_or_https_is_refused_naming_the_right_one(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """OPENAI_BASE_URL=https://api.openai.com (no /v1) had every row answered 404 'Invalid URL
    (POST /chat/completions)', 20 and more sent before the job stopped; over http:// the key
    went out unencrypted before OpenAI's redirect stopped the job. Refused up front (checked
    here without sending: estimate, and the check the run makes of OPENAI_BASE_URL)."""
    from batchrunner.config import ConfigError, check_base_url

    message = f"--base-url for OpenAI's API is https://api.openai.com/v1, got {url!r}"
    pd.DataFrame({"text": ["one"]}).to_csv("in.csv", index=False)
    code, out, err = cli(capsys, "estimate", "--input", "in.csv", "--prompt", "Say {text}",
                         "--model", "gpt-4o-mini", "--base-url", url)
    assert (code, out, one_error_line(err)) == (2, "", message)
    with pytest.raises(ConfigError, match=re.escape(message.replace("--base-url", "X"))):
        check_base_url(url, "X")
    assert check_base_url("https://api.openai.com/v1/", "X") == "https://api.openai.com/v1"


@pytest.mark.parametrize(("in_file", "option"), [
    ('prompt = "Say {text}"', ["--prompt-column", "text"]),
    ('prompt_column = "text"', ["--prompt", "Say {text}"])])
def test_prompt_or_prompt_column_on_the_command_line_overrides_the_other_in_the_file(
        tmp_path: Path, in_file: str, option: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The README: a job file's common fields can be overridden on the command line. A file's
    prompt and --prompt-column (or its prompt_column and --prompt) were refused as both set;
    the option wins, as --base-url does over the file's simulator = true. Both in the file,
    or both on the command line, are still refused."""
    pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]}).to_csv("in.csv", index=False)
    Path("job.toml").write_text(
        f'[input]\npath = "in.csv"\nid_column = "id"\n[request]\nmodel = "gpt-4o-mini"\n'
        f'{in_file}\n[endpoint]\nsimulator = true\n[output]\ndir = "out"\nformat = "csv"\n')
    code, out, err = cli(capsys, "run", "job.toml", *option, "--progress", "none")
    assert code == 0, err
    sent = pd.read_csv("out/results.csv")["content"]
    said = ["Say one", "Say two"] if option[0] == "--prompt" else ["one", "two"]
    assert [s.split("] ", 1)[1].startswith(w) for s, w in zip(sent, said, strict=True)] == [
        True, True], list(sent)
    code, out, err = cli(capsys, "run", "job.toml", "--prompt", "Say {text}",
                         "--prompt-column", "text", "--output", "out2")
    assert (code, out, one_error_line(err)) == (
        2, "", "--prompt and --prompt-column are both set — give one of them")
    Path("both.toml").write_text(Path("job.toml").read_text().replace(
        "[endpoint]", 'prompt = "Say {text}"\nprompt_column = "text"\n[endpoint]').replace(
        f"{in_file}\n", "", 1))
    code, out, err = cli(capsys, "run", "both.toml", "--output", "out3")
    assert (code, out, one_error_line(err)) == (
        2, "", "job file both.toml: [request] prompt and [request] prompt_column are both set — "
        "give one of them")


@pytest.mark.parametrize("written", [f'"{KEY}"', f"'{KEY}'", f'"{KEY}'])
def test_a_key_read_with_its_quotes_is_refused_saying_to_drop_them(
        tmp_path: Path, written: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """OPENAI_API_KEY="sk-..." read as it is written (docker's --env-file keeps the quotes)
    was sent with them, and the server's 401 said to check a key that looks right. No key
    has quotes: one line says to drop them, nothing sent, the key not shown."""
    assert key_refused(tmp_path, monkeypatch, capsys, written) == (
        "OPENAI_API_KEY starts or ends with a quote, which no API key has: set it without "
        "quotes (a .env file batchrunner reads has them taken off; docker's --env-file keeps "
        "them)")


@pytest.mark.parametrize("header", ["[prices.gpt-4.1-mini]", "[prices.qwen2.5-72b-instruct]"])
def test_a_model_price_with_dots_in_a_bare_key_says_to_quote_it(
        tmp_path: Path, header: str, capsys: pytest.CaptureFixture[str]) -> None:
    """TOML splits a bare key at its dots: [prices.gpt-4.1-mini] is a table gpt-4 holding one
    named 1-mini, and the job was refused as "[prices.gpt-4] unknown key '1-mini'", a model
    nobody wrote. The one line names the model as written and how to quote it."""
    model = header.removeprefix("[prices.").removesuffix("]")
    pd.DataFrame({"id": ["a"], "text": ["one"]}).to_csv("in.csv", index=False)
    job = (f'[input]\npath = "in.csv"\nid_column = "id"\n[request]\nmodel = "{model}"\n'
           'prompt = "Say {text}"\n[endpoint]\nsimulator = true\n[output]\ndir = "out"\n'
           f'{header}\ninput = 0.4\noutput = 1.6\n[prices."other.model"]\ninput = 1\noutput = 2\n')
    Path("job.toml").write_text(job)
    for command in ("run", "estimate"):
        code, out, err = cli(capsys, command, "job.toml")
        assert (code, out, one_error_line(err)) == (
            2, "", f"job file job.toml: {header} is read as tables nested at each dot (TOML "
            f"splits a bare key there): quote the model's name, [prices.\"{model}\"]")
    assert not Path("out").exists()
    Path("job.toml").write_text(job.replace(header, f'[prices."{model}"]'))
    code, out, err = cli(capsys, "run", "job.toml", "--progress", "none")
    assert code == 0, err
    assert json.loads(Path("out/cost_report.json").read_text())["cost_usd"] > 0


@pytest.mark.parametrize("layout", ["results.csv", "results.parquet", "folder"])
def test_an_output_directory_whose_results_would_replace_the_input_is_refused(
        tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An input named as the results are, in the output directory (one job's results made the
    next one's input there), was read, sent and then replaced by the results file: the input
    gone, and the rerun refused as its input had changed. A Parquet folder given as its own
    output directory got results.parquet among its parts. Refused before anything is sent."""
    rows = pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]})
    data = tmp_path / "data"
    data.mkdir()
    inp = data if layout == "folder" else data / layout
    if layout == "results.csv":
        rows.to_csv(inp, index=False)
    else:
        rows.to_parquet(data / ("part-0.parquet" if layout == "folder" else layout))
    before = sorted((p.name, p.read_bytes()) for p in data.iterdir())
    fmt = layout.rpartition(".")[2] if layout != "folder" else "parquet"
    with SimulatorThread(SimulatorConfig()) as sim:
        code, out, err = cli(
            capsys, "run", "--input", str(inp), "--id-column", "id", "--prompt", "Say {text}",
            "--model", "gpt-4o-mini", "--base-url", sim.base_url, "--output", "data",
            "--format", fmt, "--progress", "none")
        assert sim.stats()["requests"] == 0
    assert (code, out, one_error_line(err)) == (
        2, "", f"--output {data} would have the results written over the input ({inp}): "
        "choose another output directory")
    assert sorted((p.name, p.read_bytes()) for p in data.iterdir()) == before


@pytest.mark.parametrize(("argv", "message"), [
    (["jobs/tickets.toml"], "'jobs/tickets.toml' is not a command: to run that job file, "
     "batchrunner run jobs/tickets.toml"),
    (["jobs/tickets.toml", "--limit", "5"], "'jobs/tickets.toml' is not a command: to run that "
     "job file, batchrunner run jobs/tickets.toml ..."),
    (["runn", "job.toml"], "no command 'runn' (did you mean run?) — the commands: run, "
     "estimate, status, report, simulate (batchrunner --help)"),
    (["go"], "no command 'go' — the commands: run, estimate, status, report, simulate "
     "(batchrunner --help)"),
])
def test_a_job_file_or_a_typo_where_the_command_goes_says_what_to_type(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``batchrunner jobs/tickets.toml`` (the command left out) said "COMMAND: invalid choice:
    'jobs/tickets.toml' (choose from 'run', ...)": the line now gives the command to type."""
    code, out, err = cli(capsys, *argv)
    assert (code, out, one_error_line(err)) == (2, "", message)


@pytest.mark.parametrize(("option", "wanted", "meant"), [
    ("--prompt", "Describe {Product_Name}", "product_name"),
    ("--prompt", "Describe {product_nme}", "product_name"),
    ("--id-column", "SKU", "sku"),
    ("--id-column", "id", "ticket_id"),
    ("--prompt", "Describe {name}", "product_name"),
    ("--model-column", "modle", "model"),
])
def test_a_column_named_almost_right_is_pointed_out_among_many(
        tmp_path: Path, option: str, wanted: str, meant: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A table exported with dozens of columns: a name mistyped, or in another case, was
    refused with the whole list of columns to search by eye. The line says which was meant,
    the one column a name is a word of too (id for ticket_id)."""
    columns = {f"attr_{i:02}": ["x"] for i in range(30)}
    pd.DataFrame({"sku": ["a"], "product_name": ["mug"], "model": ["gpt-4o-mini"],
                  "ticket_id": ["t1"], **columns}).to_csv("in.csv", index=False)
    args = {"--prompt": "Describe {product_name}", "--id-column": "sku",
            "--model-column": "model", option: wanted}
    code, out, err = cli(capsys, "run", "--input", "in.csv", "--model", "gpt-4o-mini",
                         "--simulator", "--output", "out", *(x for kv in args.items() for x in kv))
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert line.endswith(f"attr_29; did you mean {meant!r}?)"), line
    assert not Path("out").exists()


def test_a_name_that_is_a_word_of_two_columns_points_out_neither() -> None:
    from batchrunner.template import column_list

    assert column_list(["user_id", "order_id"], "id") == "columns: user_id, order_id"
    assert column_list(["user_id", "order_total"], "order") == (
        "columns: user_id, order_total; did you mean 'order_total'?")


@pytest.mark.parametrize(("key", "option"), [("path", "--input"),
                                             ("schema_file", "--schema-file")])
def test_a_job_file_path_the_command_line_overrides_is_not_checked(
        tmp_path: Path, key: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A nightly job file whose path (or schema_file) is written from the current directory,
    run with --input tonight.csv (or --schema-file) in its place, as the README lets the
    command line override the file: the file's own path is never read, yet the run was
    refused saying to write that path from the file. The path given is the one used."""
    written = "data/in.csv" if key == "path" else "data/reply.schema.json"
    _job_with_a_path_from_the_cwd(tmp_path, key, written)
    pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]}).to_csv(
        tmp_path / "data" / "tonight.csv", index=False)
    given = "data/tonight.csv" if key == "path" else "data/reply.schema.json"
    code, out, err = cli(capsys, "run", "jobs/job.toml", option, given, "--progress", "none")
    assert code == 0, err
    assert "2 rows: 2 ok" in out


def test_a_setting_refused_by_a_reasoning_model_is_named_as_the_option_that_set_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job given by options alone, as the gateway reference's reader writes one for gpt-5.2
    (--max-tokens 300 --temperature 0.3): the warnings named "[request] max_tokens" and
    "[request] temperature", tables of a job file there is none of. They name the options; a
    job file's warnings still name its tables."""
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n")
    given = ("--input", "in.csv", "--prompt", "{text}", "--model", "gpt-5.2", "--max-tokens",
             "300", "--temperature", "0.3", "--base-url", "http://127.0.0.1:9/v1")
    code, out, _ = cli(capsys, "estimate", *given, "--output", "out")
    assert code == 0
    assert ("  warning: --max-tokens is refused by OpenAI for gpt-5.2, a reasoning model "
            "(\"Unsupported parameter: 'max_tokens' ... Use 'max_completion_tokens' instead\"), "
            "every row answered 400 unless a gateway renames it: pass --max-completion-tokens "
            "instead\n") in out, out
    assert "  warning: --temperature 0.3 is refused by OpenAI for gpt-5.2" in out, out
    assert "[request]" not in out, out
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[request]\nmodel = "gpt-5.2"\nprompt = "{text}"\n'
        'max_tokens = 300\n[endpoint]\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[output]\ndir = "out2"\n')
    code, out, _ = cli(capsys, "estimate", str(tmp_path / "job.toml"))
    assert code == 0
    assert ("  warning: [request] max_tokens is refused by OpenAI for gpt-5.2" in out
            and "set max_completion_tokens in [request.extra] instead" in out), out
    # An option over the job file is named as the option, its other settings as its tables
    # (it said "[request] temperature 0.3" for --temperature 0.3).
    code, out, _ = cli(capsys, "estimate", str(tmp_path / "job.toml"), "--temperature", "0.3")
    assert code == 0
    assert "  warning: --temperature 0.3 is refused by OpenAI for gpt-5.2" in out, out
    assert "  warning: [request] max_tokens is refused by OpenAI for gpt-5.2" in out, out
    code, out, _ = cli(capsys, "estimate", str(tmp_path / "job.toml"), "--max-tokens", "200")
    assert code == 0
    assert ("  warning: --max-tokens is refused by OpenAI for gpt-5.2" in out
            and "pass --max-completion-tokens instead" in out and "[request]" not in out), out


@pytest.mark.parametrize(("args", "said"), [
    (["run", "--input", "in.csv", "--prompt", "{text}", "--model", "gpt-4o-mini",
      "--simulator"],
     "batchrunner: interrupted; finished rows are saved — run the same command to resume"),
    (["report", "out"],
     "batchrunner: interrupted — run the same command again to rebuild the results and reports"),
    (["status", "out"], "batchrunner: interrupted"),
], ids=["run", "report", "status"])
def test_ctrl_c_before_a_runs_own_handler_says_what_the_command_left(
        args: list[str], said: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while no run's own handler is up (planning, writing the results, or report and
    status) said "finished rows are saved — rerun to resume" whatever the command: report and
    status finish no rows, and a run's own Ctrl-C says "run the same command to resume"."""
    import batchrunner.cli as cli_module

    def interrupted(ns: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, f"_cmd_{args[0]}", interrupted)
    assert cli_module.main(args) == 4
    assert capsys.readouterr().err == f"{said}\n"


class _CtrlCOnLoad(importlib.abc.MetaPathFinder):
    """Ctrl-C as ``batchrunner.cli`` is loaded."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "batchrunner.cli":
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_the_installed_command_loads_says_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in the installed command's first ~0.3 s, while its modules load, printed a
    traceback: its entry point was batchrunner.cli's main, imported before any handler. It is
    now ``batchrunner.__main__``'s, which says one line and exits 4 as ``python -m`` did."""
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())[
        "project"]["scripts"]
    module, _, name = scripts["batchrunner"].partition(":")
    entry = getattr(__import__(module, fromlist=[name]), name)
    monkeypatch.delitem(sys.modules, "batchrunner.cli")
    monkeypatch.setattr(sys, "meta_path", [_CtrlCOnLoad(), *sys.meta_path])
    assert entry() == 4
    assert capsys.readouterr().err == (
        "batchrunner: interrupted while starting: nothing was done — run the same command "
        "again\n")


def test_a_signal_after_the_command_is_done_does_not_change_its_exit_code(
        tmp_path: Path) -> None:
    """A scheduler that stops a run with SIGTERM, then again a quarter of a second later: the
    second came after the command had said its summary and put the default handler back, as
    its process exited, and killed it (exit 143, not the 4 its summary stood for). The
    program ignores SIGTERM, SIGINT and SIGHUP once its exit code is told."""
    code = ("import os, signal, sys\n"
            "sys.argv = ['batchrunner', 'status', sys.argv[1]]\n"
            "from batchrunner.__main__ import main\n"
            "code = main()\n"
            "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
            "    os.kill(os.getpid(), sig)\n"
            "raise SystemExit(code)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "batchrunner:" in done.stderr, done


def test_a_terminal_that_says_no_width_gets_log_lines_not_an_empty_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pseudo-terminal no window gave a size (``docker exec -t`` in a script) says 0
    columns: the bar, sized to it, drew nothing for the whole run. ``auto`` prints log lines
    there; ``--progress bar`` draws 80 wide."""
    import fcntl
    import select
    import struct
    import termios

    from batchrunner.progress import LogProgress, TqdmProgress, make_progress

    terminal, side = os.openpty()
    with os.fdopen(side, "w") as stderr, os.fdopen(terminal, "rb", buffering=0) as shown:
        monkeypatch.setattr(sys, "stderr", stderr)
        assert isinstance(make_progress("run", "auto"), LogProgress)
        bar = make_progress("run", "bar")
        assert isinstance(bar, TqdmProgress)
        bar.start(100, 0)
        bar.close()
        stderr.flush()
        drawn = b""
        while select.select([shown], [], [], 1.0)[0] and len(drawn) < 100_000:
            drawn += shown.read(4096)
        assert "0/100" in drawn.decode() and "|" in drawn.decode(), drawn
        fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        assert isinstance(make_progress("run", "auto"), TqdmProgress)


# -- the program, as the commands printed name it: by name where the PATH finds it, else its path --


CRON_PATH = "/usr/bin:/bin"  # cron's own PATH, which holds no venv's bin


def _console_script() -> Path:
    """The ``batchrunner`` console script of the suite's environment (installed beside its
    interpreter, as ``pip install -e .`` in a venv puts it)."""
    script = Path(sys.executable).parent / "batchrunner"
    if not script.is_file():
        pytest.skip("no batchrunner console script beside the interpreter (not pip installed)")
    return script


def _shell(line: str, cwd: Path, *, path: str = CRON_PATH) -> subprocess.CompletedProcess[str]:
    """``line`` run by /bin/sh as cron runs a crontab's line, ``env -i PATH=/usr/bin:/bin sh
    -c LINE`` (``path``: another PATH), with only what the suite's own guard needs besides:
    its PYTHONPATH (which holds the checkout under test) and log, the test's price cache, and
    a HOME."""
    env = {"PATH": path, "HOME": str(cwd)}
    for name in ("PYTHONPATH", OUTSIDE_LOG, "BATCHRUNNER_CACHE_DIR"):
        env[name] = os.environ[name]
    return subprocess.run(["/bin/sh", "-c", line], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def _nightly_job(tmp_path: Path, where: Path) -> Path:
    """A job file in ``where`` of 4 rows against the built-in simulator, each cut at its
    max_tokens (so the summary names the command that answers them again)."""
    pd.DataFrame({"id": [f"r{i}" for i in range(4)], "text": ["one"] * 4}).to_csv(
        tmp_path / "in.csv", index=False)
    where.mkdir(exist_ok=True)
    (where / "job.toml").write_text(
        f'name = "nightly"\n[input]\npath = "{tmp_path / "in.csv"}"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Say {text}"\nmax_tokens = 5\n'
        '[endpoint]\nsimulator = true\n[simulator]\nreply_tokens = 10\n'
        f'[output]\ndir = "{tmp_path / "out"}"\n')
    return where / "job.toml"


def _finish_line(stdout: str) -> str:
    """The command of status's "to finish" line."""
    line = next((x for x in stdout.splitlines() if x.startswith("  to finish, ")), None)
    assert line is not None, stdout
    return line.partition(" rows to do: ")[2]


def _cut_command(stdout: str) -> str:
    """The command of a summary's line for the rows cut at max_tokens."""
    line = next((x for x in stdout.splitlines() if "cut at max_tokens" in x), None)
    assert line is not None and ", run: " in line, stdout
    return line.partition(", run: ")[2]


@pytest.mark.parametrize("started", ["script", "module"])
def test_a_job_cron_ran_is_finished_by_the_commands_printed_pasted_where_path_has_no_batchrunner(
    tmp_path: Path, started: str,
) -> None:
    """A crontab runs `cd DIR && /srv/x/.venv/bin/batchrunner run job.toml` under cron's PATH
    (/usr/bin:/bin). In the morning, `batchrunner status` from a shell with the venv active
    named the command that finishes the job as `batchrunner run ...`, which, pasted into the
    crontab or a shell without the venv, is `sh: 1: batchrunner: not found` (exit 127); so
    did the summary's commands. They name the program the run was started by, by its
    absolute path (`python -m batchrunner`'s interpreter with -m), and run as printed."""
    script = _console_script()
    words = [str(script)] if started == "script" else [sys.executable, "-m", "batchrunner"]
    program = " ".join(shell_quote(w) for w in words)
    jobs = tmp_path / "night's jobs"
    job = _nightly_job(tmp_path, jobs)
    ran = _shell(f"cd {shell_quote(str(jobs))} && {program} run job.toml --limit 2", tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "2 ok, 0 failed, 2 not done yet" in ran.stdout, ran.stdout
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["command"]["program"] == words  # how the run named itself
    # status from a shell with the venv active, where `batchrunner` finds the same program.
    shown = _shell(f"batchrunner status {shell_quote(str(tmp_path / 'out'))}", tmp_path,
                   path=f"{script.parent}:{CRON_PATH}")
    assert shown.returncode == 0, shown.stderr
    command = _finish_line(shown.stdout)
    assert command == (f"cd {shell_quote(str(jobs))} && {program} run "
                       f"{shell_quote(str(job))}"), shown.stdout
    # Pasted into the crontab's environment, exactly as printed: it finishes the job.
    done = _shell(command, tmp_path)
    assert done.returncode == 0, (command, done.stderr)
    assert "nightly — 4 rows: 4 ok, 0 failed" in done.stdout, done.stdout
    assert "to finish" not in _shell(f"{program} status out", tmp_path).stdout
    # That run's summary (cron's PATH) names the program so too, for the rows cut, and runs.
    again = _cut_command(done.stdout)
    assert again.startswith(f"{program} run {shell_quote(str(job))} --max-tokens 10 "), again
    answered = _shell(again, tmp_path)
    assert answered.returncode == 0, (again, answered.stderr)
    assert "4 requests sent this run" in answered.stdout, answered.stdout
    # The crontab's line the next night: it asks for the file's max_tokens, less than the
    # command's, and stopped at the change of the job's request settings (exit 2, tonight's
    # new rows unsent), as the summary said nothing of. It says where to raise it.
    said = f"and set max_tokens = 10 in {shell_quote(str(job))} for the job's later runs"
    assert said in done.stdout, done.stdout
    with (tmp_path / "in.csv").open("a") as f:
        f.write("r4,one\n")
    cron = f"cd {shell_quote(str(jobs))} && {program} run job.toml"
    assert _shell(cron, tmp_path).returncode == 2
    job.write_text(job.read_text().replace("max_tokens = 5", "max_tokens = 10"))
    night = _shell(cron, tmp_path)
    assert night.returncode == 0 and "1 request sent this run" in night.stdout, night.stdout


@pytest.mark.parametrize("started", ["script", "module"])
def test_a_run_whose_path_finds_the_program_names_it_batchrunner(
    tmp_path: Path, started: str,
) -> None:
    """With the venv's bin on the PATH (the venv active), `batchrunner` there is the program
    running (its console script, or the one beside the interpreter of `python -m
    batchrunner`): the commands keep the short name, and status run by its path from a
    crontab's PATH names the program by that path, which finds it there."""
    script = _console_script()
    active = f"{script.parent}:{CRON_PATH}"
    start = "batchrunner" if started == "script" else "python -m batchrunner"
    job = _nightly_job(tmp_path, tmp_path)
    ran = _shell(f"{start} run job.toml --limit 2", tmp_path, path=active)
    assert ran.returncode == 0, ran.stderr
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["command"]["program"] == ["batchrunner"]
    shown = _shell(f"{start} status out", tmp_path, path=active)
    assert _finish_line(shown.stdout) == f"batchrunner run {job}", shown.stdout
    # status from cron's PATH, by the console script's path: that path, which works there.
    shown = _shell(f"{script} status out", tmp_path)
    command = _finish_line(shown.stdout)
    assert command == f"{shell_quote(str(script))} run {job}", shown.stdout
    more = _shell(f"{command} --limit 1", tmp_path)
    assert more.returncode == 0 and "4 rows: 3 ok, 0 failed" in more.stdout, more.stderr
    # The summary of a run started with the venv active: the short name.
    done = _shell(f"{start} run job.toml", tmp_path, path=active)
    assert done.returncode == 0 and "4 rows: 4 ok, 0 failed" in done.stdout, done.stderr
    assert _cut_command(done.stdout).startswith(f"batchrunner run {job} "), done.stdout


def test_the_program_named_in_process_by_path_and_by_job_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How a printed command names the program (``progress.program``): `batchrunner` where
    that name on the PATH is the program running, resolved (a link to it too), else its
    absolute path; `cli.main` called from Python (these tests, a program of the user's) is
    not the program started, and keeps the short name whatever the PATH. A job.json's program
    is named as its last run named itself where that is an absolute path still there."""
    monkeypatch.setattr(progress, "_started", None)
    monkeypatch.setenv("PATH", CRON_PATH)
    assert program() == "batchrunner"  # cli.main in-process
    venv = tmp_path / "my venv" / "bin"
    venv.mkdir(parents=True)
    script = venv / "batchrunner"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    progress.started_as(str(script), module=False)
    assert program() == f"'{script}'"  # cron's PATH
    monkeypatch.setenv("PATH", f"{venv}:{CRON_PATH}")
    assert program() == "batchrunner"  # the venv active
    links = tmp_path / "links"
    links.mkdir()
    (links / "batchrunner").symlink_to(script)
    monkeypatch.setenv("PATH", f"{links}:{CRON_PATH}")
    assert program() == "batchrunner"  # ~/bin/batchrunner, a link to it
    other = tmp_path / "other"
    other.mkdir()
    (other / "batchrunner").write_text("#!/bin/sh\n")
    (other / "batchrunner").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}:{venv}:{CRON_PATH}")
    assert program() == f"'{script}'"  # another install found first: not this program
    # python -m batchrunner: its console script is the one beside the interpreter.
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    progress.started_as(str(tmp_path / "batchrunner" / "__main__.py"), module=True)
    assert program_words() == [str(venv / "python"), "-m", "batchrunner"]
    monkeypatch.setenv("PATH", f"{venv}:{CRON_PATH}")
    assert program() == "batchrunner"
    # A job's: as its last run named itself, where that is an absolute path still there.
    def meta(*words: str) -> dict[str, Any]:
        return {"command": {"cwd": str(tmp_path), "options": {}, "program": list(words)}}

    assert program(meta(str(script))) == f"'{script}'"
    assert program(meta(str(venv / "python"), "-m", "batchrunner")) == "batchrunner"  # gone
    assert program(meta("batchrunner")) == "batchrunner"  # its PATH found it: as here
    assert program(meta(str(other / "batchrunner"), "-c", "x")) == "batchrunner"  # by hand
    monkeypatch.setenv("PATH", CRON_PATH)
    assert program(meta("batchrunner")) == f"'{venv / 'python'}' -m batchrunner"
    assert program({"command": "?"}) == program({}) == program()
    # A program's path holding the key is not kept in job.json.
    command = {"options": {}, "program": [f"/opt/{KEY}/bin/batchrunner"]}
    _without_key(command, KEY)
    assert command == {"options": {}}


def test_a_run_whose_input_changed_meanwhile_prints_its_summary_then_the_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run stopped because its input was replaced meanwhile (tonight's export) printed its
    stop's line alone: no rows, cost or requests, where every other run ends with its
    summary. The summary comes first, then the line."""
    from batchrunner import runner

    pipeline = runner._pipeline

    async def replaced_meanwhile(run: object) -> None:
        await pipeline(run)  # type: ignore[arg-type]
        (tmp_path / "in.csv").write_text("id,text\na,tonight's one\n")

    monkeypatch.setattr(runner, "_pipeline", replaced_meanwhile)
    code, out, err = cli(capsys, *job_args(tmp_path))
    assert code == 4, err
    lines = out.splitlines()
    assert lines[0] == "batchrunner: in — 3 rows: 3 ok, 0 failed", out
    assert "  stopped: the input changed while the job ran (the line below)" in lines, out
    assert err.startswith("batchrunner: stopped: input ") and err.count("\n") == 1, err
    assert "changed while the job ran" in err
