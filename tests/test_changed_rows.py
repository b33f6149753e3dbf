"""A rerun over an input that changed: rows done whose values changed since are sent again;
the others keep their answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner import compute as pc
from batchrunner.cli import main
from batchrunner.config import RequestConfig
from batchrunner.journal import Journal, JournalWriter
from batchrunner.records import Outcome
from batchrunner.report import changed_warning
from batchrunner.results import _changed_left
from batchrunner.runner import hash_values, row_hasher
from batchrunner.simulator import SimulatorConfig, SimulatorThread
from batchrunner.template import RequestBuilder

RUN = ["--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output", "out"]


def _sent(out: Path) -> int:
    return int(json.loads((out / "job.json").read_text())["last_run"]["sent"])


def _answers(out: Path, key: str) -> dict[str, tuple[str, str]]:
    """key → (the prompt's text, the answer's request id) in the results file."""
    t = pq.read_table(out / "results.parquet")
    return {str(k): (str(text), str(rid)) for k, text, rid in
            zip(t[key].to_pylist(), t["text"].to_pylist(), t["request_id"].to_pylist(),
                strict=True)}


def _first_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, csv: str, *,
               id_column: bool = True, code: int = 0) -> tuple[Path, list[str]]:
    """Run a job over ``csv`` (its id column ``id``, or keyed by position) once; the input
    file and the command, to run again."""
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text(csv)
    args = ["run", "--input", "in.csv", *(["--id-column", "id"] if id_column else []),
            "--prompt", "Say {text}", *RUN]
    assert main(args) == code
    return inp, args


def test_rows_whose_text_changed_are_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    inp, args = _first_run(tmp_path, monkeypatch, "id,text\na,alpha\nb,beta\nc,gamma\nd,delta\n")
    before = _answers(tmp_path / "out", "id")
    # Two rows edited, one moved, one added: the moved one is matched by its id.
    inp.write_text("id,text\nc,gamma\na,alpha\nb,BETA\nd,delta edited\ne,epsilon\n")
    capsys.readouterr()
    assert main(args) == 0
    said = capsys.readouterr().err
    assert ("2 rows done before have changed in the input since they were sent (rows are "
            "matched by id): they are sent again") in said
    assert _sent(tmp_path / "out") == 3
    after = _answers(tmp_path / "out", "id")
    assert after["a"] == before["a"] and after["c"] == before["c"]  # the same answers
    assert after["b"][0] == "BETA" and after["b"][1] != before["b"][1]
    assert after["d"][0] == "delta edited" and after["d"][1] != before["d"][1]
    content = pq.read_table(tmp_path / "out" / "results.parquet")["content"].to_pylist()
    assert "Say BETA" in content[2] and "Say delta edited" in content[3]
    # Nothing changed since: nothing is sent, nothing said about it.
    assert main(args) == 0
    assert _sent(tmp_path / "out") == 0
    assert "changed" not in capsys.readouterr().err


def test_a_changed_row_that_fails_shows_its_failure_not_the_old_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure never replaces an ok, but an ok to a row's old text is no answer to its new
    text: the results show the new text's failure, with the old answer's cost carried."""
    inp, args = _first_run(tmp_path, monkeypatch, "id,text\na,alpha\nb,beta\n")
    old = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()[1]
    inp.write_text("id,text\na,alpha\nb,beta [[sim:400]]\n")  # the server refuses it now
    assert main(args) == 3
    row = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()[1]
    assert (row["text"], row["status"], row["error_type"]) == ("beta [[sim:400]]", "failed",
                                                               "http_400")
    assert row["earlier_cost_usd"] == pytest.approx(old["cost_usd"])
    # Done, as a failed row: not sent again but with --retry-failed.
    assert main(args) == 3
    assert _sent(tmp_path / "out") == 0


def test_changed_rows_not_sent_before_a_stop_are_sent_by_the_next_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The run that found them stopped before sending them (its budget): the input is the
    same for the next run, which still compares the rows and sends them. Until then the
    summary, the report, ``report`` and ``status`` say that their results are the old text's."""
    inp, args = _first_run(tmp_path, monkeypatch, "id,text\na,alpha\nb,beta\nc,gamma\n")
    out = tmp_path / "out"
    inp.write_text("id,text\na,alpha\nb,BETA\nc,GAMMA\n")
    capsys.readouterr()
    assert main([*args, "--max-cost", "0.0000001"]) == 4  # stopped before sending
    assert _sent(out) == 0
    meta = json.loads((out / "job.json").read_text())
    assert (meta["rows_checked"], meta["rows_changed"]) == (None, {"found": 2, "left": 2})
    left = ("2 rows that changed in the input since they were sent have not been sent again "
            "yet: the results show their answers to the earlier text — rerun the job to send "
            "them")
    assert f"warning: {left}" in capsys.readouterr().out
    report = json.loads((out / "cost_report.json").read_text())
    assert report["rows"]["changed_to_send"] == 2 and left in report["warnings"]
    assert main(["report", "out"]) == 4  # rows left to do
    assert left in capsys.readouterr().out
    assert main(["status", "out"]) == 0
    assert left in capsys.readouterr().out
    assert main(args) == 0
    assert "changed" not in capsys.readouterr().out
    assert _sent(tmp_path / "out") == 2
    texts = [r["content"] for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()]
    assert "Say BETA" in texts[1] and "Say GAMMA" in texts[2]
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["rows_checked"] == meta["input_fingerprint"]  # the next run compares nothing
    assert meta["rows_changed"] == {"found": 2, "left": 0}
    assert json.loads((out / "cost_report.json").read_text())["rows"]["changed_to_send"] == 0


def test_a_run_killed_while_sending_changed_rows_is_told_and_finished_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL while the changed rows are being sent: ``status`` says at most how many still
    show answers to their earlier text, ``report`` (which compares them) how many exactly, and
    ``status`` after it; the next run sends the rest."""
    n = 40
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"r{i},row {i}\n" for i in range(n)))
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=200)) as sim:
        args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "Say {text}",
                "--model", "gpt-4o-mini", "--base-url", sim.base_url, "--progress", "none",
                "--output", "out"]
        env = {**os.environ, "OPENAI_API_KEY": "sk-test-changed-rows"}
        monkeypatch.setenv("OPENAI_API_KEY", env["OPENAI_API_KEY"])
        assert main([*args, "--concurrency", "20"]) == 0
        inp.write_text("id,text\n" + "".join(f"r{i},row {i} edited\n" for i in range(n)))
        # Killed once its first segment (written after a second) holds some of them.
        proc = subprocess.Popen([sys.executable, "-m", "batchrunner", *args,
                                 "--concurrency", "2"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not [p for p in (out / "journal").glob("seg-*.parquet")
                       if "-compact-" not in p.name] and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert proc.poll() is None, proc.communicate()[1]
        finally:
            proc.kill()
            proc.wait()
        segs = Journal(out).segments()
        keys = pa.concat_tables([pq.read_table(p, columns=["key"]) for p in segs])
        counts = pc.value_counts(keys["key"].combine_chunks()).field("counts").to_pylist()
        assert sorted(set(counts)) == [1, 2]  # some rows sent again before the kill, not all
        at_most = (f"the job's last run ended before it could send again all of the {n} rows "
                   "changed in the input: some results may show answers to the earlier text — "
                   "rerun the job to send them")
        capsys.readouterr()
        assert main(["status", "out"]) == 0
        assert at_most in capsys.readouterr().out
        # report compares them, as the next run will: it tells how many are left exactly.
        exact = changed_warning(counts.count(1))
        assert main(["report", "out"]) == 4
        assert exact in capsys.readouterr().out
        assert exact in json.loads((out / "cost_report.json").read_text())["warnings"]
        assert main(["status", "out"]) == 0
        assert exact in capsys.readouterr().out
        assert main([*args, "--concurrency", "20"]) == 0
    # The others are sent again, once; those sent before the kill are not sent a third time.
    assert _sent(out) == counts.count(1)
    assert all(text.endswith("edited") for text, _ in _answers(out, "id").values())
    assert json.loads((out / "job.json").read_text())["rows_changed"]["left"] == 0
    assert "changed" not in capsys.readouterr().out


def test_the_hash_is_kept_in_the_journal_not_in_the_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\na,alpha\n")
    assert main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "Say {text}",
                 *RUN, "--format", "csv"]) == 0
    assert "row_hash" not in (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    [seg] = (tmp_path / "out" / "journal").glob("seg-*.parquet")
    assert pq.read_table(seg)["row_hash"].to_pylist() == [zlib.crc32(b'["alpha"]')]


def test_a_failed_row_fixed_in_the_input_is_sent_without_retry_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na,alpha\nb,\n")
    args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "Say {text}", *RUN]
    assert main(args) == 3  # b: its prompt's column is null, not sent
    inp.write_text("id,text\na,alpha\nb,beta\n")
    assert main(args) == 0
    assert _sent(tmp_path / "out") == 1
    t = pq.read_table(tmp_path / "out" / "results.parquet")
    assert t["status"].to_pylist() == ["ok", "ok"]


def test_position_keys_with_force_send_the_changed_rows_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    inp, args = _first_run(tmp_path, monkeypatch, "text\nalpha\nbeta\ngamma\n", id_column=False)
    inp.write_text("text\nalpha\nBETA\ngamma\ndelta\n")
    capsys.readouterr()
    assert main(args) == 2  # refused: rows keyed by position
    err = capsys.readouterr().err
    assert "pass --force (the rows done keep their positions; any whose text changed is sent " \
           "again)" in err
    assert main([*args, "--force"]) == 0
    assert ("1 row done before has changed in the input since it was sent (rows are matched by "
            "position, as --force allows): it is sent again") in capsys.readouterr().err
    assert _sent(tmp_path / "out") == 2  # BETA, and delta added
    content = pq.read_table(tmp_path / "out" / "results.parquet")["content"].to_pylist()
    assert "Say BETA" in content[1]


def test_an_id_column_exported_again_as_another_type_is_refused_not_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A table's integer ids re-exported as double (pandas, a column with a null on its way):
    each id read '1.0' where the journal has '1', no row done was found, and every row was
    sent again and paid for again, with only a warning of rows 'not in this input'. It is
    refused (exit 2, nothing sent) naming both types, unless --force; a type whose ids read
    the same (int32 for int64, large_string for string) is not."""
    monkeypatch.chdir(tmp_path)

    def export(ids: pa.Array) -> None:
        pq.write_table(pa.table({"id": ids, "text": ["alpha", "beta", "gamma"]}), "in.parquet")

    args = ["run", "--input", "in.parquet", "--id-column", "id", "--prompt", "Say {text}", *RUN]
    export(pa.array([1, 2, 3], pa.int64()))
    assert main(args) == 0
    export(pa.array([1, 2, 3], pa.int32()))  # ids read the same: every row done is found
    assert main(args) == 0 and _sent(tmp_path / "out") == 0
    export(pa.array([1.0, 2.0, 3.0], pa.float64()))
    capsys.readouterr()
    assert main(args) == 2
    assert ("error: the id column 'id' was int32 in the last run in out and is double in this "
            "input: its ids read as '1.0' where the journal has '1', so none of the 3 rows done "
            "would be found, and every row would be sent again — write the column as int32 "
            "again") in capsys.readouterr().err
    assert _sent(tmp_path / "out") == 0  # the last run's job.json: nothing was sent
    assert main([*args, "--dry-run"]) == 0  # the estimate warns
    assert "the run is refused unless given --force: the id column" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0 and _sent(tmp_path / "out") == 3


def test_a_batch_rows_changed_body_is_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def write(second: str) -> None:
        lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "gpt-4o-mini", "messages": [
                      {"role": "user", "content": second if i == 2 else f"hello {i}"}]}}
                 for i in (1, 2, 3)]
        (tmp_path / "b.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    write("hello 2")
    args = ["run", "--input", "b.jsonl", "--simulator", "--progress", "none", "--output", "out"]
    assert main(args) == 0
    write("hello two")
    assert main(args) == 0
    assert _sent(tmp_path / "out") == 1
    content = pq.read_table(tmp_path / "out" / "results.parquet")["content"].to_pylist()
    assert "hello two" in content[1]


def _batch_file(path: Path, rows: range, *, reordered: bool = False) -> None:
    """An OpenAI batch file of ``rows``; ``reordered``: every object's keys in reverse order,
    as another script (or a tool that sorts keys) writes the same requests."""
    def order(value: Any) -> Any:
        if isinstance(value, dict):
            items = [(k, order(v)) for k, v in value.items()]
            return dict(reversed(items) if reordered else items)
        return [order(v) for v in value] if isinstance(value, list) else value

    lines = [order({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [
                        {"role": "user", "content": f"hello {i}"}]}}) for i in rows]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_batch_file_written_again_with_its_keys_in_another_order_is_not_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same requests with their keys in another order (tonight's export by another
    script) were every row "changed": all sent and paid for again."""
    monkeypatch.chdir(tmp_path)
    _batch_file(tmp_path / "b.jsonl", range(4))
    args = ["run", "--input", "b.jsonl", "--simulator", "--progress", "none", "--output", "out"]
    assert main(args) == 0
    _batch_file(tmp_path / "b.jsonl", range(5), reordered=True)  # and a row added
    assert main(args) == 0
    assert _sent(tmp_path / "out") == 1  # the new row only


def test_a_batch_journal_from_before_bodies_were_hashed_in_key_order_keeps_its_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows done when a batch row's hash was its body's text as written: a rerun over the
    same rows, the file grown, sends the new row only."""
    import batchrunner.runner as runner_module

    monkeypatch.chdir(tmp_path)
    _batch_file(tmp_path / "b.jsonl", range(4))
    args = ["run", "--input", "b.jsonl", "--simulator", "--progress", "none", "--output", "out"]
    with monkeypatch.context() as m:
        m.setattr(runner_module, "_body_hash", lambda row: hash_values((row["body"],)))
        assert main(args) == 0
    _batch_file(tmp_path / "b.jsonl", range(5))
    assert main(args) == 0
    assert _sent(tmp_path / "out") == 1


def test_a_whole_number_written_again_as_a_decimal_is_a_changed_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body whose max_tokens 50 is written 50.0 (a table's integer column turned decimal by
    a null) is the same JSON value but not the same request: an endpoint may refuse the
    decimal, as the built-in simulator does. The rows are sent again, and their failure shown,
    not the answers to the requests that were sent."""
    monkeypatch.chdir(tmp_path)
    args = ["run", "--input", "b.jsonl", "--simulator", "--progress", "none", "--output", "out"]

    def write(max_tokens: str) -> None:
        (tmp_path / "b.jsonl").write_text("".join(
            f'{{"custom_id": "r{i}", "method": "POST", "url": "/v1/chat/completions", "body": '
            f'{{"model": "gpt-4o-mini", "max_tokens": {max_tokens}, "messages": '
            f'[{{"role": "user", "content": "hello {i}"}}]}}}}\n' for i in range(3)))

    write("50")
    assert main(args) == 0
    write("50.0")
    assert main(args) == 3
    assert _sent(tmp_path / "out") == 3
    t = pq.read_table(tmp_path / "out" / "results.parquet")
    assert t["error_type"].to_pylist() == ["http_400"] * 3


def test_rows_done_by_an_earlier_version_keep_their_answers_and_it_is_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A journal from before ``row_hash``: its rows cannot be compared, so they are kept, and
    the run says how many and how to send them again."""
    inp, args = _first_run(tmp_path, monkeypatch, "id,text\na,alpha\nb,beta\n")
    [seg] = (tmp_path / "out" / "journal").glob("seg-*.parquet")
    table = pq.read_table(seg)
    pq.write_table(table.drop_columns(["row_hash"]), seg)  # as an earlier version wrote it
    meta_path = tmp_path / "out" / "job.json"
    meta = json.loads(meta_path.read_text())
    del meta["rows_checked"]
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(args) == 0  # the same input: compared once, nothing to say
    assert _sent(tmp_path / "out") == 0 and "earlier batchrunner" not in capsys.readouterr().err
    assert json.loads(meta_path.read_text())["rows_checked"] == meta["input_fingerprint"]
    inp.write_text("id,text\na,alpha\nb,BETA\nc,gamma\n")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("2 rows done by an earlier batchrunner, which kept no record of their text, keep "
            "their answers even if it changed") in err
    assert _sent(tmp_path / "out") == 1  # c only
    # Rows sent from now on are recorded with their hash: a change to c is seen, a and b
    # are still kept as they were.
    inp.write_text("id,text\na,alpha\nb,BETA\nc,GAMMA\n")
    assert main(args) == 0
    assert _sent(tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "1 row done before has changed in the input since it was sent" in err
    assert "2 rows done by an earlier batchrunner" in err


def test_rows_kept_through_a_forced_change_of_the_prompts_columns_are_not_all_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--force keeps the rows done when the prompt's columns change; their hashes are of the
    old columns. A later change to the input sent every one of them again (each said to have
    changed); now only the rows whose values changed, as the old or the new prompt reads
    them, are."""
    inp, args = _first_run(tmp_path, monkeypatch,
                           "id,text,lang\na,alpha,en\nb,beta,en\nc,gamma,en\n")
    out = tmp_path / "out"
    args = [*args, "--prompt", "Say {text} in {lang}"]  # the last --prompt wins
    assert main(args) == 2  # the settings changed
    assert main([*args, "--force"]) == 0  # the rows done keep their answers
    assert _sent(out) == 0
    before = _answers(out, "id")
    capsys.readouterr()
    inp.write_text("id,text,lang\na,alpha,en\nb,BETA,en\nc,gamma,en\nd,delta,en\n")
    assert main(args) == 0
    assert "1 row done before has changed in the input since it was sent" in (
        capsys.readouterr().err)
    assert _sent(out) == 2  # b and d
    after = _answers(out, "id")
    assert after["a"] == before["a"] and after["c"] == before["c"]
    # Rows answered since are recorded with the new columns: a change to one is seen too.
    inp.write_text("id,text,lang\na,alpha,en\nb,BETA,fr\nc,gamma,en\nd,delta,en\ne,eps,en\n")
    assert main(args) == 0
    assert _sent(out) == 2  # b and e
    # And after the prompt is changed back (forced), each row is compared as answered.
    assert main([*args, "--prompt", "Say {text}", "--force"]) == 0
    inp.write_text("id,text,lang\na,ALPHA,en\nb,BETA,de\nc,gamma,de\nd,delta,en\n"
                   "e,eps,en\n")
    assert main([*args, "--prompt", "Say {text}"]) == 0
    assert _sent(out) == 2  # a (its text) and b (its language, in the prompt it was sent with)


@pytest.mark.parametrize(("first", "then"), [
    (["--prompt", "Say {text}", "--from-column", "seed=seed"], ["--prompt", "Say {text}"]),
    (["--prompt", "Say {text} {seed}"], ["--prompt", "Say {text}", "--from-column", "seed=seed"]),
], ids=["a body field's column dropped", "a prompt's column made a body field's"])
def test_rows_kept_through_a_forced_change_of_a_numeric_columns_use_are_not_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: list[str],
        then: list[str]) -> None:
    """A number is hashed as it is in a body field's column (--from-column), as its text in
    the prompt's: the rows kept through a forced change from one to the other (or of a body
    field's column dropped) are compared with their values as they were hashed. They were all
    taken for changed, and sent again, at the next change to the input."""
    monkeypatch.chdir(tmp_path)
    rows = [{"id": k, "text": t, "seed": i} for i, (k, t) in enumerate(
        [("a", "alpha"), ("b", "beta"), ("c", "gamma")])]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["run", "--input", "in.jsonl", "--id-column", "id", *RUN]
    assert main([*args, *first]) == 0
    assert main([*args, *then, "--force"]) == 0
    assert _sent(tmp_path / "out") == 0
    inp.write_text("".join(json.dumps(r) + "\n" for r in [
        *rows[:2], {**rows[2], "text": "GAMMA"}, {"id": "d", "text": "delta", "seed": 7}]))
    assert main([*args, *then]) == 0
    assert _sent(tmp_path / "out") == 2  # c (its text) and d


def test_row_hash_is_stable_and_takes_any_value() -> None:
    # Stable across runs and versions: pinned to the bytes it hashes.
    assert hash_values(("hi", 1)) == zlib.crc32(b'["hi",1]')
    assert hash_values(("hi",)) != hash_values(("hi ",))
    assert hash_values((None, 1)) != hash_values((1, None))
    odd = (Decimal("1.10"), datetime(2026, 12, 1, tzinfo=UTC), b"\x00\xff", 2**70,
           {"k": [1.5, None, {"x": "y"}]})
    assert hash_values(odd) == hash_values(tuple(odd))
    assert hash_values((Decimal("1.1"), *odd[1:])) != hash_values(odd)


def test_row_hasher_hashes_the_columns_the_request_is_made_of() -> None:
    row = {"id": "a1", "text": "hi", "m": "gpt-4o", "t": "0.5", "other": "x"}
    one = RequestBuilder(RequestConfig(model="m", prompt="Say {text}"), list(row), "input")
    assert row_hasher(one)(row) == zlib.crc32(b'["hi"]')
    assert row_hasher(one)({**row, "other": "y", "id": "b"}) == row_hasher(one)(row)
    several = RequestBuilder(RequestConfig(prompt="Say {text}", model_column="m",
                                           from_columns={"temperature": "t"}),
                             list(row), "input")
    assert row_hasher(several)(row) == zlib.crc32(b'["hi","gpt-4o","0.5"]')
    # A batch row's: its body with the keys sorted at every depth, whatever order it came in.
    body = '{"b": 1, "a": {"d": [{"y": 2, "x": 1}], "c": 3}}'
    assert row_hasher(None)({"custom_id": "r1", "body": body}) == zlib.crc32(
        b'[{"a":{"c":3,"d":[{"x":1,"y":2}]},"b":1}]')


class _ByPosition:
    """Keys are input positions (as a job without an id column keys its rows)."""

    tag = "by-position"
    rows = 3

    def positions(self, keys: pa.Array) -> pa.Array:
        return pc.cast(keys, pa.int64())


@pytest.mark.parametrize("index_rows", [65_536, 1], ids=["one-batch", "a-batch-a-record"])
def test_compaction_prefers_a_changed_rows_record_made_with_its_values_now(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_rows: int) -> None:
    import batchrunner.journal as journal_module

    monkeypatch.setattr(journal_module, "_INDEX_ROWS", index_rows)
    j = Journal(tmp_path)
    j.create()
    w = JournalWriter(j.directory, "run1")
    for key, status, at, digest in [
            ("0", "ok", 1.0, 10), ("0", "failed", 2.0, 20),  # changed, sent again: failed
            ("1", "ok", 1.0, 10), ("1", "failed", 2.0, 10),  # the same text: the ok stays
            ("2", "failed", 1.0, 20), ("2", "ok", 2.0, 10)]:  # an ok to the old text, later
        w.add(Outcome(key=key, status=status, finished_at=at, row_hash=digest))
        w.flush()
    fresh = (np.array([0, 2]), np.array([20, 20]))
    j.compact("run2", _ByPosition(), fresh=fresh)
    got = j.read().to_pylist()
    assert [(r["key"], r["status"], r["row_hash"]) for r in got] == [
        ("0", "failed", 20), ("1", "ok", 10), ("2", "failed", 20)]
    # Both changed rows have a record made with their values now; a third, changed to a
    # hash no record has, is not sent again yet.
    assert _changed_left(j, _ByPosition(), fresh) == 0
    assert _changed_left(j, _ByPosition(), (np.array([0, 1, 2]), np.array([20, 30, 20]))) == 1
    # Without it, as ever: an ok is never replaced by a failure.
    for seg in j.segments():
        seg.unlink()
    for key, status, at, digest in [("0", "ok", 1.0, 10), ("0", "failed", 2.0, 20)]:
        w.add(Outcome(key=key, status=status, finished_at=at, row_hash=digest))
        w.flush()
    j.compact("run3", _ByPosition())
    assert [(r["key"], r["status"]) for r in j.read().to_pylist()] == [("0", "ok")]
