"""The journal's read side as ``status`` (and ``estimate``, ``--rerun-where``) use it: the latest
record of every row, from the segments of a run in progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrunner import compute
from batchrunner import journal as journal_module
from batchrunner.journal import Journal, JournalWriter, latest, outcomes_table
from batchrunner.records import RETRYING, Outcome

_RANK = {"ok": 1, "failed": 0, RETRYING: -1}


def expected_latest(records: list[Outcome]) -> dict[str, dict[str, Any]]:
    """The rule, record by record: of a key's records the one with the best status (ok, then
    failed, then retrying), then the newest, then the last written; its earlier_cost_usd raised
    so that with its cost_usd it is the most any record of the key carries, and its tried_at
    set to the newest outcome of the key where that finished after it (a failure after an
    ok)."""
    best: dict[str, tuple[tuple[int, float, int], Outcome]] = {}
    most: dict[str, float] = {}
    tried: dict[str, float] = {}
    for i, o in enumerate(records):
        rank = (_RANK[o.status], o.finished_at, i)
        if o.key not in best or rank > best[o.key][0]:
            best[o.key] = (rank, o)
        if o.status != RETRYING and o.finished_at is not None:
            tried[o.key] = max(tried.get(o.key, o.finished_at), o.finished_at)
        if o.cost_usd is not None or o.earlier_cost_usd is not None:
            spent = (o.cost_usd or 0.0) + (o.earlier_cost_usd or 0.0)
            most[o.key] = max(most.get(o.key, spent), spent)
    rows = {}
    for key, (_, o) in best.items():
        row = o.as_dict()
        own = (o.cost_usd or 0.0) + (o.earlier_cost_usd or 0.0)
        if key in most and most[key] > own:
            row["earlier_cost_usd"] = most[key] - (o.cost_usd or 0.0)
        if key in tried and tried[key] > (o.finished_at or 0.0):
            row["tried_at"] = tried[key]
        rows[key] = row
    return rows


records = st.lists(st.builds(
    Outcome,
    key=st.sampled_from("abcdefg"),
    status=st.sampled_from(["ok", "failed", RETRYING]),
    content=st.text(max_size=3),
    cost_usd=st.sampled_from([None, 0.25, 0.0625]),
    earlier_cost_usd=st.sampled_from([None, 0.5]),
    finished_at=st.sampled_from([0.0, 1.0, 2.0]),
), max_size=25)


@settings(max_examples=300, deadline=None)
@given(records, st.integers(1, 8))
def test_latest_keeps_the_best_newest_record_of_each_key_with_its_rows_cost(
        outcomes: list[Outcome], chunk: int) -> None:
    table = outcomes_table(outcomes)
    table = table.from_batches(table.to_batches(max_chunksize=chunk), table.schema)
    got = latest(table).to_pylist()
    assert len(got) == len({o.key for o in outcomes})
    assert {r["key"]: r for r in got} == expected_latest(outcomes)


def test_status_reads_a_run_in_progress_without_sorting_its_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in progress records most rows once: ``status``, run every few minutes beside it,
    reads their records as they are, where it sorted every record of the journal by key and
    copied every column in that order (a million rows: the most CPU and memory it took)."""
    journal = Journal(tmp_path)
    journal.create()
    writer = JournalWriter(journal.directory, "20260101T000000-aaaaaa")
    for i in range(3_000):
        writer.add(Outcome(key=f"row-{(i * 7919) % 3_000}", status="ok" if i % 5 else "failed",
                           cost_usd=0.001, finished_at=float(i)))
        if i % 1_000 == 999:
            writer.flush()
    # Sent again by --retry-failed, say, and failed: the ok record written at i = 1 is kept.
    writer.add(Outcome(key="row-1919", status="failed", finished_at=5_000.0))
    writer.flush()

    def no_sort(*args: object, **kwargs: object) -> None:
        raise AssertionError("the journal's records were sorted")

    monkeypatch.setattr(compute, "sort_by", no_sort)
    monkeypatch.setattr(compute, "sort_indices", no_sort)
    rows = list(journal.iter_latest(["cost_usd"]))
    assert sum(t.num_rows for t in rows) == 3_000
    by_key = {r["key"]: r for t in rows for r in t.to_pylist()}
    assert by_key["row-1919"]["status"] == "ok" and by_key["row-1919"]["finished_at"] == 1.0
    assert [r["status"] for r in rows[0].slice(0, 6).to_pylist()] == ["failed", *["ok"] * 4,
                                                                      "failed"]


class _Rows:
    """What ``fold_latest`` adds to: every record given, by key."""

    def __init__(self) -> None:
        self.by_key: dict[str, dict[str, Any]] = {}

    def add(self, part: Any) -> None:
        for row in part.to_pylist():
            assert row["key"] not in self.by_key
            self.by_key[row["key"]] = row


@settings(max_examples=150, deadline=None)
@given(records, st.integers(1, 8))
def test_status_reads_a_segment_at_a_time_the_records_read_gives(
        tmp_path_factory: pytest.TempPathFactory, outcomes: list[Outcome], per: int) -> None:
    """``status`` beside a run in progress read every column of every segment at once (a
    million rows: 250–310 MB); it now reads the keys first, then the other columns a segment
    at a time, keeping the same records, their rows' costs carried, as ``read`` does."""
    journal = Journal(tmp_path_factory.mktemp("out"))
    journal.create()
    writer = JournalWriter(journal.directory, "20260101T000000-aaaaaa")
    for i, o in enumerate(outcomes):
        writer.add(o)
        if i % per == per - 1:
            writer.flush()
    writer.flush()
    got = journal.fold_latest(["cost_usd", "earlier_cost_usd", "content"], _Rows).by_key
    columns = ["key", "status", "finished_at", "cost_usd", "earlier_cost_usd", "content"]
    assert got == {k: {c: r[c] for c in columns} for k, r in expected_latest(outcomes).items()}


def test_a_long_run_writes_a_few_dozen_segments_not_one_a_second(tmp_path: Path) -> None:
    """A run writes a segment a second: one of days against a rate-limited API left hundreds of
    thousands of small segments, which every ``status`` and the next start read one by one
    (38,000 of them, 1.9 million rows: 55 s a ``status``). The writer now merges its own."""
    journal = Journal(tmp_path)
    journal.create()
    writer = JournalWriter(journal.directory, "20260101T000000-aaaaaa")
    outcomes = [Outcome(key=f"row-{i % 700}", status="ok" if i % 3 else "failed",
                        content=f"answer {i}", cost_usd=0.001, finished_at=float(i % 5))
                for i in range(1_000)]
    for o in outcomes:
        writer.add(o)
        writer.write(writer.take())
    assert len(journal.segments()) <= 48  # 1,000 before
    assert {r["key"]: r for r in journal.read().to_pylist()} == expected_latest(outcomes)
    assert not [p for p in journal.directory.iterdir() if p.name.startswith(".")]


@settings(max_examples=100, deadline=None)
@given(records, st.integers(2, 3), st.integers(1, 12))
def test_merged_segments_keep_the_records_read_gives(
        tmp_path_factory: pytest.TempPathFactory, outcomes: list[Outcome], fan: int,
        most: int) -> None:
    """Segments merged as a run goes keep every record, in the order written: the same
    latest records, a tie in time won by the one written last."""
    journal = Journal(tmp_path_factory.mktemp("out"))
    journal.create()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(journal_module, "MERGE_FAN", fan)
        patch.setattr(journal_module, "MERGE_ROWS", most)
        writer = JournalWriter(journal.directory, "20260101T000000-aaaaaa")
        for o in outcomes:
            writer.add(o)
            writer.write(writer.take())
    assert {r["key"]: r for r in journal.read().to_pylist()} == expected_latest(outcomes)
    got = journal.fold_latest(["cost_usd", "earlier_cost_usd", "content"], _Rows).by_key
    columns = ["key", "status", "finished_at", "cost_usd", "earlier_cost_usd", "content"]
    assert got == {k: {c: r[c] for c in columns} for k, r in expected_latest(outcomes).items()}
