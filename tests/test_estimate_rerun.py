"""The estimate of a rerun (``--rerun-where``, ``--retry-failed``): the rows sent again are
estimated by what their own earlier answers tell, not by the mean of every answer so far."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from batchrunner.cli import main
from batchrunner.simulator import SimulatorConfig, SimulatorThread

KEY = "sk-test"
pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

CUT = "finish_reason == 'length'"


def write_input(tmp_path: Path, texts: list[str]) -> Path:
    path = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_csv(
        path, index=False)
    return path


def job_args(tmp_path: Path, inp: Path, base_url: str) -> list[str]:
    return ["--input", str(inp), "--id-column", "id", "--prompt", "{text}",
            "--model", "gpt-4o-mini", "--base-url", base_url,
            "--output", str(tmp_path / "out")]


def estimate_of(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, int, float]:
    """The estimate's output, and its gpt-4o-mini row's completion tokens and cost."""
    capsys.readouterr()
    assert main(["estimate", *args]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("gpt-4o-mini"))
    fields = line.split()
    return out, int(fields[3].replace(",", "")), float(fields[4].lstrip("$"))


def results(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("id")


def test_rows_cut_at_max_tokens_are_estimated_from_what_they_reached_up_to_the_new_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows cut at max_tokens, sent again with a larger one, were estimated at the mean of
    every answer so far (those cut and the short ones that finished): less than the tokens
    they had reached when cut, a third of what the rerun cost. Each is estimated at what it
    reached and the answers' mean length more, at most the new max_tokens."""
    inp = write_input(tmp_path, [f"describe item {i} in some words" for i in range(80)])
    with SimulatorThread(SimulatorConfig()) as sim:
        args = job_args(tmp_path, inp, sim.base_url)
        assert main(["run", *args, "--max-tokens", "40", "--progress", "none"]) == 0
        before = results(tmp_path)
        cut = before[before["finish_reason"] == "length"]
        assert 10 < len(cut) < len(before)
        reached = int(cut["completion_tokens"].sum())
        assert reached == 40 * len(cut)
        # The same max_tokens: cut again, at it.
        out, tokens, _ = estimate_of(capsys, *args, "--max-tokens", "40", "--rerun-where", CUT)
        assert tokens == reached, out
        assert (f"  cut at max_tokens before: {len(cut)} rows, cut again at max_tokens as it "
                f"stands ({reached:,} completion tokens): raise it for their whole answers\n"
                in out), out
        rerun = [*args, "--max-tokens", "400", "--force", "--rerun-where", CUT]
        out, tokens, cost = estimate_of(capsys, *rerun)
        assert sim.stats()["requests"] == len(before)  # the estimates sent nothing
        assert main(["run", *rerun, "--progress", "none"]) == 0
    after = results(tmp_path).loc[cut.index]
    assert (after["finish_reason"] == "stop").all()
    actual = int(after["completion_tokens"].sum())
    assert reached <= tokens <= 400 * len(cut), out
    assert tokens == pytest.approx(actual, rel=0.25), (tokens, actual)
    assert cost == pytest.approx(after["cost_usd"].sum(), rel=0.25), out
    assert "  completion tokens from: each row's own earlier answer (below)\n" in out, out
    assert (f"  cut at max_tokens before: {len(cut)} rows, {tokens:,} completion tokens: the "
            f"{reached:,} they reached and ") in out, out
    assert (" more each (the answers' mean length, counting cut ones as unfinished); "
            f"{400 * len(cut):,} at most (max_tokens)\n") in out, out


def test_rows_answered_whole_and_sent_again_are_estimated_at_their_own_answers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows picked by their answers (the longest, here) are not the job's mean: each is
    estimated at its own answer's tokens."""
    inp = write_input(tmp_path, [f"describe item {i} in some words" for i in range(40)])
    where = "finish_reason == 'stop' and completion_tokens > 60"
    with SimulatorThread(SimulatorConfig()) as sim:
        args = [*job_args(tmp_path, inp, sim.base_url), "--max-tokens", "400"]
        assert main(["run", *args, "--progress", "none"]) == 0
        before = results(tmp_path)
        picked = before[(before["finish_reason"] == "stop") & (before["completion_tokens"] > 60)]
        assert 0 < len(picked) < len(before) // 2
        own = int(picked["completion_tokens"].sum())
        assert own > before["completion_tokens"].mean() * len(picked) * 1.5
        out, tokens, _ = estimate_of(capsys, *args, "--rerun-where", where)
        assert main(["run", *args, "--rerun-where", where, "--progress", "none"]) == 0
    assert tokens == own == int(results(tmp_path).loc[picked.index, "completion_tokens"].sum())
    assert (f"  answered before: {len(picked)} rows, at the {own:,} completion tokens of their "
            "answers\n") in out, out
    # A lower max_tokens now bounds them.
    _, tokens, _ = estimate_of(capsys, *job_args(tmp_path, inp, "http://127.0.0.1:9/v1"),
                               "--max-tokens", "50", "--force", "--rerun-where", where)
    assert tokens == 50 * len(picked)


def test_failed_rows_retried_are_estimated_at_the_mean_or_from_a_cut_reply(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--retry-failed: a row that failed with no answer (a 500) has nothing of its own to go
    by and takes the mean of the answers; one whose JSON reply was cut at max_tokens (failed
    as invalid_json) reached its max_tokens, and is estimated as a cut row is."""
    texts = [f"describe item {i} in some words" for i in range(40)]
    for i in (3, 11):
        texts[i] += " [[sim:500]]"
    inp = write_input(tmp_path, texts)
    (tmp_path / "job.toml").write_text(
        '[request.extra]\nresponse_format = { type = "json_object" }\n')
    with SimulatorThread(SimulatorConfig()) as sim:
        args = ["job.toml", *job_args(tmp_path, inp, sim.base_url), "--max-attempts", "1"]
        assert main(["run", *args, "--max-tokens", "30", "--progress", "none"]) == 3
        before = results(tmp_path)
    failed = before[before["status"] == "failed"]
    errors = failed.loc[["r3", "r11"], "error_type"]
    assert (errors == "http_500").all(), errors
    cut = failed[failed["error_type"] == "invalid_json"]
    assert len(cut) > 0 and (cut["finish_reason"] == "length").all()
    assert (cut["completion_tokens"] == 30).all()
    ok = before[before["status"] == "ok"]
    mean = int(ok["completion_tokens"].sum() / len(ok))
    # At the same max_tokens: the 500s at the mean, the cut replies at what they reached.
    out, tokens, _ = estimate_of(capsys, *args, "--max-tokens", "30", "--retry-failed")
    assert tokens == 2 * mean + 30 * len(cut), out
    assert (f"completion tokens from: mean of {len(ok)} answers so far ({mean} tokens"
            in out), out
    assert f"; for the {len(cut)} rows answered before, their own answers (below)" in out, out
    assert f"  cut at max_tokens before: {len(cut)} rows, cut again at max_tokens" in out, out
    out, tokens, _ = estimate_of(capsys, *args, "--max-tokens", "300", "--retry-failed",
                                 "--force")
    assert tokens > 2 * mean + 30 * len(cut), out
    assert f"  cut at max_tokens before: {len(cut)} rows, " in out, out
    assert f"; {300 * len(cut):,} at most (max_tokens)\n" in out, out
