"""A --retry-failed or --rerun-where run that --limit held back, or that was stopped, goes on
where it was: the same command sends the rows it has not sent again yet, not the same ones."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from batchrunner.config import JobConfig
from batchrunner.runner import RunOptions, format_summary, run_job
from batchrunner.simulator import Simulator, SimulatorConfig, prompt_key
from batchrunner.status import format_status
from tests.test_run import FAST, KEY, job_for, make_csv, results

__all__ = ["KEY"]  # the key job_env sets

pytestmark = pytest.mark.usefixtures("job_env")

N = 8


def texts(markers: dict[int, str]) -> list[str]:
    """The prompts of make_csv's rows as the jobs here send them."""
    return [f"Summarise: row {i} about topic {i * 7 % 13}{markers.get(i, '')}" for i in range(N)]


def sent_rows(sim: Simulator, prompts: list[str], before: dict[str, int]) -> list[int]:
    """The rows whose prompts were sent since the counts ``before``."""
    now = sim.stats(per_prompt=True)["requests_by_prompt"]
    return [i for i, p in enumerate(prompts)
            if now.get(prompt_key(p), 0) > before.get(prompt_key(p), 0)]


def counts(sim: Simulator) -> dict[str, int]:
    return dict(sim.stats(per_prompt=True)["requests_by_prompt"])


@pytest.mark.anyio
async def test_retry_failed_with_a_limit_sends_the_next_failed_rows_each_run(
        tmp_path: Path) -> None:
    """Rows that fail every time: each --retry-failed --limit 2 run sent the same first two
    failed rows again, paid for each time, and never reached the others, while its summary
    said that the same command sends the next rows."""
    markers = {i: " [[sim:400]]" for i in (1, 2, 4, 5, 7)}
    inp = make_csv(tmp_path / "in.csv", N, markers)
    prompts = texts(markers)
    retry = replace(FAST, retry_failed=True, limit=2)
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        first = await run_job(job, FAST)
        assert first.failed == 5
        seen = []
        for _ in range(4):
            before = counts(sim)
            s = await run_job(job, retry)
            seen.append(sent_rows(sim, prompts, before))
            if len(seen) == 1:
                assert "the same command sends the next 2 rows" in format_summary(s)
                shown = format_status(tmp_path / "out")
                assert "to finish, the 3 failed rows it had not sent again:" in shown, shown
                assert shown.rstrip().endswith("--retry-failed"), shown
    # Every failed row once, in input order; then, all of them tried, from the first again.
    assert seen == [[1, 2], [4, 5], [7], [1, 2]]
    assert set(results(tmp_path).query("status == 'failed'")["id"]) == {
        f"r{i:04d}" for i in (1, 2, 4, 5, 7)}


@pytest.mark.anyio
async def test_rerun_where_goes_on_with_the_rows_it_has_not_sent_again(
        tmp_path: Path) -> None:
    """Rows cut at max_tokens, sent again with --rerun-where "finish_reason == 'length'"
    under a --limit: the rows sent again are cut again (they still match), and each run sent
    the same first rows again. Stopped or killed, status's command to finish left the
    expression out and sent nothing of them."""
    inp = make_csv(tmp_path / "in.csv", N)
    prompts = texts({})

    def job(base_url: str) -> JobConfig:
        return job_for(tmp_path, base_url, inp, max_tokens=3)

    rerun = RunOptions(rerun_where="finish_reason == 'length'", limit=3, retry=FAST.retry,
                       progress="none", handle_signals=False)
    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job(sim.base_url), FAST)
        cut = results(tmp_path).query("finish_reason == 'length'")["id"].tolist()
        assert len(cut) >= 7, cut  # 3 tokens cut nearly every answer
        rows = [int(key[1:]) for key in cut]
        seen = []
        for _ in range((len(rows) + 2) // 3):
            before = counts(sim)
            await run_job(job(sim.base_url), rerun)
            seen.append(sent_rows(sim, prompts, before))
            shown = format_status(tmp_path / "out")
            if len(seen) == 1:
                assert ("the rows --rerun-where \"finish_reason == 'length'\" picks that it has "
                        "not sent again yet:") in shown, shown
                assert "--rerun-where \"finish_reason == 'length'\"" in shown, shown
        assert [i for part in seen for i in part] == rows
        # A run killed in the middle of it: status's command goes on with it.
        meta = json.loads((tmp_path / "out" / "job.json").read_text())
        meta["last_run"]["finished_at"] = None
        (tmp_path / "out" / "job.json").write_text(json.dumps(meta))
        assert "--rerun-where" in format_status(tmp_path / "out")
        before = counts(sim)
        await run_job(job(sim.base_url), replace(rerun, limit=None))
        assert sent_rows(sim, prompts, before) == []  # every row was sent again before it
        # Run through: the next such run begins with the first row cut again.
        await run_job(job(sim.base_url), replace(rerun, limit=None))
        assert sent_rows(sim, prompts, before) == rows


@pytest.mark.anyio
async def test_a_setting_changed_with_force_begins_the_selection_again(tmp_path: Path) -> None:
    """Failed rows sent again by a --retry-failed run that --limit held back, then the setting
    that made them fail fixed (--force): the next --retry-failed run went on with the held-back
    selection and skipped them, though status had said to fix it and rerun with --retry-failed.
    Status, between, named the rows to do without "the 0 failed rows it had not sent again"."""
    markers = {1: " [[sim:400]]", 2: " [[sim:400]]"}
    inp = make_csv(tmp_path / "in.csv", N, markers)
    prompts = texts(markers)
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        await run_job(job, replace(FAST, limit=4))
        before = counts(sim)
        await run_job(job, replace(FAST, retry_failed=True, limit=2))
        assert sent_rows(sim, prompts, before) == [1, 2]
        shown = format_status(tmp_path / "out")
        assert "to finish, 4 rows to do: batchrunner run " in shown, shown
        assert shown.rstrip().endswith(" --retry-failed"), shown
        before = counts(sim)
        changed = replace(job, request=replace(job.request, temperature=0.3))
        await run_job(changed, replace(FAST, retry_failed=True, force=True))
        assert sent_rows(sim, prompts, before) == [1, 2, 4, 5, 6, 7]


@pytest.mark.anyio
async def test_status_names_both_options_of_a_selection_that_has_both(tmp_path: Path) -> None:
    """A --retry-failed --rerun-where run held back by --limit, its failed rows all answered:
    status's command left --retry-failed out, and without it the selection is another, which
    began again and sent every row it picks."""
    markers = {1: " [[sim:400*1]]", 2: " [[sim:400*1]]"}
    inp = make_csv(tmp_path / "in.csv", N, markers)
    prompts = texts(markers)
    both = RunOptions(retry_failed=True, rerun_where="finish_reason == 'length'", limit=4,
                      retry=FAST.retry, progress="none", handle_signals=False)
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp, max_tokens=3)
        await run_job(job, FAST)
        cut = [int(k[1:]) for k in results(tmp_path).query("finish_reason == 'length'")["id"]]
        picked = sorted({1, 2, *cut})
        assert len(picked) >= 6, picked
        before = counts(sim)
        await run_job(job, both)
        first = sent_rows(sim, prompts, before)
        assert first == picked[:4]
        shown = format_status(tmp_path / "out")
        assert " --retry-failed --rerun-where \"finish_reason == 'length'\"" in shown, shown
        before = counts(sim)
        await run_job(job, replace(both, limit=None))
        assert sent_rows(sim, prompts, before) == picked[4:]


@pytest.mark.anyio
async def test_rows_whose_rerun_failed_are_not_sent_again_by_the_run_that_goes_on(
        tmp_path: Path) -> None:
    """Answered rows sent again with --rerun-where under a --limit, and refused (a 400, for a
    prompt changed with --force): each keeps its answer, and the run's compaction kept that record
    alone, so the failure's time was lost and the next run sent the same rows again, first.
    The record kept carries it (tried_at)."""
    inp = make_csv(tmp_path / "in.csv", N)
    prompts = [f"{p} [[sim:400]]" for p in texts({})]
    rerun = RunOptions(rerun_where="status == 'ok'", limit=3, force=True, retry=FAST.retry,
                       progress="none", handle_signals=False)
    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp), FAST)
        answers = results(tmp_path).set_index("id")["content"]
        refused = job_for(tmp_path, sim.base_url, inp, prompt="Summarise: {text} [[sim:400]]")
        seen = []
        for _ in range(3):
            before = counts(sim)
            await run_job(refused, rerun)
            seen.append(sent_rows(sim, prompts, before))
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 7]]
    df = results(tmp_path).set_index("id")
    assert (df["status"] == "ok").all() and df["content"].equals(answers)
    assert "tried_at" not in df.columns  # the journal's own


@pytest.mark.anyio
async def test_a_limited_run_killed_is_resumed_with_its_limit(tmp_path: Path) -> None:
    """A --limit trial killed: status's command to resume it had no --limit, and sent every
    row of the input (a night's job, at 2 AM, for a trial of a few rows). A trial stopped
    (Ctrl-C) is told what finishes the job, as one that ran through is."""
    inp = make_csv(tmp_path / "in.csv", N)
    async with Simulator(SimulatorConfig()) as sim:
        await run_job(job_for(tmp_path, sim.base_url, inp), replace(FAST, limit=3))
    meta_path = tmp_path / "out" / "job.json"
    meta = json.loads(meta_path.read_text())
    meta["last_run"]["finished_at"] = None  # killed before it ended
    meta_path.write_text(json.dumps(meta))
    said = next(line for line in format_status(tmp_path / "out").splitlines()
                if "did not finish" in line)
    assert said.endswith(" --limit 3"), said
    meta["last_run"].update(finished_at=meta["last_run"]["started_at"],
                            stopped="interrupted by Ctrl-C")  # stopped: what finishes the job
    meta_path.write_text(json.dumps(meta))
    shown = format_status(tmp_path / "out")
    said = next(line for line in shown.splitlines() if line.startswith("  to finish"))
    assert said.startswith("  to finish, 5 rows to do: batchrunner run ") and (
        "--limit" not in said), shown
