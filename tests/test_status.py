"""``batchrunner status``: its figures are the reports' figures, from the same journal."""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchrunner.cli import _overrides, build_parser, main
from batchrunner.config import load_job
from batchrunner.errors import OutputBusy
from batchrunner.io import RunLock
from batchrunner.journal import Journal, outcomes_table, write_segment
from batchrunner.records import RETRYING, Outcome
from batchrunner.report import format_usd
from batchrunner.runner import _command_kept, _without_key, format_summary
from batchrunner.status import STATES, format_status, lock_holder, rerun_command
from tests.test_faults import FaultServer, job_for, make_csv, run
from tests.test_report import cell
from tests.test_report_html import card


def simulated_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int) -> Path:
    """A job of ``rows`` rows (keys r0, r1, ...) run against the built-in simulator."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(
        "id,text\n" + "".join(f"r{i},text {i}\n" for i in range(rows)))
    assert main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
                 "--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output",
                 "out"]) == 0
    return tmp_path / "out"


def status_cost(out: Path) -> tuple[str, str]:
    """The cost and the earlier attempts' cost status shows."""
    line = next(x for x in format_status(out).splitlines() if "cost so far" in x)
    m = re.search(r"cost so far (\S+)(?: \(plus (\S+) for earlier attempts)?", line)
    assert m, line
    return m[1], m[2] or format_usd(0.0)


@pytest.mark.parametrize("costs", [
    [float("inf"), 0.25],  # a cost past what a float holds, as a job's absurd price gives it
    [1e308, 1e308, 0.25],  # costs whose sum is past it
], ids=["infinite", "overflowing"])
def test_status_shows_the_cost_the_report_shows_whatever_the_costs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, costs: list[float]) -> None:
    """status summed the costs one way (math.fsum, the non-finite left out) and the reports
    another (exact sums, a non-finite cost making the figure 0): on such a journal status said
    another cost than the report, or stopped with an OverflowError. Both now sum alike."""
    out = simulated_job(tmp_path, monkeypatch, 4)
    later = time.time() + 1
    write_segment(Journal(out).directory, "seg-29990101T000000-ffffff-w0-000000.parquet",
                  outcomes_table([
                      *(Outcome(key=f"r{i}", status="ok", content="again", cost_usd=c,
                                earlier_cost_usd=c, prompt_tokens=1, completion_tokens=1,
                                total_tokens=2, model="gpt-4o-mini", finished_at=later)
                        for i, c in enumerate(costs)),
                      Outcome(key="r3", status=RETRYING, earlier_cost_usd=0.5,
                              finished_at=later)]))
    shown = status_cost(out)
    assert main(["report", "out"]) == 0
    report = json.loads((out / "cost_report.json").read_text())
    assert shown == (format_usd(report["cost_usd"]),
                     format_usd(report["cost_earlier_attempts_usd"]))
    assert status_cost(out) == shown  # the compacted journal says the same
    tokens = re.search(r"tokens ([\d,]+);", format_status(out))
    assert tokens and int(tokens[1].replace(",", "")) == report["tokens"]["total"]


def test_pace_of_a_run_restarted_within_the_second_leaves_out_the_last_runs_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed (or stopped) and run again within the same second: ``started_at`` is to
    the second, so ``status`` counted the rows the earlier run finished in that second as the
    new run's, saying fewer rows to do (and a faster pace) than there were. Here the first
    20 rows are done (``--limit``) at the second the second run starts; that run, in
    progress, answers 10 more (3 s each, so rows finish over the later half of the run, which
    its pace is of) and hangs on the last 10: 10 to do, not none."""
    from batchrunner.simulator import SimulatorConfig, SimulatorThread
    from tests.test_crash import cli_process, make_csv, run_args

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-status-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    n, hangs = 40, 10
    inp = make_csv(tmp_path / "in.csv", n, {i: " [[sim:hang]]" if i >= n - hangs
                                             else " [[sim:slow]]" for i in range(20, n)})
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=5, slow_ms=3000)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "4")
        assert main([*args, "--limit", "20"]) == 0
        before = Journal(out).read(["status"])
        assert before.num_rows == 20
        with cli_process(tmp_path, args) as (proc, err_path, _):
            deadline = time.monotonic() + 60
            while not (sim.stats()["hangs"] == 4 and "30 of 40 rows" in format_status(out)):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, (sim.stats(), format_status(out))
                time.sleep(0.05)
            last = json.loads((out / "job.json").read_text())["last_run"]
            assert last["finished_at"] is None and last["to_send"] == 20
            # The first run's rows, as if it had finished them in the second this one started.
            second = datetime.fromisoformat(last["started_at"]).timestamp()
            while time.time() < second + 12 and proc.poll() is None:  # a pace to show
                time.sleep(0.1)
            write_segment(Journal(out).directory, "seg-20000101T000000-aaaaaa-w0-000000.parquet",
                          outcomes_table([Outcome(key=k, status="ok", content="x",
                                                  finished_at=second)
                                          for k in before["key"].to_pylist()]))
            status = format_status(out)
            proc.kill()
    assert "30 of 40 rows finished" in status, status
    assert "the 10 rows to do would take" in status, status


def test_status_shows_the_prompt_tokens_read_from_and_written_to_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude's replies count the prompt tokens written to the cache (billed at 1.25 or 2 times
    the input price) beside those read from it: status showed neither, where the reports show
    both. It shows them now, as the report sums them; a job whose replies counted none (the
    simulator's short prompts) has no such line."""
    out = simulated_job(tmp_path, monkeypatch, 3)
    assert "cache" not in format_status(out)
    write_segment(Journal(out).directory, "seg-29990101T000000-ffffff-w0-000000.parquet",
                  outcomes_table([
                      Outcome(key=f"r{i}", status="ok", content="again", cost_usd=0.01,
                              prompt_tokens=3000, completion_tokens=100, total_tokens=3100,
                              cached_tokens=1000, cache_write_tokens=1500 + i,
                              model="claude-sonnet-4-5", finished_at=time.time() + 1)
                      for i in range(2)]))
    shown = [x for x in format_status(out).splitlines() if "cache" in x]
    assert shown == ["  of the prompt tokens, 2,000 read from the cache and 3,001 written to it"]
    assert main(["report", "out"]) == 0
    tokens = json.loads((out / "cost_report.json").read_text())["tokens"]
    assert (tokens["cached"], tokens["cache_write"]) == (2000, 3001)
    assert [x for x in format_status(out).splitlines() if "cache" in x] == shown  # compacted


def test_status_says_the_rows_claude_paused_and_the_command_that_sends_them_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows whose turn Claude paused (finish_reason pause_turn: its server tools ran to their
    limit before the answer) are ok with unfinished content: the run's summary and the report
    warn of them, but status, read the morning after, said nothing. It says how many, and the
    command that sends them again, which does."""
    out = simulated_job(tmp_path, monkeypatch, 3)
    write_segment(Journal(out).directory, "seg-29990101T000000-ffffff-w0-000000.parquet",
                  outcomes_table([Outcome(
                      key=f"r{i}", status="ok", content="Let me search", finish_reason="pause_turn",
                      prompt_tokens=1, completion_tokens=1, total_tokens=2, model="gpt-4o-mini",
                      finished_at=time.time() + 1) for i in (0, 2)]))
    shown = [x for x in format_status(out).splitlines() if "pause_turn" in x]
    assert len(shown) == 1 and shown[0].startswith(
        "  2 rows paused before their answer (finish_reason=pause_turn: Claude's server tools, "
        "such as web search, ran to their limit): their content is unfinished; to send them "
        "again: batchrunner run --input in.csv "), shown
    command = shlex.split(shown[0].partition("again: ")[2])
    assert command[-2:] == ["--rerun-where", "finish_reason == 'pause_turn'"], command
    assert main([*command[1:], "--progress", "none"]) == 0
    assert "pause_turn" not in format_status(out)


def test_status_builds_the_command_once_for_paused_rows_and_a_fix_first_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job with rows Claude paused whose last run stopped for rows failing alike: status
    names the command twice (to send the paused rows again, and to retry the failed ones once
    fixed), and built it twice, reading the job file each time. It builds it once."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\n" + "".join(f"r{i},t {i}\n" for i in range(4)))
    (tmp_path / "job.toml").write_text(
        'name = "paused"\n[input]\npath = "in.csv"\nid_column = "id"\n[request]\n'
        'model = "gpt-4o-mini"\nprompt = "X {text}"\n[endpoint]\nsimulator = true\n'
        '[output]\ndir = "out"\n')
    assert main(["run", "job.toml", "--limit", "2", "--progress", "none"]) == 0
    out = tmp_path / "out"
    later = time.time() + 1
    write_segment(Journal(out).directory, "seg-29990101T000000-ffffff-w0-000000.parquet",
                  outcomes_table([
                      Outcome(key="r0", status="ok", content="Let me search",
                              finish_reason="pause_turn", finished_at=later),
                      *(Outcome(key=f"r{i}", status="failed", error_type="bad_request",
                                error_message="refused", finished_at=later) for i in (2, 3))]))
    meta = json.loads((out / "job.json").read_text())
    meta["simulator"] = False  # no --force to look for (that reads the job file too)
    meta["last_run"].update(stopped="every request failing alike", stop_kind="fix_first")
    (out / "job.json").write_text(json.dumps(meta))
    import batchrunner.status as status_module

    reads: list[object] = []

    def read(*args: object) -> object:
        reads.append(args)
        return load_job(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(status_module, "load_job", read)
    shown = format_status(out).splitlines()
    assert len(reads) == 1, reads
    command = f"batchrunner run {tmp_path / 'job.toml'}"
    assert any(x.endswith(f"to send it again: {command} --rerun-where "
                          "\"finish_reason == 'pause_turn'\"") for x in shown), shown
    assert shown[-1] == ("  to finish, the 2 failed rows to retry: fix what stopped it "
                         f"(above), then: {command} --retry-failed"), shown


def test_status_of_a_job_file_left_with_rows_to_do_names_the_command_that_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The on-call engineer did not write the job: status said "run the job again to resume"
    (or, quoting the run's stop, "run the same command") without the command, which only the
    crontab knew. For a job run from its file, status now names it: after a run that stopped
    with rows to do, and after one that never finished (killed). A job that ran through
    names none; a job from the command line has no file to name (nor the options of the
    crontab's line: its stop says to run that again)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "in.csv").write_text(
        "id,text\n" + "".join(f"r{i},text {i}\n" for i in range(10)))
    job = tmp_path / "jobs" / "night job.toml"
    job.write_text('name = "night"\n[input]\npath = "../in.csv"\nid_column = "id"\n'
                   '[request]\nmodel = "gpt-4o-mini"\nprompt = "X {text}"\n'
                   '[endpoint]\nsimulator = true\n[output]\ndir = "../out"\n')
    command = f"batchrunner run '{job}'"
    assert main(["run", str(job), "--limit", "4", "--progress", "none"]) == 0
    out = tmp_path / "out"
    assert f"  to finish, 6 rows to do: {command}" in format_status(out).splitlines()
    meta_path = out / "job.json"
    meta = json.loads(meta_path.read_text())
    meta["last_run"]["stopped"] = "interrupted by SIGTERM; finished rows are saved"
    meta_path.write_text(json.dumps(meta))
    assert f"  to finish, 6 rows to do: {command}" in format_status(out).splitlines()
    meta["last_run"].update(finished_at=None, stopped=None)  # killed while sending
    meta_path.write_text(json.dumps(meta))
    assert ("did not finish (killed, or the machine stopped): run the job again to resume: "
            f"{command}") in format_status(out)
    assert main(["run", str(job), "--progress", "none"]) == 0
    assert "batchrunner run" not in format_status(out)
    meta = json.loads(meta_path.read_text())
    meta["job_file"] = "command line"
    meta["last_run"].update(finished_at=None)
    meta_path.write_text(json.dumps(meta))
    assert format_status(out).endswith("run the job again to resume")


def test_status_of_a_job_file_run_into_another_directory_names_that_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A job file run with --output (a nightly job writing to out/$(date +%F)): status
    named "batchrunner run JOB" as the command that finishes it, which writes to the job
    file's own directory, where no row is done: every row was sent, and paid for, again,
    and the directory asked about kept its rows to do. The command names the directory. A
    job file whose request settings changed since is said to be refused without --force."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(
        "id,text\n" + "".join(f"r{i},text {i}\n" for i in range(10)))
    job = tmp_path / "job.toml"
    job.write_text('name = "night"\n[input]\npath = "in.csv"\nid_column = "id"\n'
                   '[request]\nmodel = "gpt-4o-mini"\nprompt = "X {text}"\n'
                   '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
    night = tmp_path / "out-2026-12-01"
    assert main(["run", str(job), "--output", str(night), "--limit", "4",
                 "--progress", "none"]) == 0
    command = f"batchrunner run {job} --output {night}"
    assert f"  to finish, 6 rows to do: {command}" in format_status(night).splitlines()
    meta_path = night / "job.json"
    meta = json.loads(meta_path.read_text())
    meta["last_run"].update(finished_at=None, stopped=None)  # killed while sending
    meta_path.write_text(json.dumps(meta))
    assert ("did not finish (killed, or the machine stopped): run the job again to resume: "
            f"{command}") in format_status(night)
    assert "settings changed" not in format_status(night)
    assert not (tmp_path / "out").exists()
    # The model renamed in the job file the next day: that night's run was refused at its
    # start (exit 2), leaving job.json as it was, and status named the command as if it
    # would resume. It says what changed, and what a run needs, which its command gives.
    job.write_text(job.read_text().replace("gpt-4o-mini", "gpt-4.1-mini"))
    assert main(["run", str(job), "--output", str(night), "--progress", "none"]) == 2
    refused = capsys.readouterr().err
    assert "(model: 'gpt-4o-mini' → 'gpt-4.1-mini')" in refused, refused
    changed = ("\n  the job file's request settings changed since the last run (model: "
               "'gpt-4o-mini' → 'gpt-4.1-mini'): a run is refused (exit 2) unless given "
               "--force, which sends the rows left with the new ones (the rows done keep their "
               "answers, made with the old ones); to answer every row with the new ones, use "
               "another --output directory; the commands here give --force")
    assert format_status(night).endswith(f"resume: {command} --limit 4 --force{changed}")
    # Asked from another directory than the run was started in (a crontab's `cd /srv/enrich`,
    # the engineer's shell elsewhere), of a run given relative paths: status said nothing of
    # the change. Its options' paths are read from that directory, as the run read them.
    assert main(["run", str(job), "--output", night.name, "--limit", "4", "--force",
                 "--progress", "none"]) == 0
    job.write_text(job.read_text().replace("gpt-4.1-mini", "gpt-4o"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    shown = format_status(night)
    assert changed.replace("'gpt-4o-mini' → 'gpt-4.1-mini'", "'gpt-4.1-mini' → 'gpt-4o'"
                           ) in shown, shown


def night_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int,
              failing: tuple[int, ...] = ()) -> Path:
    """A nightly job file over ``rows`` rows keyed by id (r0, r1, ...), those ``failing`` refused
    by the built-in simulator (http_400) at every try, run from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\n" + "".join(
        f"r{i},t {i}{' [[sim:400]]' if i in failing else ''}\n" for i in range(rows)))
    job = tmp_path / "job.toml"
    job.write_text('name = "night"\n[input]\npath = "in.csv"\nid_column = "id"\n'
                   '[request]\nmodel = "gpt-4o-mini"\nprompt = "X {text}"\n'
                   '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
    return job


def printed_runs(status: str) -> list[list[str]]:
    """The arguments after ``batchrunner`` of every run command ``status`` prints (each ends
    its line)."""
    return [["run", *shlex.split(line.partition("batchrunner run ")[2])]
            for line in status.splitlines() if "batchrunner run " in line]


def run_plain(job: Path) -> int:
    """The job file run alone, as its crontab's line runs it every night."""
    return main(["run", str(job), "--progress", "none"])


def test_status_says_the_job_files_changed_settings_whatever_is_left_and_its_commands_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt edited in the job file since the last run: status said so only with rows to
    do, and with none (the failed rows to retry, the rows added to the input, every row done)
    said nothing, naming a command (--retry-failed, "running the job again sends the rows that
    are new or changed") that was refused (exit 2, settings changed), as the crontab's was.
    It says what changed and what a run does with --force whatever is left, and every command
    it names is given --force, which it says: each runs."""
    job = night_job(tmp_path, monkeypatch, 6, failing=(5,))
    assert run_plain(job) == 3  # a row failed
    job.write_text(job.read_text().replace('"X {text}"', '"Y {text}"'))
    assert run_plain(job) == 2
    status = format_status(tmp_path / "out")
    runs = printed_runs(status)
    for args in runs:
        assert main([*args, "--progress", "none"]) == 3, status  # not refused: fails again
    changed = ("  the job file's request settings changed since the last run (prompt: "
               "'X {text}' → 'Y {text}'): a run is refused (exit 2) unless given --force, which "
               "sends the rows left with the new ones (the rows done keep their answers, made "
               "with the old ones); to answer every row with the new ones, use another --output "
               "directory; the commands here give --force")
    assert changed in status.splitlines(), status
    assert runs == [["run", str(job), "--retry-failed", "--force"]], status
    assert "settings changed" not in format_status(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["request"]["prompt"] == "Y {text}"


def test_status_of_a_changed_job_file_with_every_row_done_then_rows_added(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row done, then the prompt edited: status said nothing, and the crontab's next
    run was refused (exit 2). It says so, naming no command (none has rows to send), and
    what --force does then. Rows added to the input then: the command it named to send them
    was refused; it is given --force, and sends them."""
    job = night_job(tmp_path, monkeypatch, 4)
    out = tmp_path / "out"
    assert run_plain(job) == 0
    job.write_text(job.read_text().replace('"X {text}"', '"Y {text}"'))
    status = format_status(out)
    assert status.splitlines()[-1] == (
        "  the job file's request settings changed since the last run (prompt: 'X {text}' → "
        "'Y {text}'): a run is refused (exit 2) unless given --force; every row is done: with "
        "--force a run sends only the rows new or changed in the input, with the new ones (the "
        "rows done keep their answers, made with the old ones), and to answer rows again with "
        "the new ones, pass --force with --rerun-where (\"True\" picks every row), or use "
        "another --output directory"), status
    assert printed_runs(status) == []
    assert run_plain(job) == 2  # as it says
    with (tmp_path / "in.csv").open("a") as f:
        f.write("r4,t 4\nr5,t 5\n")
    status = format_status(out)
    runs = printed_runs(status)
    for args in runs:
        assert main([*args, "--progress", "none"]) == 0, status
    assert "settings changed since the last run (prompt: 'X {text}' → 'Y {text}'): a run is " \
           "refused (exit 2) unless given --force, which sends the rows left" in status, status
    assert status.endswith("running the job again sends the rows that are new or changed: "
                           f"batchrunner run {job} --force"), status
    status = format_status(out)
    assert status.startswith("night: 6 of 6 rows finished (6 ok,"), status
    assert "settings changed" not in status and printed_runs(status) == []
    assert Journal(out).read(["key"]).num_rows == 6  # the 2 added sent, none again


def test_status_gives_no_force_that_would_mix_another_endpoints_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The job file's prompt changed and its endpoint too (a real one, the rows done the
    simulator's): --force would mix their answers as well, which status does not choose for
    whoever reads it. It says so, and its command is not given --force (and is refused)."""
    job = night_job(tmp_path, monkeypatch, 4, failing=(3,))
    assert run_plain(job) == 3
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-status-0123456789")
    job.write_text(job.read_text().replace('"X {text}"', '"Y {text}"').replace(
        "simulator = true", 'base_url = "http://127.0.0.1:9/v1"'))
    status = format_status(tmp_path / "out")
    assert ("a run is refused (exit 2) unless given --force, which sends the rows left with the "
            "new ones (the rows done keep their answers, made with the old ones); to answer "
            "every row with the new ones, use another --output directory; the commands here do "
            "not give --force, which would let through too answers of a real endpoint mixed "
            "with the built-in simulator's") in status, status
    runs = printed_runs(status)
    assert runs == [["run", str(job), "--retry-failed"]], status
    capsys.readouterr()
    assert main([*runs[0], "--progress", "none"]) == 2  # as it says
    assert "the request settings changed" in capsys.readouterr().err


def test_status_after_a_one_off_model_names_it_and_the_job_files_own_run_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run given --model once (and --force) over a job file run every night: from then on
    the crontab's line, the job file alone, was refused (exit 2), while status named the
    command with --model (accepted) and, every row done, nothing at all. It names the option,
    what the job file sets, and that a run without it is refused unless --force."""
    job = night_job(tmp_path, monkeypatch, 6)
    out = tmp_path / "out"
    assert main(["run", str(job), "--limit", "2", "--progress", "none"]) == 0
    assert main(["run", str(job), "--model", "gpt-4.1-mini", "--force", "--limit", "2",
                 "--progress", "none"]) == 0
    status = format_status(out)
    given = ("  the last run was given --model gpt-4.1-mini, which the job file sets otherwise "
             "(model: 'gpt-4.1-mini' → 'gpt-4o-mini' without it): without it (the job file "
             "alone, a crontab's line, say), a run is refused (exit 2) unless given --force")
    assert (f"{given}, which sends the rows left with the new ones (the rows done keep their "
            "answers, made with the old ones); to answer every row with the new ones, use "
            "another --output directory; the commands here give it again"
            in status.splitlines()), status
    assert run_plain(job) == 2  # as it says
    runs = printed_runs(status)
    assert runs == [["run", str(job), "--model", "gpt-4.1-mini"]], status
    for args in runs:
        assert main([*args, "--progress", "none"]) == 0
    status = format_status(out)
    assert status.splitlines()[-1].startswith(f"{given}; every row is done: "), status
    assert printed_runs(status) == [] and run_plain(job) == 2
    assert main(["run", str(job), "--force", "--progress", "none"]) == 0  # nothing sent
    assert "given --model" not in format_status(out) and run_plain(job) == 0


def test_status_of_a_job_run_from_options_names_the_command_that_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly job given entirely by options (its crontab's line): status said "run the job
    again to resume" with no command, job.json keeping none of the options. It keeps them now
    (never a key: no option takes one), with the directory the run was started in, and status
    names the command that resumes the job: the same options, which parse back to those
    given, from that directory (its relative paths, and its .env, are that directory's)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(
        "id,text\n" + "".join(f"r{i},text {i}\n" for i in range(10)))
    given = ["--input", "in.csv", "--id-column", "id", "--prompt", "-- say {text}, 'quoted'",
             "--model", "gpt-4o-mini", "--simulator", "--max-tokens", "20", "--temperature",
             "0.5", "--stop", "END", "--stop", "FIN", "--from-column", "user=id", "--rpm",
             "6000", "--stream", "--output", "out night"]
    given[4] = f"--prompt={given.pop(5)}"  # a value that starts with "-"
    assert main(["run", *given, "--limit", "4", "--progress", "none"]) == 0
    out = tmp_path / "out night"
    shown = [x for x in format_status(out).splitlines() if x.startswith("  to finish, ")]
    assert len(shown) == 1 and shown[0].startswith("  to finish, 6 rows to do: batchrunner run ")
    command = shlex.split(shown[0].partition(": ")[2])
    parser = build_parser()
    assert _overrides(parser.parse_args(command[1:])) == _overrides(parser.parse_args(
        ["run", *given]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert f"  to finish, 6 rows to do: cd {tmp_path} && batchrunner run " in format_status(out)
    monkeypatch.chdir(tmp_path)
    assert main([*command[1:], "--progress", "none"]) == 0  # the same job: not refused
    assert format_status(out).startswith("in: 10 of 10 rows finished")
    assert "to finish" not in format_status(out)
    job = load_job(None, {"input": "in.csv", "prompt": "{text}", "model": "m", "output": "out",
                          "base_url": "https://gw.example/sk-pass/v1"})
    kept = _command_kept(job)
    assert kept["options"]["base_url"] == "https://gw.example/sk-pass/v1"
    _without_key(kept, "sk-pass")  # as a run does, once it has the key
    assert "sk-pass" not in json.dumps(kept) and kept["options"]["model"] == "m"


def test_a_short_stand_in_key_holds_back_only_the_options_it_stands_alone_in() -> None:
    """A local server's stand-in key ("x", vLLM's "EMPTY", Ollama's "ollama") was looked for
    inside every option's value, so "x" held back a prompt saying "Explain" and an input
    named ollama_rows.csv lost its resume command. A short key is looked for as the client
    redacts it, a word of its own; a long one anywhere."""
    from batchrunner.runner import _without_key

    def held(key: str, **options: str) -> list[str]:
        command = {"options": dict(options)}
        _without_key(command, key)
        return sorted(k for k, v in command["options"].items()
                      if v == "<not kept: it holds the API key>")

    assert held("x", prompt="Explain {text}", input="tickets_x.csv", model="x") == ["model"]
    assert held("ollama", input="ollama_rows.csv", system="ask ollama nicely") == ["system"]
    long = "sk-proj-abcdefghijklmnop1234"
    assert held(long, base_url=f"https://h.example/{long}v1", model="gpt-4o") == ["base_url"]


def test_status_names_no_command_that_would_not_resume_for_an_option_holding_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local server's stand-in key (Ollama's documented "ollama") inside an option's value
    (the input ollama.csv): job.json holds that option back, as it must, but status named
    the command with it, ``--input '<not kept: it holds the API key>'``, which stops at a
    missing input instead of resuming. Status now names no such command: it says to run the
    job again with the options it was given, and which of them it cannot show, and why."""
    from batchrunner.simulator import SimulatorConfig, SimulatorThread

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "ollama")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    (tmp_path / "ollama.csv").write_text("id,text\n1,a\n2,b\n3,c\n4,d\n")
    with SimulatorThread(SimulatorConfig(latency_ms=1)) as sim:
        assert main(["run", "--input", "ollama.csv", "--id-column", "id", "--model",
                     "gpt-4o-mini", "--prompt", "{text}", "--base-url", sim.base_url,
                     "--output", "out", "--limit", "2", "--progress", "none"]) == 0
    text = format_status(tmp_path / "out")
    kept = json.loads((tmp_path / "out" / "job.json").read_text())["command"]["options"]
    assert kept["input"] == "<not kept: it holds the API key>" and kept["model"] == "gpt-4o-mini"
    shown = [x for x in text.splitlines() if x.startswith("  to finish, ")]
    assert shown == ["  to finish, 2 rows to do: run the job again with the options it was "
                     "given (--input is not kept: its value holds the API key)"], text
    meta_path = tmp_path / "out" / "job.json"
    meta = json.loads(meta_path.read_text())
    meta["last_run"].update(finished_at=None, stopped=None)  # killed while sending
    meta_path.write_text(json.dumps(meta))
    assert ("did not finish (killed, or the machine stopped): run the job again with the "
            "options it was given and --limit 2 (--input is not kept: its value holds the API "
            "key)") in format_status(tmp_path / "out")  # the trial resumed as a trial
    # What it says to add is quoted as a shell reads it back, as a whole command's options are.
    assert rerun_command(meta, tmp_path / "out", extra=(
        "--force", "--rerun-where", "finish_reason == 'length'")) == (
        "run the job again with the options it was given and --force --rerun-where "
        "\"finish_reason == 'length'\" (--input is not kept: its value holds the API key)")


def test_status_after_rows_failing_alike_says_to_retry_them_where_it_names_no_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Rows all failing alike stopped the job, which an option holding the key (a local
    server's stand-in "ollama" in the input's name) leaves with no command to name: status
    said to fix what stopped it, then run the job again with the options it was given, which
    left the failed rows failed (the command it names elsewhere has --retry-failed)."""
    from batchrunner.simulator import SimulatorConfig, SimulatorThread

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "ollama")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    (tmp_path / "ollama.csv").write_text(
        "id,text\n" + "".join(f"{i},row {i} [[sim:400]]\n" for i in range(40)))
    with SimulatorThread(SimulatorConfig(latency_ms=1)) as sim:
        assert main(["run", "--input", "ollama.csv", "--id-column", "id", "--model",
                     "gpt-4o-mini", "--prompt", "{text}", "--base-url", sim.base_url,
                     "--output", "out", "--concurrency", "2", "--progress", "none"]) == 4
    text = format_status(tmp_path / "out")
    finish = [x for x in text.splitlines() if x.startswith("  to finish, ")]
    assert len(finish) == 1 and re.fullmatch(
        r"  to finish, \d+ rows to do and \d+ failed: fix what stopped it \(above\), then: "
        r"run the job again with the options it was given and --retry-failed \(--input is "
        r"not kept: its value holds the API key\)", finish[0]), text
    # report's summary said only "rerun the job to send the rows not done yet".
    capsys.readouterr()
    assert main(["report", "out"]) == 4
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  fix what stopped the last run (batchrunner status out says what, and names the "
        "command), then rerun the job with --retry-failed to send the rows not done yet and the "
        "failed rows again")
    # Rows answered by batchrunner simulate at a URL: the same command resumes the rehearsal
    # there (it stops at an answer that is not the simulator's), with no --force.
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    meta["simulator"] = True
    assert rerun_command(meta, tmp_path / "out", extra=("--retry-failed",)) == (
        "run the job again with the options it was given and --retry-failed (--input is not "
        "kept: its value holds the API key)")
    # A job file's (a crontab's): which file, from which directory, as its command would say.
    meta.update(job_file="/srv/enrich/jobs/tickets.toml", simulator=False)
    meta["command"]["cwd"] = "/srv/enrich"
    assert rerun_command(meta, tmp_path / "out") == (
        "run the job file /srv/enrich/jobs/tickets.toml again (from /srv/enrich) with the "
        "options it was given (--input is not kept: its value holds the API key)")


def test_status_during_an_outage_says_what_is_happening_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in progress waiting out an outage: status said "pace: ... but no row has
    finished for 40 s" above the outage's line, which says why. One line says it now: how
    long the endpoint has not answered, the rows that wait for it, and how long the run
    waits."""
    import os

    import batchrunner.status as status_module
    from batchrunner.io import RunLock

    out = simulated_job(tmp_path, monkeypatch, 4)
    meta_path = out / "job.json"
    meta = json.loads(meta_path.read_text())
    now = started = time.time()  # the run's pid is this process's, started before it
    meta["last_run"].update(
        pid=os.getpid(), started_s=started, finished_at=None, stopped=None, to_send=6,
        started_at=datetime.fromtimestamp(started).strftime("%Y-%m-%dT%H:%M:%SZ"),
        outage={"since_s": now + 3, "by": None, "wait_s": 300})
    meta_path.write_text(json.dumps(meta))
    # Read 40 s on: the rows the run finished before the endpoint went away are 40 s old.
    monkeypatch.setattr(status_module.time, "time", lambda: now + 40)
    with RunLock(out):
        shown = format_status(out).splitlines()
    assert shown[-2].startswith("  a run is in progress (pid "), shown
    assert shown[-1] == ("  the endpoint has not answered for 37 s (no connection to it): the 6 "
                         "rows to do wait for it, up to 5 min, then the run stops"), shown


def test_status_shows_the_search_billed_apart_from_tokens_as_the_report_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reports show what search billed apart from tokens cost ("of which search"); status
    showed the cost alone, where a Grok job's search was most of it. It shows that part now,
    as the report computes it: Grok's sources at search_unit, and a request asking for search
    billed per request at search_request; a job with no search says nothing of it."""
    (tmp_path / "plain").mkdir()
    assert "search" not in format_status(simulated_job(tmp_path / "plain", monkeypatch, 2))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(
        "id,text\na,kettle [[sim:citations]]\nb,tent [[sim:citations]]\nc,lamp\n")
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\nid_column = "id"\n[request]\nmodel = "grok-4"\n'
        'prompt = "Describe {text}"\nmax_tokens = 50\n[endpoint]\nsimulator = true\n'
        '[output]\ndir = "out"\n'
        '[prices."grok-4"]\ninput = 3.0\noutput = 15.0\nsearch_unit = 0.025\n'
        '[prices."gpt-4o-search-preview"]\ninput = 2.5\noutput = 10.0\n'
        "search_request = 0.0275\n")
    assert main(["run", "job.toml", "--progress", "none"]) == 0
    out = tmp_path / "out"

    def shown() -> str:
        line = next(x for x in format_status(out).splitlines() if "cost so far" in x)
        m = re.search(r"cost so far \S+ \(of which search (\S+)\)", line)
        assert m, line
        return m[1]

    report = json.loads((out / "cost_report.json").read_text())
    assert report["search_units"]["total"] == 4
    assert shown() == format_usd(report["search_cost_usd"]) == format_usd(4 * 0.025)
    # Row c answered again by a search model, its request billed per request.
    write_segment(Journal(out).directory, "seg-29990101T000000-ffffff-w0-000000.parquet",
                  outcomes_table([Outcome(
                      key="c", status="ok", content="again", prompt_tokens=10,
                      completion_tokens=10, total_tokens=20, search_requests=1,
                      cost_usd=round(10 * 2.5e-6 + 10 * 10e-6 + 0.0275, 12),
                      model="gpt-4o-search-preview", finished_at=time.time() + 1)]))
    during = shown()
    assert main(["report", "out"]) == 0
    report = json.loads((out / "cost_report.json").read_text())
    assert during == format_usd(report["search_cost_usd"]) == format_usd(4 * 0.025 + 0.0275)
    assert shown() == during  # compacted


def test_search_with_no_price_is_said_to_have_none_not_a_cost_of_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Grok job whose rows' live search has no search_unit: status said "(of which search
    $0.0000)" and the reports' totals and model table $0.0000 for search whose cost is unknown;
    they say it has no price now. A job none of whose rows has a cost (every row searched, as
    the seed's search_parameters ask) said "cost so far $0.0000": its cost is unknown."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(
        "id,text\na,kettle [[sim:citations]]\nb,tent [[sim:citations]]\nc,lamp\n")
    job = ('[input]\npath = "in.csv"\nid_column = "id"\n[request]\nmodel = "grok-4"\n'
           'prompt = "Describe {text}"\nmax_tokens = 50\n[endpoint]\nsimulator = true\n')
    (tmp_path / "job.toml").write_text(job + '[output]\ndir = "out"\n')
    assert main(["run", "job.toml", "--progress", "none"]) == 0
    out = tmp_path / "out"
    line = next(x for x in format_status(out).splitlines() if "cost so far" in x)
    assert "of which search" not in line, line
    assert re.search(r"cost so far \$[0-9.]+ \(search has no price\) \(plus 2 rows without a "
                     r"cost: search with no price when answered \(search_unit in \[prices\]\)\)",
                     line), line
    md = (out / "cost_report.md").read_text()
    assert re.search(r"\| +of which search +\| no price \(2 rows\) +\|", md), md
    assert re.search(r"\| grok-4 \|.*\| no price \(2 rows\) \|", md), md
    assert "<td class=n>no price (2 rows)</td>" in (out / "report.html").read_text()
    (tmp_path / "all.toml").write_text(
        job + '[request.extra]\nsearch_parameters = { mode = "auto" }\n[output]\ndir = "all"\n')
    assert main(["run", "all.toml", "--progress", "none"]) == 0
    line = next(x for x in format_status(tmp_path / "all").splitlines() if "cost so far" in x)
    assert line.endswith("cost so far unknown: 3 rows without a cost (search with no price when "
                         "answered (search_unit in [prices]))"), line


def test_a_model_with_no_price_reads_unknown_in_status_and_both_reports_never_zero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway's model no price knows (ai-nebula's deepseek-v3-1-250821), each row tried
    once: the summary and status said the cost was unknown, but cost_report.md's totals said
    ``$0.0000 (incomplete, see warnings)``, report.html ``$0.0000 + unknown``, and the JSON
    counted the 3 rows as having an earlier try billed at a cost not known (there was none).
    All say unknown now, and so does the JSON: its cost_usd, which was the known part, 0.0 (a
    free job, to a script), is null, the known part in cost_known_usd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\na,kettle\nb,tent\nc,lamp\n")
    assert main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "{text}",
                 "--model", "deepseek-v3-1-250821", "--simulator", "--progress", "none",
                 "--output", "out"]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "cost_report.json").read_text())
    assert report["cost_usd"] is None and report["rows"]["cost_unknown"] == 3
    assert report["cost_known_usd"] == 0.0 and report["cost_complete"] is False
    entry = report["by_model"]["deepseek-v3-1-250821"]
    assert (entry["cost_usd"], entry["unpriced_rows"], entry["earlier_unpriced_rows"]) == (
        None, 3, 0)
    md = (out / "cost_report.md").read_text()
    assert cell(md, "Cost (USD)") == "unknown: 3 rows without a cost (see warnings)"
    assert re.search(r"\| deepseek-v3-1-250821 \|.*\| unknown \(3 rows\) \|", md), md
    assert card((out / "report.html").read_text(), "Cost (USD)")[0] == "unknown"
    line = next(x for x in format_status(out).splitlines() if "cost so far" in x)
    assert line.endswith("cost so far unknown: 3 rows without a cost (no price known, or no "
                         "usage reported)"), line


@pytest.mark.anyio
async def test_status_of_rows_without_a_cost_and_tries_with_no_usage_says_unknown(
        tmp_path: Path) -> None:
    """A gateway that streams content alone, no usage and no finish_reason, then [DONE]:
    every row ok with no cost, each try estimated. status said "cost so far at least unknown:
    3 rows without a cost ..., plus tries of 3 rows ...". It says it as the run's summary does:
    unknown, plus those tries; "at least" only before a known part."""
    inp = make_csv(tmp_path / "in.csv", ["kettle", "tent", "lamp"])
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": "Echo"}, "finish_reason": None}]}
    stream = (f"data: {json.dumps(chunk)}\n\n" * 2 + "data: [DONE]\n\n").encode()

    async def content_only(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(stream)
        await response.write_eof()
        return response

    async with FaultServer(content_only) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=True))
    assert (s.ok, s.cost_unknown, s.unreported_rows) == (3, 3, 3)
    estimate = format_usd(s.unreported_usd)
    tries = ("plus tries of 3 rows that may have been billed with no usage reported, estimated "
             f"at {estimate}")
    assert f"cost: unknown: 3 rows without a cost (no usage reported by gpt-4o-mini), {tries}" in (
        format_summary(s))
    line = next(x for x in format_status(tmp_path / "out").splitlines() if "cost so far" in x)
    assert line.endswith("cost so far unknown: 3 rows without a cost (no price known, or no "
                         f"usage reported), {tries}"), line
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert cell(md, "Cost (USD)").startswith("unknown: 3 rows without a cost, plus tries of 3 rows")


def test_a_killed_runs_pid_taken_by_another_process_is_not_the_run_in_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed while it waited out an outage left its pid and the outage in job.json.
    While the next run starts (the lock taken, job.json not written yet), status took any
    live process with that pid for the killed run: "a run is in progress", with the old
    outage and the old run's start. A process that started after the run did is not it."""
    import os

    from batchrunner.io import RunLock

    out = simulated_job(tmp_path, monkeypatch, 2)
    meta_path = out / "job.json"
    meta = json.loads(meta_path.read_text())
    started = time.time() - 3600  # an hour ago, before this process started
    meta["last_run"].update(
        pid=os.getpid(), started_s=started, finished_at=None, stopped=None,
        started_at=datetime.fromtimestamp(started).strftime("%Y-%m-%dT%H:%M:%SZ"),
        outage={"since_s": started + 60, "by": None, "wait_s": 300})
    meta_path.write_text(json.dumps(meta))
    with RunLock(out):  # the next run, starting
        shown = format_status(out)
        assert "in use by another batchrunner process (a run starting, or a report)" in shown
        assert "a run is in progress" not in shown and "has not answered" not in shown
        # The run itself, started before its process was looked at: in progress.
        meta["last_run"].update(started_s=time.time())
        meta_path.write_text(json.dumps(meta))
        shown = format_status(out)
        assert f"a run is in progress (pid {os.getpid()}, " in shown
        assert "the endpoint has not answered for " in shown


def test_status_says_a_run_is_writing_its_results_once_its_requests_are_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its requests done, a run compacts the journal and writes the results and reports (a 2
    million row job: 8 s; over a journal of many segments, minutes). Meanwhile status said "in
    use by another batchrunner process (a run starting, or a report)", as a monitoring script
    polled it at the end of every run."""
    from batchrunner import runner

    out = simulated_job(tmp_path, monkeypatch, 3)
    shown: list[str] = []
    rebuild = runner.rebuild_outputs

    refused: list[str] = []

    def rebuild_outputs(*args: Any, **kwargs: Any) -> Any:
        shown.append(format_status(out))
        # Another run, or `report`, started meanwhile is refused by the lock, naming the run
        # that holds it (it named none).
        try:
            RunLock(out, holder=lambda: lock_holder(out)).acquire()
        except OutputBusy as e:
            refused.append(str(e))
        return rebuild(*args, **kwargs)

    monkeypatch.setattr(runner, "rebuild_outputs", rebuild_outputs)
    assert main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
                 "--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output",
                 "out", "--rerun-where", "True"]) == 0
    (during,) = shown
    assert (f"  a run is writing its results and reports (pid {os.getpid()}, started "
            in during), during
    (busy,) = refused
    assert busy.startswith(f"another batchrunner run is using {out} (pid {os.getpid()}, "
                           "started 20"), busy
    assert ", writing its results and reports); let it finish" in busy, busy
    assert during.splitlines()[-1].endswith(": it sends no more requests"), during
    assert "a run starting" not in during
    assert "writing its results" not in format_status(out)  # done


def inputs_read(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The inputs status reads through (``io.fingerprint_of``) from now on, as it reads them."""
    import batchrunner.io

    read: list[Path] = []
    fingerprint_of = batchrunner.io.fingerprint_of

    def counted(path: Path, kind: str, files: Any) -> str:
        read.append(path)
        return fingerprint_of(path, kind, files)

    monkeypatch.setattr(batchrunner.io, "fingerprint_of", counted)
    return read


def input_lines(out: Path) -> list[str]:
    """The lines status says of the job's input (none while it is the one the run read)."""
    return [x for x in format_status(out).splitlines() if x.startswith("  input ")]


def touch_later(path: Path) -> None:
    """``path`` modified a second later than it was, its bytes the same (``touch``)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_status_says_an_id_keyed_input_changed_since_the_last_run_and_what_a_run_sends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly job's input replaced by tonight's export (a row added): status read job.json
    and the journal alone, and said the job was done, 0 rows to do, while the next run sends
    the new row. It says the input changed and names the command, which does send it; it does
    not count the rows (that reads the whole input). The input looked at by its files' stamp:
    unchanged, not read at all; touched, or copied back with the same bytes, read once and no
    alarm raised."""

    out = simulated_job(tmp_path, monkeypatch, 3)
    read = inputs_read(monkeypatch)
    assert input_lines(out) == [] and read == []  # unchanged: not read
    inp = tmp_path / "in.csv"
    touch_later(inp)
    assert input_lines(out) == [] and len(read) == 1  # the same bytes: no alarm
    (tmp_path / "copy.csv").write_bytes(inp.read_bytes())
    (tmp_path / "copy.csv").replace(inp)  # another inode, the same bytes
    assert input_lines(out) == [] and len(read) == 2
    with inp.open("a") as f:
        f.write("r3,text 3\n")
    shown = format_status(out)
    assert shown.splitlines()[0].endswith(  # its rows, not the input's now
        ": 3 of 3 rows finished (3 ok, 0 failed, 0 to do) in the input as the last run read "
        "it, which has changed since"), shown
    command = ("batchrunner run --input in.csv --id-column id --model gpt-4o-mini --prompt "
               "'X {text}' --simulator --output out")
    assert input_lines(out) == [
        f"  input {inp} changed since the last run read it: running the job again sends the "
        f"rows that are new or changed: {command}"]
    assert len(read) == 2  # another size: not read
    sent = Journal(out).read(["status"]).num_rows
    assert main([*shlex.split(command)[1:], "--progress", "none"]) == 0
    assert Journal(out).read(["status"]).num_rows == sent + 1  # the new row, sent
    assert "4 of 4 rows finished" in format_status(out) and input_lines(out) == []
    # A row written into the input as the run read it is read, and sent: the run counted the
    # rows it would send before (3 of them, as job.json says here), and stopped for the input
    # changed. Its rows done are not more than the rows it read ("4 of 3").
    meta = json.loads((out / "job.json").read_text())
    (out / "job.json").write_text(json.dumps({**meta, "total_rows": 3}))
    with inp.open("a") as f:
        f.write("r4,text 4\n")
    assert format_status(out).splitlines()[0].endswith(
        ": 4 of 4 rows finished (4 ok, 0 failed, 0 to do) in the input as the last run read it, "
        "which has changed since")


def test_status_says_what_a_run_says_of_a_position_keyed_input_changed_or_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Rows keyed by position, a row inserted at the top of the input: status said the job
    was done, while the next run is refused until --force (exit 2). It says so, as the run
    does: another --output with an id column if a row was inserted or removed, else the
    command with --force. An input removed: status says it is gone and what to do."""
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("text\na\nb\nc\n")
    args = ["run", "--input", "in.csv", "--prompt", "X {text}", "--model", "gpt-4o-mini",
            "--simulator", "--output", "out"]
    assert main([*args, "--progress", "none"]) == 0
    out = tmp_path / "out"
    assert input_lines(out) == []
    inp.write_text("text\nz\na\nb\nc\n")
    assert input_lines(out) == [
        f"  input {inp} changed since the last run read it, and rows are keyed by position: "
        "running the job again is refused (exit 2) unless given --force — if a row was "
        "inserted or removed, every row after it would be sent again: use another --output "
        "directory with an id column (--id-column); if rows were only added at its end or "
        "changed in place, --force sends them (the rows done keep their positions): "
        "batchrunner run --input in.csv --model gpt-4o-mini --prompt 'X {text}' --simulator "
        "--output out --force"]
    capsys.readouterr()
    assert main([*args, "--progress", "none"]) == 2  # as status says
    assert "rows are keyed by position" in capsys.readouterr().err
    inp.unlink()
    assert input_lines(out) == [
        f"  input {inp} is gone since the last run read it: a run cannot read it — put it "
        "back at that path, or run the job again with --input naming where it is now"]


def test_status_of_a_position_keyed_trial_whose_input_changed_names_no_command_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A --limit trial of rows keyed by position, then a row inserted at the top of the input:
    status said "to finish, 2 rows to do" with the command a run refuses (exit 2), then that
    the input changed. It names only the --force command, with when to use another --output
    instead, and its counts are of the rows the last run read."""
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("text\na\nb\nc\nd\n")
    args = ["run", "--input", "in.csv", "--prompt", "X {text}", "--model", "gpt-4o-mini",
            "--simulator", "--output", "out", "--progress", "none"]
    assert main([*args, "--limit", "2"]) == 0
    out = tmp_path / "out"
    assert "  to finish, 2 rows to do: batchrunner run " in format_status(out)
    inp.write_text("text\nz\na\nb\nc\nd\n")
    shown = format_status(out)
    assert shown.splitlines()[0] == (
        "in: 2 of 4 rows finished (2 ok, 0 failed, 2 to do) in the input as the last run read "
        "it, which has changed since"), shown
    assert "to finish" not in shown, shown
    assert [x.split(" --force —")[0] for x in input_lines(out)] == [
        f"  input {inp} changed since the last run read it, and rows are keyed by position: "
        "running the job again is refused (exit 2) unless given"]
    capsys.readouterr()
    assert main(args) == 2  # as status says
    assert "rows are keyed by position" in capsys.readouterr().err


def test_status_of_an_older_job_json_without_the_inputs_stamp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """job.json written before it recorded the input's stamp: status does not fail, and reads
    the input through only where a file of it was modified after the last run started (its
    stamp then unknown): the same bytes say nothing, others that it changed."""

    out = simulated_job(tmp_path, monkeypatch, 3)
    meta_path = out / "job.json"
    meta = json.loads(meta_path.read_text())
    assert meta["input_kind"] == "csv" and len(meta["input_stamp"]) == 1
    for key in ("input_stamp", "input_kind"):
        del meta[key]
    meta_path.write_text(json.dumps(meta))
    inp = tmp_path / "in.csv"
    os.utime(inp, ns=(0, int((meta["last_run"]["started_s"] - 60) * 1e9)))  # before it
    read = inputs_read(monkeypatch)
    assert input_lines(out) == [] and read == []
    os.utime(inp)  # now: after the run started, the same bytes
    assert input_lines(out) == [] and len(read) == 1
    with inp.open("a") as f:
        f.write("r3,text 3\n")
    assert [x.split(": ")[0] for x in input_lines(out)] == [
        f"  input {inp} changed since the last run read it"]


def test_status_beside_a_run_whose_input_changes_says_the_run_will_not_write_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input rewritten while a run is in progress: the run stops at its end without
    writing the results (runner's _input_moved), which status beside it did not foresee. It
    says so, and what to do then; once the run has stopped, its stop says it (once)."""
    from batchrunner.simulator import SimulatorConfig, SimulatorThread
    from tests.test_crash import cli_process, make_csv, run_args

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-status-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    n = 4
    inp = make_csv(tmp_path / "in.csv", n, dict.fromkeys(range(n), " [[sim:slow]]"))
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=5, slow_ms=4000)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", str(n))
        with cli_process(tmp_path, args) as (proc, err_path, _):
            deadline = time.monotonic() + 60
            while "a run is in progress" not in (shown := format_status(out) if (
                    out / "job.json").exists() else ""):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, shown
                time.sleep(0.05)
            assert input_lines(out) == []
            with inp.open("a") as f:
                f.write("r9999,a row added\n")
            during = input_lines(out)
            assert proc.wait(timeout=60) == 4, err_path.read_text()  # stopped
    assert [x.split(": batchrunner run ")[0] for x in during] == [
        f"  input {inp} changed since the run in progress read it: the run stops at its end "
        "without writing the results; then running the job again sends the rows that are new "
        "or changed, and writes them"], during
    assert during[0].endswith(" --output " + str(out)), during
    last = json.loads((out / "job.json").read_text())["last_run"]
    assert last["stop_kind"] == "input_changed"
    # Once it has stopped, its stop says it, and status said the job was done: "4 of 4 rows
    # finished (..., 0 to do)", with no command, the row added not counted. The counts are
    # the rows it read, and the command sends the rest and writes the results.
    shown = format_status(out)
    assert "changed while the job ran" in shown, shown
    # The row added is read, and sent, when it is written before the run reads the file's
    # end: then 5 of 5 (it said "5 of 4"), else 4 of 4.
    read = re.search(r": (\d+) of (\d+) rows finished \((\d+) ok, 0 failed, 0 to do\) in the "
                     r"input as the last run read it, which has changed since$",
                     shown.splitlines()[0])
    assert read is not None and len(set(read.groups())) == 1, shown
    assert int(read[1]) in (n, n + 1), shown
    after = input_lines(out)
    assert [x.split(": batchrunner run ")[0] for x in after] == [
        f"  input {inp} changed since the last run read it: running the job again sends the "
        "rows that are new or changed, and writes the results"], after
    assert after[0].endswith(" --output " + str(out)), after


KILLED_AFTER_5 = ("import os, signal, sys\n"
                  "from batchrunner import client\n"
                  "complete, sent = client.ChatClient.complete, []\n"
                  "async def killed(self, *args, **kwargs):\n"
                  "    sent.append(1)\n"
                  "    if len(sent) > 5:\n"
                  "        os.kill(os.getpid(), signal.SIGKILL)\n"
                  "    return await complete(self, *args, **kwargs)\n"
                  "client.ChatClient.complete = killed\n"
                  "from batchrunner.cli import main\n"
                  "sys.exit(main(sys.argv[1:]))\n")


def test_status_after_a_run_killed_mid_way_says_the_results_there_are_an_earlier_runs(
        tmp_path: Path) -> None:
    """Last night's run wrote results for 10 rows; tonight's, with 10 more, was killed (a
    SIGKILL, the OOM killer) after 5 requests. status said it did not finish and how to
    resume, but not that results.parquet, looking current, was last night's: read in the
    morning as tonight's. It says so now, with the commands that write them."""
    import subprocess
    import sys

    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"r{i},text {i}\n" for i in range(10)))
    args = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "X {text}",
            "--model", "gpt-4o-mini", "--simulator", "--concurrency", "1", "--progress", "none",
            "--output", str(tmp_path / "out")]
    assert main(args) == 0
    assert not any("from before it" in line for line in format_status(tmp_path / "out")
                   .splitlines())
    written = (tmp_path / "out" / "cost_report.json").stat().st_mtime
    time.sleep(max(0.0, written + 1.1 - time.time()))  # the next run starts a second later
    inp.write_text("id,text\n" + "".join(f"r{i},text {i}\n" for i in range(20)))
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_5, *args], cwd=tmp_path,
                          timeout=120, capture_output=True)
    assert proc.returncode == -9, proc.stderr
    lines = format_status(tmp_path / "out").splitlines()
    at = next(i for i, line in enumerate(lines) if "did not finish (killed" in line)
    shown = datetime.fromtimestamp(written, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert lines[at + 1] == (
        f"  the results and reports there are from before it ({shown}), without the rows it "
        "finished: the command above writes them, or batchrunner report "
        f"{shlex.quote(str(tmp_path / 'out'))} now"), lines
    assert main(["report", str(tmp_path / "out")]) == 4  # rows left: written, not done
    assert not any("from before it" in line for line in format_status(tmp_path / "out")
                   .splitlines())


def test_status_during_a_429s_long_retry_after_says_new_requests_are_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway's 429 asked for an hour: the run's log said "new requests held 3600 s more by
    a 429's retry-after", and status only "no row has finished for 17 s", as if it were stuck.
    It says what the run waits for now, and for how long; nothing once the pause is over."""
    from batchrunner.simulator import SimulatorConfig, SimulatorThread
    from tests.test_crash import cli_process, make_csv, run_args

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-status-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    inp = make_csv(tmp_path / "in.csv", 6)
    out = tmp_path / "out"
    hidden = SimulatorConfig(rpm=2, limit_headers=False, limit_retry_after_s=3600)
    with (SimulatorThread(hidden) as sim,
          cli_process(tmp_path, run_args(inp, sim.base_url, out, "--concurrency", "1")) as (
              proc, err_path, _)):
        deadline = time.monotonic() + 60
        while "paused" not in json.loads((out / "job.json").read_text()
                                         if (out / "job.json").exists() else "{}"
                                         ).get("last_run", {}):
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, sim.stats()
            time.sleep(0.05)
        status = format_status(out).splitlines()
        proc.kill()
    held = [line for line in status if line.startswith("  new requests held ")]
    assert len(held) == 1, status
    said = re.fullmatch(r"  new requests held (\d+) (s|min) more by a 429's retry-after, as "
                        r"the server asked: the requests in flight go on", held[0])
    assert said, held  # the hour asked, capped (120 s, jittered): "2 min" when whole
    assert 60 < int(said[1]) * (60 if said[2] == "min" else 1) <= 150, held
    meta = json.loads((out / "job.json").read_text())
    meta["last_run"]["paused"]["until_s"] = time.time() - 1  # over
    (out / "job.json").write_text(json.dumps(meta))
    assert not any("new requests held" in line for line in format_status(out).splitlines())


def test_status_of_the_folder_holding_the_runs_names_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status out`, where out/ holds the runs' directories (out/try, out/nightly): "out is
    not a batchrunner output directory (no job.json)", with no word of the ones inside."""
    from batchrunner.cli import main

    for name in ("try", "nightly"):
        (tmp_path / "out" / name).mkdir(parents=True)
        (tmp_path / "out" / name / "job.json").write_text('{"name": "x"}')
    (tmp_path / "out" / "notes").mkdir()
    assert main(["status", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(
        f"{tmp_path / 'out'} is not a batchrunner output directory (no job.json); it holds the "
        f"output directories {tmp_path / 'out' / 'nightly'}, {tmp_path / 'out' / 'try'}: give "
        "one of them"), err


def status_json_of(capsys: pytest.CaptureFixture[str], out: Path) -> dict[str, Any]:
    """``batchrunner status OUT --json``: one JSON object on stdout, nothing on stderr."""
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    data: dict[str, Any] = json.loads(printed.out)
    assert data["state"] in STATES
    return data


def test_status_json_gives_the_reports_figures_and_where_the_job_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A nightly job's monitor read status's text with regular expressions, which broke at
    each rewording: ``status --json`` gives the same figures as one object, its rows, failures
    by type, tokens and cost the report's, and where the job is: run through, stopped (with
    the stop's kind), killed before its end was recorded, in use, or its input changed."""
    monkeypatch.chdir(tmp_path)
    texts = [f"text {i}" for i in range(6)] + ["bad [[sim:400]]", "gone [[sim:404]]"]
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"r{i},{t}\n" for i, t in enumerate(texts)))
    args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
            "--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output", "out"]
    assert main(args) == 3
    out = tmp_path / "out"
    data = status_json_of(capsys, out)
    report = json.loads((out / "cost_report.json").read_text())
    meta = json.loads((out / "job.json").read_text())
    assert data["status_version"] == 1 and data["name"] == "in"
    assert data["output_dir"] == str(out.resolve()) and data["state"] == "finished"
    assert data["results_written"] is True
    assert data["rows"] == {"total": 8, "finished": 8, "ok": 6, "failed": 2, "to_do": 0,
                            "not_in_input": 0}
    assert report["rows"]["by_status"] == {"ok": 6, "failed": 2}
    assert data["failed_by_type"] == {"http_400": 1, "http_404": 1}
    assert data["tokens"] == report["tokens"]["total"] > 0
    assert data["cost_usd"] == data["cost_known_usd"] == pytest.approx(report["cost_usd"])
    assert data["cost_unknown_rows"] == 0 and data["cost_earlier_attempts_usd"] == 0
    assert data["spent_usd"] == data["cost_usd"] and data["max_cost_usd"] is None
    assert data["input"] == {"path": str(inp), "since_last_run": None}
    last = meta["last_run"]
    assert data["last_run"] == {"run_id": last["run_id"], "pid": last["pid"],
                                "started_at": last["started_at"],
                                "finished_at": last["finished_at"], "stopped": None,
                                "stop_kind": None, "sent": 8, "limit": None,
                                "retry_failed": False}

    with RunLock(out):  # a report, or a run starting: in use, by a process that says nothing
        # (the last run's process is this one, alive: as it ended, letting go of it)
        assert status_json_of(capsys, out)["state"] == "finished"
        gone = dict(meta, last_run=dict(last, pid=(1 << 22) + 1))  # past Linux's pid_max
        (out / "job.json").write_text(json.dumps(gone))
        assert status_json_of(capsys, out)["state"] == "busy"
        (out / "job.json").write_text(json.dumps(meta))

    # Killed as it wrote its results: ran to its end, the results not written (as the text
    # says), until `report` writes them.
    meta["last_run"].update(results_written=False, sent=float("nan"))  # and a hand's NaN
    (out / "job.json").write_text(json.dumps(meta))
    data = status_json_of(capsys, out)
    assert (data["state"], data["results_written"]) == ("finished", False)
    assert data["last_run"]["sent"] is None  # not NaN, which no strict JSON holds
    assert "the results and reports were not written" in format_status(out)
    time.sleep(max(0.0, datetime.fromisoformat(last["finished_at"]).timestamp() + 1.1
                   - time.time()))  # rebuilt a second after the run's end, as it reads it
    assert main(["report", "out"]) == 3  # rows failed
    assert status_json_of(capsys, out)["results_written"] is True
    meta = json.loads((out / "job.json").read_text())

    inp.write_text(inp.read_text() + "r8,text 8\n")  # tonight's export
    data = status_json_of(capsys, out)
    assert data["input"]["since_last_run"] == "changed" and data["state"] == "finished"

    meta["last_run"].pop("finished_at")  # killed before its end was recorded
    (out / "job.json").write_text(json.dumps(meta))
    data = status_json_of(capsys, out)
    assert data["state"] == "did_not_finish" and data["last_run"]["finished_at"] is None
    assert data["results_written"] is False

    # A budget stop: its kind, which says what to do first (raise the budget).
    assert main([*args, "--output", "out2", "--max-cost", "0.0000001"]) == 4
    data = status_json_of(capsys, tmp_path / "out2")
    assert data["state"] == "stopped" and data["last_run"]["stop_kind"] == "budget"
    assert "budget" in data["last_run"]["stopped"] and data["rows"]["to_do"] > 0
    assert data["max_cost_usd"] == 0.0000001


def test_status_names_a_failure_with_no_error_type_as_the_reports_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A failed row whose record has no error type (a journal another tool wrote) was counted
    under "None" by status, text and JSON, where the reports say "(none)": a monitor keying
    on the reports' names found a type they never give."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\nr0,text\nr1,bad [[sim:400]]\n")
    assert main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
                 "--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output",
                 "out"]) == 3
    out = tmp_path / "out"
    write_segment(Journal(out).directory, "seg-29990101T000000-ffffff-w0-000000.parquet",
                  outcomes_table([Outcome(key="r1", status="failed", error_message="lost",
                                          finished_at=time.time() + 1)]))
    assert "  failed (none): 1" in format_status(out).splitlines()
    assert status_json_of(capsys, out)["failed_by_type"] == {"(none)": 1}
    assert main(["report", "out"]) == 3
    report = json.loads((out / "cost_report.json").read_text())
    assert list(report["by_error_type"]) == ["(none)"]


def test_status_json_tells_a_refused_key_and_an_endpoint_out_of_reach_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A stop for a key the endpoint refused, and one for an endpoint out of reach, had no
    ``stop_kind`` (null, as a Ctrl-C's): a script watching the job could not tell a key to fix
    from a server to wait for."""
    import socket

    from batchrunner.simulator import SimulatorConfig, SimulatorThread

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\nr0,a\nr1,b\n")
    args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
            "--model", "gpt-4o-mini", "--progress", "none", "--max-attempts", "2"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-1111111111111111")
    with SimulatorThread(SimulatorConfig(api_key="sk-right-0000000000000000")) as sim:
        assert main([*args, "--base-url", sim.base_url, "--output", "refused"]) == 4
    data = status_json_of(capsys, tmp_path / "refused")
    assert (data["state"], data["last_run"]["stop_kind"]) == ("stopped", "key_refused")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert main([*args, "--base-url", f"http://127.0.0.1:{port}/v1", "--output", "away"]) == 4
    data = status_json_of(capsys, tmp_path / "away")
    assert (data["state"], data["last_run"]["stop_kind"]) == ("stopped", "unreachable")


def test_status_json_of_a_run_in_progress_and_of_a_job_not_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A run in progress (its pid in job.json, alive, the directory locked) reads "running";
    a job.json no run has started from (a run refused at its start) "not_run"."""
    out = simulated_job(tmp_path, monkeypatch, 3)
    meta = json.loads((out / "job.json").read_text())
    meta["last_run"].update(pid=os.getpid(), started_s=time.time(),  # after this process
                            started_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    meta["last_run"].pop("finished_at")
    (out / "job.json").write_text(json.dumps(meta))
    with RunLock(out):
        data = status_json_of(capsys, out)
        assert data["state"] == "running" and data["last_run"]["pid"] == os.getpid()
        assert data["input"]["since_last_run"] is None
        with (tmp_path / "in.csv").open("a") as f:
            f.write("r3,text 3\n")  # tonight's rows, as the run reads its input
        data = status_json_of(capsys, out)
        assert data["input"]["since_last_run"] == "changed"  # as the text says beside it
        assert "changed since the run in progress read it" in format_status(out)
        # Its requests done, the results and reports to write.
        meta["last_run"].update(finished_at=meta["last_run"]["started_at"],
                                results_written=False)
        (out / "job.json").write_text(json.dumps(meta))
        assert status_json_of(capsys, out)["state"] == "writing_results"
        meta["last_run"].update(results_written=True)  # written: it lets go of the directory
        (out / "job.json").write_text(json.dumps(meta))
        assert status_json_of(capsys, out)["state"] == "finished"
        meta["last_run"].pop("finished_at")
    meta.pop("last_run")
    (out / "job.json").write_text(json.dumps(meta))
    data = status_json_of(capsys, out)
    assert data["state"] == "not_run" and data["last_run"] is None
    assert data["rows"]["ok"] == 3  # the journal's rows, whatever job.json says of runs
