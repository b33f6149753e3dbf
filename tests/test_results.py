"""Journal compaction in input order, and results merged from it, without a server."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchrunner import compute, io, journal
from batchrunner.config import load_job
from batchrunner.journal import Journal, JournalWriter, latest, outcomes_table, write_segment
from batchrunner.records import RETRYING, Outcome
from batchrunner.report import format_usd
from batchrunner.results import InputOrder, key_strings, rebuild_outputs
from batchrunner.runner import (
    RunOptions,
    RunSummary,
    _first_duplicate,
    iter_rows,
    plan_from_output,
    prepare,
)


def _o(key: str, status: str, t: float, content: str = "") -> Outcome:
    return Outcome(key=key, status=status, content=content or f"{key}@{t}", finished_at=t)


class _Order:
    """Keys are positions, or what ``positions`` makes of them."""

    def __init__(self, tag: str = "x", rows: int = 1000,
                 positions: Callable[[pa.Array], pa.Array] | None = None) -> None:
        self.tag, self.rows = tag, rows
        self._positions = positions

    def positions(self, keys: pa.Array) -> pa.Array:
        if self._positions is not None:
            return self._positions(keys)
        return pc.cast(keys, pa.int64())


BY_POSITION = _Order()


def _keys(seg: Path) -> list[str]:
    return pq.read_table(seg, columns=["key"])["key"].to_pylist()


@pytest.fixture(params=["one batch", "a batch a record"])
def batches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of one row met within one index batch, or across batches."""
    if request.param != "one batch":
        monkeypatch.setattr(journal, "_INDEX_ROWS", 1)
        monkeypatch.setattr(journal, "_GATHER_ROWS", 1)


@pytest.mark.usefixtures("batches")
def test_compact_sorts_by_position_and_keeps_the_latest_record(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    first = JournalWriter(j.directory, "20260101T000000-aaaaaa")
    for o in [_o("3", "failed", 1), _o("1", "ok", 1, "kept"), _o("2", "failed", 1),
              _o("0", "ok", 1, "old")]:
        first.add(o)
    first.flush()
    second = JournalWriter(j.directory, "20260102T000000-bbbbbb")
    for o in [_o("1", "failed", 2), _o("2", "failed", 2, "newer failure"), _o("0", "ok", 2, "new"),
              _o("3", "ok", 2, "fixed")]:
        second.add(o)
    second.flush()
    expected = latest(j.read())

    seg = j.compact("run3", _Order("order-a"))
    assert seg is not None and j.segments() == [seg]
    table = pq.read_table(seg).replace_schema_metadata(None)
    assert table["key"].to_pylist() == ["0", "1", "2", "3"]
    assert table["content"].to_pylist() == ["new", "kept", "newer failure", "fixed"]
    assert table["status"].to_pylist() == ["ok", "ok", "failed", "ok"]
    assert table.sort_by("key").equals(expected.sort_by("key"))


@pytest.mark.usefixtures("batches")
def test_same_time_goes_to_the_later_segment(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    runs = (("20260101T000000-aaaaaa", "earlier"), ("20260102T000000-bbbbbb", "later"))
    for run, content in runs:
        w = JournalWriter(j.directory, run)
        w.add(_o("0", "failed", 5.0, content))
        w.flush()
    seg = j.compact("run3", BY_POSITION)
    assert seg is not None
    assert pq.read_table(seg)["content"].to_pylist() == ["later"]


@pytest.mark.usefixtures("batches")
def test_newer_time_wins_over_a_later_segment(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    for run, t in (("20260101T000000-aaaaaa", 9.0), ("20260102T000000-bbbbbb", 4.0)):
        w = JournalWriter(j.directory, run)  # two writers whose clocks disagree
        w.add(_o("0", "failed", t, f"at {t}"))
        w.flush()
    seg = j.compact("run3", BY_POSITION)
    assert seg is not None
    assert pq.read_table(seg)["content"].to_pylist() == ["at 9.0"]


@pytest.mark.usefixtures("batches")
@pytest.mark.parametrize("rows", [3, 0], ids=["rows in the input", "keys the input lacks"])
def test_the_estimates_of_tries_with_no_usage_take_no_memory_where_no_record_has_one(
        tmp_path: Path, rows: int) -> None:
    """A journal whose records hold no ``unreported_usd`` (most jobs': no try was cut) is
    indexed without an array of them (8 MB a million rows at every compaction, which took the
    memory scenario's 1,000,000-row peak to 1.19x its 100,000-row one); one that has one keeps
    it, carried to the row's compacted record."""
    j = Journal(tmp_path)
    j.create()
    w = JournalWriter(j.directory, "20260101T000000-aaaaaa")
    for key in ("0", "1"):
        w.add(_o(key, "ok", 1.0))
    w.flush()
    index = j.latest(_Order(rows=rows), cost=True)
    assert index.unreported is None and index.located_unreported() is None
    assert index.prior_unreported() == 0.0
    w = JournalWriter(j.directory, "20260102T000000-bbbbbb")
    w.add(Outcome(key="2", status=RETRYING, finished_at=2.0, unknown_tries=1,
                  unreported_usd=0.25))
    w.add(_o("2", "ok", 3.0))
    w.flush()
    index = j.latest(_Order(rows=rows), cost=True)
    located = index.located_unreported()
    assert located is not None and np.nansum(located) == 0.25
    assert index.prior_unreported() == (0.25 if rows else 0.0)  # the input's rows only
    seg = j.compact("run3", _Order(rows=rows))
    assert seg is not None
    assert pq.read_table(seg)["unreported_usd"].to_pylist() == [None, None, 0.25]


@pytest.mark.usefixtures("batches")
@pytest.mark.parametrize("rows", [3, 0], ids=["rows in the input", "keys the input lacks"])
def test_a_rerun_that_failed_after_an_ok_keeps_the_answer_and_its_cost(tmp_path: Path,
                                                                       rows: int) -> None:
    """Row 0 was ok ($1), rerun and failed billed ($0.5, carrying the $1), rerun and failed
    unbilled; row 1 was ok then ok again. The ok answers win and the rows' whole costs stay."""
    j = Journal(tmp_path)
    j.create()

    def rec(key: str, status: str, t: float, cost: float | None,
            earlier: float | None) -> Outcome:
        return Outcome(key=key, status=status, content=f"{key}@{t}", finished_at=t,
                       cost_usd=cost, earlier_cost_usd=earlier)

    runs = [[rec("0", "ok", 1, 1.0, None), rec("1", "ok", 1, 2.0, None)],
            [rec("0", "failed", 2, 0.5, 1.0), rec("1", "ok", 2, 3.0, 2.0)],
            [rec("0", "failed", 3, None, 1.5), rec("2", "failed", 3, None, None)]]
    for i, records in enumerate(runs):
        w = JournalWriter(j.directory, f"2026010{i + 1}T000000-aaaaaa")
        for o in records:
            w.add(o)
        w.flush()
    index = j.latest(_Order(rows=rows), cost=True)
    if rows:
        assert index.cost is not None and index.cost.tolist()[:2] == [1.5, 5.0]
    costs = [*(index.cost.tolist() if index.cost is not None else []),
             *index.others["cost"].to_pylist()]
    assert sum(c for c in costs if c == c and c is not None) == 6.5
    assert index.prior_cost() == (6.5 if rows else 0.0)  # the input's rows only
    read = j.read().sort_by("key")
    seg = j.compact("run4", _Order(rows=rows))
    assert seg is not None
    for table in (read, pq.read_table(seg)):
        assert table["content"].to_pylist() == ["0@1", "1@2", "2@3"]
        assert table["cost_usd"].to_pylist() == [1.0, 3.0, None]
        assert table["earlier_cost_usd"].to_pylist() == [0.5, 2.0, None]


@pytest.mark.usefixtures("batches")
@pytest.mark.parametrize("rows", [7, 0], ids=["rows in the input", "keys the input lacks"])
def test_a_retrying_record_ranks_below_any_outcome_and_above_none(tmp_path: Path,
                                                                  rows: int) -> None:
    """``retrying`` records (a billed attempt of a row to be sent again) lose to any ``ok`` or
    ``failed`` record of their row whatever their times, win over no record, and carry what
    the billed attempts cost: in ``_latest`` (``ok`` -1: no outcome), ``latest()`` and
    compaction."""
    j = Journal(tmp_path)
    j.create()

    def rec(key: str, status: str, t: float, cost: float | None, earlier: float | None,
            row_hash: int | None = None) -> Outcome:
        return Outcome(key=key, status=status, finished_at=t, cost_usd=cost,
                       earlier_cost_usd=earlier, row_hash=row_hash,
                       content=None if status == RETRYING else f"{key}@{t}")

    runs = [[rec("0", "ok", 1, 1.0, None, 10), rec("1", "failed", 1, 0.2, None),
             rec("2", RETRYING, 1, None, 0.4), rec("3", RETRYING, 3, None, 0.1),
             rec("5", RETRYING, 4, None, 0.25), rec("6", RETRYING, 1, None, 0.5)],
            [rec("0", RETRYING, 5, None, 1.5, 20), rec("1", RETRYING, 9, None, 0.5),
             rec("2", RETRYING, 2, None, 0.7), rec("3", "ok", 2, 1.0, 0.1),
             rec("5", "failed", 1, None, 0.25), rec("6", RETRYING, 0.5, None, 0.5)]]
    for i, records in enumerate(runs):
        w = JournalWriter(j.directory, f"2026010{i + 1}T000000-aaaaaa")
        for o in records:
            w.add(o)
        w.flush()
    winners = {"0": ("ok", 1.0, 0.5), "1": ("failed", 0.2, 0.3), "2": (RETRYING, None, 0.7),
               "3": ("ok", 1.0, 0.1), "5": ("failed", None, 0.25), "6": (RETRYING, None, 0.5)}
    costs = {"0": 1.5, "1": 0.5, "2": 0.7, "3": 1.1, "5": 0.25, "6": 0.5}
    index = j.latest(_Order(rows=rows), cost=True)
    if rows:
        assert index.ok.tolist() == [1, 0, -1, 1, -1, 0, -1]  # 4: no record; 2, 6: retrying
        assert [loc >= 0 for loc in index.loc.tolist()] == [True] * 4 + [False] + [True] * 2
        assert index.cost is not None
        assert [c if c == c else None for c in index.cost.tolist()] == [
            costs.get(str(p)) for p in range(rows)]
        assert index.prior_cost() == pytest.approx(sum(costs.values()))
    else:
        assert index.others["ok"].to_pylist() == [1, 0, -1, 1, 0, -1]
        assert index.others["cost"].to_pylist() == pytest.approx(list(costs.values()))
    # A retrying record made with a changed row's values now is still no outcome: the old
    # answer wins over it (the row is compared again by the next run).
    fresh = journal._latest(j.segments(), _Order(rows=7), cost=True,
                            fresh=(np.array([0]), np.array([20])))
    assert fresh.ok[0] == 1
    read = j.read().sort_by("key")
    seg = j.compact("run3", _Order(rows=rows))
    assert seg is not None
    for table in (read, pq.read_table(seg)):
        got = {r["key"]: (r["status"], r["cost_usd"], r["earlier_cost_usd"])
               for r in table.to_pylist()}
        assert got.keys() == winners.keys()
        for key, (status, cost, earlier) in winners.items():
            assert got[key][0] == status, key
            assert got[key][1] == cost, key
            assert got[key][2] == pytest.approx(earlier), key


def test_keys_the_input_lacks_come_last_by_key(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    w = JournalWriter(j.directory, "run1")
    for o in [_o("zeta", "ok", 1), _o("2", "ok", 1), _o("alpha", "failed", 1),
              _o("alpha", "ok", 0.5), _o("0", "ok", 1), _o("99", "ok", 1)]:
        w.add(o)
    w.flush()

    def positions(keys: pa.Array) -> pa.Array:  # "99" is past the input's end (10 rows)
        return pc.cast(pc.if_else(pc.match_substring_regex(keys, "^[0-9]+$"), keys, None),
                       pa.int64())

    seg = j.compact("run2", _Order(rows=10, positions=positions))
    assert seg is not None
    table = pq.read_table(seg)
    assert table["key"].to_pylist() == ["0", "2", "99", "alpha", "zeta"]
    assert table["status"].to_pylist() == ["ok", "ok", "ok", "ok", "ok"]  # ok beats later failure


@pytest.mark.parametrize("window", [7, 300])
def test_compact_gathers_scattered_records_across_many_row_groups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int) -> None:
    """Windows of 7 records take a few rows from each of many groups, a group at a time;
    one of 300 takes its every record from the groups joined (at most twice its rows)."""
    monkeypatch.setattr(journal, "_GATHER_ROWS", window)
    monkeypatch.setattr(journal, "ROW_GROUP_ROWS", 16)
    rng = random.Random(4)
    j = Journal(tmp_path)
    j.create()
    n = 300
    order = list(range(n))
    rng.shuffle(order)
    for s in range(0, n, 23):  # segments of 23 rows in random order, some with 2 row groups
        rows = outcomes_table([_o(str(i), "ok", 1.0) for i in order[s:s + 23]])
        journal._write_atomic(j.directory, f"seg-run1-w0-{s:06d}.parquet",
                              lambda f, rows=rows: pq.write_table(rows, f, row_group_size=13))
    retried = rng.sample(range(n), 40)  # a later run answered some rows again
    w = JournalWriter(j.directory, "run2")
    for i in retried:
        w.add(_o(str(i), "ok", 2.0, f"again {i}"))
    w.flush()

    seg = j.compact("run3", BY_POSITION)
    assert seg is not None
    table = pq.read_table(seg)
    assert table["key"].to_pylist() == [str(i) for i in range(n)]
    again = set(retried)
    assert table["content"].to_pylist() == [
        f"again {i}" if i in again else f"{i}@1.0" for i in range(n)]
    assert pq.ParquetFile(seg).num_row_groups == -(-n // 16)
    assert [t.num_rows for t in j.iter_compacted(["key"])] == [16] * (n // 16) + [n % 16]


def test_compacted_journal_is_left_alone_only_in_the_same_order(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    w = JournalWriter(j.directory, "run1")
    for i in (2, 0, 1):
        w.add(_o(str(i), "ok", 1))
    w.flush()
    seg = j.compact("run2", _Order("order-a"))
    assert seg is not None
    assert j.compact("run3", _Order("order-a")) == seg  # nothing to do

    def reverse(keys: pa.Array) -> pa.Array:
        return pc.subtract(10, pc.cast(keys, pa.int64()))

    again = j.compact("run3", _Order("order-b", positions=reverse))
    assert again is not None and again != seg and j.segments() == [again]
    assert _keys(again) == ["2", "1", "0"]


def test_crash_between_compaction_and_cleanup_reads_the_same(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    w = JournalWriter(j.directory, "run1")
    for i in range(5):
        w.add(_o(str(i), "ok" if i % 2 else "failed", float(i)))
        w.flush()
    keep = tmp_path / "keep"
    shutil.copytree(j.directory, keep)
    seg = j.compact("run2", BY_POSITION)
    assert seg is not None
    for p in keep.iterdir():  # as if the old segments had not been deleted yet
        shutil.copy(p, j.directory / p.name)
    assert len(j.segments()) == 6
    compacted = pq.read_table(seg)
    assert j.read().sort_by("key").equals(compacted.replace_schema_metadata(None))
    seg2 = j.compact("run3", BY_POSITION)
    assert seg2 is not None and j.segments() == [seg2]
    assert pq.read_table(seg2).equals(compacted)


def test_unreadable_segment_stops_compaction(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    write_segment(j.directory, "seg-run1-w0-000000.parquet", outcomes_table([_o("0", "ok", 1)]))
    (j.directory / "seg-run1-w0-000001.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(journal.JournalError, match=r"seg-run1-w0-000001\.parquet cannot be read"):
        j.compact("run2", BY_POSITION)
    assert len(j.segments()) == 2  # nothing deleted


def test_input_order_by_position_and_by_id(tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n7,a\n3,b\n10,c\n")
    source = io.open_input(csv)
    by_id = InputOrder(source, "id", 3, "f")
    keys = pa.array(["10", "7", "x", "3", None, "0", "99"])  # "0" sorts before every id
    assert by_id.positions(keys).to_pylist() == [2, 0, None, 1, None, None, None]
    by_pos = InputOrder(source, None, 3, "f")
    assert by_pos.positions(pa.array(["2", "0", "3", "r1", "01"])).to_pylist() == [
        2, 0, None, None, 1]
    assert by_id.tag != by_pos.tag


@pytest.mark.parametrize("binary_search", [True, False])
def test_input_order_by_id_with_and_without_arrows_binary_search(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binary_search: bool) -> None:
    """pc.search_sorted came in pyarrow 26: with an older one (None), ids are found by a dict,
    as the binary search finds them: an id given twice at its first row, a null id at none."""
    if binary_search and compute.search_sorted is None:
        pytest.skip("this pyarrow has no search_sorted")
    if not binary_search:
        monkeypatch.setattr(compute, "search_sorted", None)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"id": {i}, "text": "t"}}\n'
                            for i in ('"7"', '"3"', '"10"', '"3"', "null")))
    by_id = InputOrder(io.open_input(path), "id", 5, "f")
    keys = pa.array(["10", "7", "x", "3", None, "0", "99", ""])  # "0" sorts before every id
    for _ in range(2):  # the second call reuses what the first made
        got = by_id.positions(keys)
        assert got.type == pa.int64()
        assert got.to_pylist() == [2, 0, None, 1, None, None, None, None]
    assert by_id.positions(pa.array([], pa.string())).to_pylist() == []


def test_outcomes_table_matches_arrow_conversion_and_replaces_lone_surrogates() -> None:
    rows = [
        Outcome(key="0", status="ok", content='é "q"\n\t\\ 🙂', finish_reason="stop",
                prompt_tokens=3, completion_tokens=2**40, total_tokens=None, cost_usd=1.2345e-7,
                latency_ms=0.1 + 0.2, attempts=2, model="m", finished_at=1_764_000_000.123456),
        Outcome(key="1", status="failed", error_type="http_500", error_message="x" * 5000),
    ]
    cols = {name: [getattr(o, name) for o in rows] for name in journal.OUTCOME_COLUMNS}
    expected = pa.Table.from_pydict(cols, schema=journal.OUTCOME_SCHEMA)
    assert journal.outcomes_table(rows).equals(expected)
    odd = journal.outcomes_table([Outcome(key="2", status="failed",
                                          error_message="bad \ud800 text")])
    assert odd["error_message"].to_pylist() == ["bad ? text"]
    assert journal.outcomes_table([]).num_rows == 0


def test_a_segment_keeps_every_field_of_every_outcome_in_its_own_column(tmp_path: Path) -> None:
    """Each of an outcome's fields, given a value no other field has, is read back from a
    written segment under its own name, row by row."""
    def distinct(i: int) -> Outcome:
        values = {}
        for j, f in enumerate(fields(Outcome)):
            n = 1000 * i + j
            values[f.name] = (f"{f.name}-{i}" if f.type.startswith("str")
                              else float(n) + 0.5 if "float" in f.type else n)
        return Outcome(**values)

    rows = [distinct(i) for i in range(3)]
    w = JournalWriter(tmp_path, "20260101T000000-aaaaaa")
    for o in rows:
        w.add(o)
    w.flush()
    (seg,) = tmp_path.glob("seg-*.parquet")
    assert pq.read_table(seg).to_pylist() == [o.as_dict() for o in rows]


def test_outcomes_table_nulls_empty_text_and_nan() -> None:
    rows = [Outcome(key=f"k{i}", status="ok", content=["", None, "ü" * i][i % 3],
                    prompt_tokens=None if i % 4 == 0 else i,
                    cost_usd=[None, float("nan"), 0.5][i % 3],
                    finished_at=float(i)) for i in range(10)]
    table = journal.outcomes_table(rows)
    table.validate(full=True)
    assert table["content"].to_pylist() == [o.content for o in rows]
    assert table["prompt_tokens"].to_pylist() == [o.prompt_tokens for o in rows]
    assert table["cost_usd"].to_pylist() == [None, None, 0.5, None, None, 0.5, None, None, 0.5,
                                             None]
    assert table["attempts"].null_count == 0
    # Columns without a None, and columns of None only, take their own ways.
    whole = journal.outcomes_table([Outcome(key="a", status="ok", cost_usd=float("nan"),
                                            latency_ms=1.5, prompt_tokens=2**40),
                                    Outcome(key="b", status="ok", cost_usd=0.25, latency_ms=2.0,
                                            prompt_tokens=-1)])
    whole.validate(full=True)
    assert whole["cost_usd"].to_pylist() == [None, 0.25]
    assert whole["latency_ms"].to_pylist() == [1.5, 2.0]
    assert whole["prompt_tokens"].to_pylist() == [2**40, -1]
    assert whole["ttft_ms"].to_pylist() == [None, None]
    assert whole["content"].to_pylist() == [None, None]
    assert whole["content"].type == pa.string()


def _write_meta(out: Path, inp: Path, total: int, id_column: str | None) -> None:
    out.mkdir()
    (out / "job.json").write_text(json.dumps({
        "name": "t", "input_path": str(inp), "input_fingerprint": "f", "id_column": id_column,
        "request": {}, "total_rows": total, "output_format": "parquet", "prices": {}}))


@pytest.mark.parametrize("id_column", ["id", None])
def test_results_merge_the_compacted_journal_into_input_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, id_column: str | None) -> None:
    monkeypatch.setattr(journal, "_GATHER_ROWS", 3)
    monkeypatch.setattr(journal, "ROW_GROUP_ROWS", 4)
    ids = [f"k{(i * 7) % 23:02d}" for i in range(23)]  # not sorted
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{k},text {k}\n" for k in ids))
    out = tmp_path / "out"
    _write_meta(out, inp, len(ids), id_column)
    keys = ids if id_column else [str(i) for i in range(len(ids))]
    done = [i for i in range(len(ids)) if i % 4 != 1]  # every 4th row from the 2nd not done
    rng = random.Random(2)
    rng.shuffle(done)
    j = Journal(out)
    j.create()
    w = JournalWriter(j.directory, "run1")
    for n, i in enumerate(done):
        w.add(Outcome(key=keys[i], status="failed" if i % 5 == 0 else "ok",
                      content=f"answer {ids[i]}", finished_at=float(n)))
        if n % 5 == 4:
            w.flush()
    w.add(Outcome(key="stale", status="ok", content="from an older input", finished_at=0.0))
    w.flush()

    plan = plan_from_output(out)
    plan.source = io.open_input(inp, batch_size=5)
    summary = rebuild_outputs(plan, RunSummary(name="t"))
    table = pq.read_table(out / "results.parquet")
    assert table["id"].to_pylist() == ids
    want = [None if i % 4 == 1 else ("failed" if i % 5 == 0 else "ok") for i in range(len(ids))]
    assert table["status"].to_pylist() == want
    assert table["content"].to_pylist() == [
        None if i % 4 == 1 else f"answer {ids[i]}" for i in range(len(ids))]
    assert (summary.rows, summary.pending) == (23, sum(1 for s in want if s is None))
    assert summary.ok == want.count("ok") and summary.failed == want.count("failed")
    report = json.loads((out / "cost_report.json").read_text())
    assert report["rows"]["total"] == len(done)  # the input's rows: not the stale one
    assert ("1 row recorded by earlier runs not in the input any more: left out of these "
            "figures and the results") in report["warnings"]
    assert len(j.segments()) == 1
    # Dictionaries only for what repeats: the input's columns and status, not answers or keys.
    assert _dictionary_columns(out / "results.parquet") >= {"id", "text", "status"}
    assert not _dictionary_columns(out / "results.parquet") & {"content", "key", "request_id"}
    assert _dictionary_columns(j.segments()[0]) == {"status", "finish_reason", "error_type",
                                                   "model", "priced_as", "service_tier"}


def _dictionary_columns(path: Path) -> set[str]:
    meta = pq.ParquetFile(path).metadata
    group = meta.row_group(0)
    return {group.column(i).path_in_schema for i in range(meta.num_columns)
            if group.column(i).has_dictionary_page}


@pytest.mark.parametrize("retry_failed", [False, True])
def test_resume_skips_what_the_journal_has_by_position_mask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry_failed: bool) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    inp = tmp_path / "in.csv"
    ids = [f"id{(i * 5) % 11}" for i in range(11)]
    inp.write_text("id,text\n" + "".join(f"{k},t{k}\n" for k in ids))
    job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                          "model": "gpt-4o-mini", "output": str(tmp_path / "out")})
    first = prepare(job, RunOptions())
    assert len(first.done) == 0 and len(list(iter_rows(first))) == 11
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.json").write_text(json.dumps(first.job_meta))
    j = Journal(out)
    j.create()
    w = JournalWriter(j.directory, "run1")
    for k, status, cost in (("id5", "ok", 0.25), ("id0", "failed", 0.5), ("gone", "ok", 1.0),
                            ("id3", "ok", 2.0)):
        w.add(Outcome(key=k, status=status, cost_usd=cost, finished_at=1.0))
    w.flush()
    from batchrunner import compute

    sorts: list[int] = []
    real_sort = compute.sort_indices

    def counted(data: pa.Array, sort_keys: list[tuple[str, str]] | None = None) -> pa.Array:
        sorts.append(len(data))
        return real_sort(data, sort_keys)

    monkeypatch.setattr(compute, "sort_indices", counted)
    monkeypatch.delattr(compute, "count_distinct")
    plan = prepare(job, RunOptions(retry_failed=retry_failed))
    assert sorts.count(len(ids)) == 1  # the ids are sorted once: for repeats, and for keys
    skipped = {"id5", "id3"} | (set() if retry_failed else {"id0"})
    assert [k for k, _, _ in iter_rows(plan)] == [k for k in ids if k not in skipped]
    assert len(plan.done) == len(skipped)
    assert plan.prior_cost == pytest.approx(2.75)  # the input's rows' cost: not "gone"
    again = prepare(job, RunOptions(rerun_where="key == 'id3'"))
    assert [k for k, _, _ in iter_rows(again)] == [k for k in ids if k not in {"id5", "id0"}]


def test_first_duplicate_is_the_first_repeat_in_row_order() -> None:
    assert _first_duplicate(pa.array(["a", "b", "c"])) is None
    assert _first_duplicate(pa.array(["x", "b", "a", "b", "a", "x"])) == "b"
    assert key_strings(pa.array([1, None, 3])).to_pylist() == ["1", None, "3"]
    assert key_strings(pa.array([1.0])).to_pylist() == ["1.0"]  # as str() keys the rows


def test_rerun_where_reads_only_the_columns_it_names() -> None:
    from batchrunner.runner import _where_columns

    assert _where_columns("status == 'failed' and latency_ms > 100") == ["status", "latency_ms"]
    # Names inside a string, and methods, are not columns.
    assert _where_columns("error_message.str.contains('content')") == ["error_message"]
    assert _where_columns("`error_type` == 'timeout'") == ["error_type"]
    assert _where_columns("True") == []
    assert _where_columns("(status == 'ok'") is None  # unreadable: every column
    assert _where_columns("content.str.lower().str.contains('sorry')") == ["content"]
    assert _where_columns("content.str.contains('x', regex=False)") == ["content"]


def test_a_jobs_results_as_the_next_jobs_input_keep_every_column(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """One job's results fed to the next: its outcome columns are input columns now, so the
    new ones are named result2_status and so on, never a second column of the same name."""
    from batchrunner.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text,status,cost_usd\na,hi,open,1.5\nb,yo,closed,2\n")
    args = ["--id-column", "id", "--model", "gpt-4o-mini", "--simulator", "--progress", "none"]
    assert main(["run", "--input", "in.csv", "--prompt", "X {text}", "--output", "p1",
                 *args]) == 0
    assert main(["run", "--input", "p1/results.parquet", "--prompt", "Y {content}",
                 "--output", "p2", *args]) == 0
    table = pq.read_table(tmp_path / "p2" / "results.parquet")
    names = table.column_names
    assert len(names) == len(set(names))
    assert table["status"].to_pylist() == ["open", "closed"]  # the first input's
    assert table["result_status"].to_pylist() == ["ok", "ok"]  # the first job's
    assert table["result2_status"].to_pylist() == ["ok", "ok"]  # this job's
    assert table["cost_usd"].to_pylist() == ["1.5", "2"]  # a CSV's text, as it was
    assert all(v > 0 for v in table["result2_cost_usd"].to_pylist())
    assert " Y Echo: " in table["result_content"].to_pylist()[0]  # this job's answer
    assert main(["report", "p2"]) == 0
    # --rerun-where takes the names the results show; an outcome column's own name beside an
    # input column of that name filters on the outcome, and the run says so.
    p2 = ["run", "--input", "p1/results.parquet", "--prompt", "Y {content}", "--output", "p2",
          *args]
    capsys.readouterr()
    assert main([*p2, "--rerun-where", "result2_status == 'ok' and key == 'a'"]) == 0
    assert json.loads((tmp_path / "p2" / "job.json").read_text())["last_run"]["sent"] == 1
    assert main([*p2, "--rerun-where", "status == 'ok' and result2_cost_usd > 0"]) == 0
    assert json.loads((tmp_path / "p2" / "job.json").read_text())["last_run"]["sent"] == 2
    assert ("--rerun-where names status, which the input has too: it filters on the recorded "
            "outcome's status (the results' result2_status), not the input's"
            ) in capsys.readouterr().err


def test_an_input_column_named_as_an_outcome_in_another_case_is_not_shadowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export's headers in capitals (Status, Model) beside the outcome's status and model:
    the results held both, which Spark refuses as one column twice and DuckDB reads as
    ``status_1`` and ``Status``, a query of ``status`` given the input's. The outcome's are
    result_status and result_model there, as beside the same names in the same case."""
    from batchrunner.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("ID,Text,Status,MODEL,Result_Model\n1,hi,open,x,y\n")
    assert main(["run", "--input", "in.csv", "--id-column", "ID", "--prompt", "Say {Text}",
                 "--model", "gpt-4o-mini", "--simulator", "--progress", "none",
                 "--output", "out"]) == 0
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    names = table.column_names
    assert len({n.casefold() for n in names}) == len(names)
    assert table["Status"].to_pylist() == ["open"]
    assert table["result_status"].to_pylist() == ["ok"]
    assert table["result2_model"].to_pylist() == ["gpt-4o-mini"]
    assert "status" not in names and "result_model" not in names


def test_status_and_estimate_read_a_compacted_journal_a_row_group_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``status`` and ``estimate`` on a finished job (its journal one compacted segment, one
    record a row) hold a row group of it at a time, not the whole journal, and say what
    reading it whole says."""
    from batchrunner.cli import main
    from batchrunner.estimate import _read_answers
    from batchrunner.status import format_status

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(journal, "ROW_GROUP_ROWS", 8)
    rows = [f"r{i},text {i}{' [[sim:400]]' if i in (3, 17) else ''}" for i in range(40)]
    (tmp_path / "in.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    assert main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
                 "--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output",
                 "out"]) == 3
    out = tmp_path / "out"
    assert len(Journal(out).segments()) == 1
    read: list[int] = []
    real = journal._read_group

    def counted(pf: pq.ParquetFile, seg: Path, rg: int | None,
                columns: list[str] | None) -> pa.Table:
        t = real(pf, seg, rg, columns)
        read.append(t.num_rows)
        return t

    monkeypatch.setattr(journal, "_read_group", counted)
    status = format_status(out)
    assert "40 of 40 rows finished (38 ok, 2 failed, 0 to do)" in status
    assert re.search(r"\n  failed \w+: 2\n", status), status
    assert sum(read) == 40 and max(read) == 8
    read.clear()  # estimate's mean of the answers so far, likewise
    answers = _read_answers(plan_from_output(out))
    observed, by_model = answers.observed, answers.by_model
    assert observed is not None and by_model == {"gpt-4o-mini": observed}
    mean, answers, _ = observed
    assert answers == 38 and sum(read) == 40 and max(read) == 8
    monkeypatch.setattr(Journal, "iter_latest",
                        lambda self, columns=None: iter([self.read(columns)]))
    assert format_status(out) == status
    ok = pq.read_table(out / "results.parquet").filter(pc.field("status") == "ok")
    assert mean == pytest.approx(pc.mean(ok["completion_tokens"]).as_py())


def test_rows_removed_from_an_id_keyed_input_leave_the_figures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Rows done, then removed from an input keyed by id: the results, the summary, the
    report and status count the input's rows, and say the journal holds more."""
    from batchrunner.cli import main
    from batchrunner.status import format_status

    monkeypatch.chdir(tmp_path)
    rows = [f"r{i},text {i},{1 if i < 3 else ''}" for i in range(6)]  # r0-r2 cut at 1 token
    (tmp_path / "in.csv").write_text("id,text,budget\n" + "\n".join(rows) + "\n")
    args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}", "--model",
            "gpt-4o-mini", "--simulator", "--progress", "none", "--output", "out",
            "--from-column", "max_tokens=budget"]
    assert main(args) == 0
    (tmp_path / "in.csv").write_text("id,text,budget\n" + "\n".join(rows[2:]) + "\n")
    assert "for the job" not in capsys.readouterr().out  # a first run: its cost is the job's
    assert main(args) == 0
    out, err = capsys.readouterr()
    said = out + err
    assert re.search(r"cost: \$0\.\d+ for the job \(to the built-in simulator", out), out
    assert "  nothing to do: earlier runs did the 4 rows, so none was sent\n" in out
    assert "4 rows: 4 ok, 0 failed" in said and "1 row cut at max_tokens" in said
    assert "changed in the input since" not in said  # rows removed, none changed
    assert ("2 rows recorded in out by earlier runs are not in this input: the results and "
            "reports hold this input's rows only") in said
    assert pq.read_table(tmp_path / "out" / "results.parquet").num_rows == 4
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["rows"]["total"] == 4 and report["rows"]["cut_at_length"] == 1
    assert ("2 rows recorded by earlier runs not in the input any more: left out of these "
            "figures and the results") in report["warnings"]
    status = format_status(tmp_path / "out")
    assert "4 of 4 rows finished (4 ok, 0 failed, 0 to do)" in status
    assert main(["status", "out/job.json"]) == 0  # the directory's record names it too
    assert "4 of 4 rows finished" in capsys.readouterr().out
    assert "the journal also holds 2 rows the input no longer has" in status
    # Rows both removed and added, the run killed before it sent the new ones: status counts
    # the input's rows, the new ones to do.
    (tmp_path / "in.csv").write_text("id,text,budget\n" + "\n".join(rows[4:]) + "\nn1,new,\n"
                                     "n2,new,\n")
    assert main([*args, "--max-cost", "0.0000001"]) != 0  # stops before sending a row
    status = format_status(tmp_path / "out")
    assert "2 of 4 rows finished (2 ok, 0 failed, 2 to do)" in status
    assert "the journal also holds 4 rows the input no longer has" in status


def test_a_reruns_cost_for_the_job_and_this_run_count_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun whose row was billed once without an answer, then answered: the summary's
    figure for the job and its figure for this run both count what was billed, that retry
    included, so this run's is part of the job's and each equals the sum it names."""
    from batchrunner.cli import main

    monkeypatch.chdir(tmp_path)
    rows = [f"r{i},text {i}" for i in range(8)]
    rows[6] = "r6,text 6 [[sim:no_choices*1]]"  # billed (usage), no answer: sent again
    (tmp_path / "in.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}", "--model",
            "gpt-4o-mini", "--simulator", "--progress", "none", "--output", "out"]
    assert main([*args, "--limit", "4"]) == 0
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    results = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    answers = float(results["cost_usd"].sum())
    earlier = float(results["earlier_cost_usd"].sum())
    this_run = float(results["cost_usd"][4:].sum()) + earlier
    assert earlier > 0 and results["attempts"][6] == 2
    found = re.search(r"cost: (\$[\d.]+) \(plus (\$[\d.]+) for earlier attempts of rows sent "
                      r"again\); (\$[\d.]+) spent in all, (\$[\d.]+) of it this "
                      r"run;", out)
    assert found, out
    assert found.groups() == tuple(format_usd(v) for v in
                                   (answers, earlier, answers + earlier, this_run)), out


def test_rows_sent_again_as_their_text_changed_count_for_fail_fast(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Tonight's input edits every row done, and every edited row is refused alike: they are
    sent for their new text as new rows are, so the first ones failing stop the job (exit 4)
    as new rows would, not the whole input failing; --retry-failed rows still do not count."""
    from batchrunner.cli import main

    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"r{i},text {i}\n" for i in range(60)))
    args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}", "--model",
            "gpt-4o-mini", "--simulator", "--progress", "none", "--output", "out",
            "--concurrency", "2"]
    assert main(args) == 0
    inp.write_text("id,text\n" + "".join(f"r{i},text {i} [[sim:404]]\n" for i in range(60)))
    capsys.readouterr()
    assert main(args) == 4
    said = capsys.readouterr()
    assert "rows to finish all failed with http_404" in said.out + said.err
    sent = json.loads((tmp_path / "out" / "job.json").read_text())["last_run"]["sent"]
    assert 20 <= sent < 60
    # Sent again for their own failures, they do not count: every one is sent.
    assert main([*args, "--retry-failed"]) == 4  # the rows changed but not sent: left to do
    capsys.readouterr()
    assert main([*args, "--retry-failed"]) == 3
    out = capsys.readouterr().out
    assert "60 rows: 0 ok, 60 failed" in out
