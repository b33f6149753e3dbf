"""Reading inputs and writing results with real files: what a user would check by hand."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrunner import io as bio
from batchrunner.errors import InputError, UsageError
from batchrunner.io import (
    RESULT_FORMATS,
    SUPPORTED_SUFFIXES,
    InputSource,
    ResultWriter,
    open_input,
    remove_stale_temp_files,
    temp_path_for,
    write_atomic_bytes,
)

Writer = Callable[[str, bytes], Path]


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


def rows_of(source: InputSource, columns: list[str] | None = None) -> list[dict[str, object]]:
    return [row for batch in source.batches(columns) for row in batch.to_pylist()]


def input_error(path: Path, **kwargs: int) -> str:
    """Open ``path`` and read it all, expecting an InputError; return its one-line message."""
    with pytest.raises(InputError) as info:
        rows_of(open_input(path, **kwargs))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert path.name in message
    return message


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------------------------
# CSV


def test_csv_reads_every_column_as_text_in_order(write: Writer) -> None:
    path = write(
        "products.csv",
        b'id,name,price,note\n007,"Widget, large",12.50,NA\n010,"say ""hi""\nplease",3,\n',
    )
    source = open_input(path)
    assert source.kind == "csv"
    assert source.columns == ["id", "name", "price", "note"]
    assert source.schema == pa.schema([(c, pa.string()) for c in source.columns])
    assert rows_of(source) == [
        {"id": "007", "name": "Widget, large", "price": "12.50", "note": "NA"},
        {"id": "010", "name": 'say "hi"\nplease', "price": "3", "note": ""},
    ]
    assert rows_of(source, ["note", "id"]) == [
        {"note": "NA", "id": "007"},
        {"note": "", "id": "010"},
    ]


def test_tsv_is_read_as_tab_separated_csv(write: Writer) -> None:
    """A .tsv file: tabs between values, commas and semicolons inside them kept; a quoted
    value may hold a tab or a line break, as Excel writes it."""
    path = write("products.tsv", b'id\tname\tnote\n007\tWidget, large; blue\t"a\tb"\n'
                                 b'010\t"two\nlines"\t\n')
    source = open_input(path)
    assert source.kind == "csv" and source.columns == ["id", "name", "note"]
    assert rows_of(source) == [
        {"id": "007", "name": "Widget, large; blue", "note": "a\tb"},
        {"id": "010", "name": "two\nlines", "note": ""},
    ]
    for data, said in ((b"id\ttext\n1\ta\n2\tb\tc\n",
                        "row 2 (line 3) has 3 fields, the header has 2"),
                       (b'id\ttext\n1\t"open\n2\tb\n', "row 1 (line 2) opens a quote")):
        assert said in input_error(write("bad.tsv", data))


def test_csv_utf8_bom_is_not_part_of_the_first_column_name(write: Writer) -> None:
    path = write("bom.csv", "\ufeffid,text\n1,héllo\n".encode())
    source = open_input(path)
    assert source.columns == ["id", "text"]
    assert rows_of(source) == [{"id": "1", "text": "héllo"}]


def test_csv_streams_in_batches_of_at_most_batch_size(write: Writer) -> None:
    lines = ["id,text"] + [f"{i:05d},row {i}" for i in range(2500)]
    path = write("many.csv", ("\n".join(lines) + "\n").encode())
    source = open_input(path, batch_size=1000)
    sizes = [b.num_rows for b in source.batches()]
    assert sizes == [1000, 1000, 500]
    ids = [v for b in source.batches(["id"]) for v in b.column(0).to_pylist()]
    assert ids == [f"{i:05d}" for i in range(2500)]


def test_csv_reader_never_reads_the_whole_file_at_once(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bio, "CSV_BLOCK_SIZE", 1 << 14)
    lines = ["id,text"] + [f"{i},{'x' * 90}" for i in range(2000)]  # ~190 KiB
    path = write("big.csv", ("\n".join(lines) + "\n").encode())
    source = open_input(path, batch_size=100_000)
    source.batch_bytes = 1 << 14  # blocks are put together up to batch_bytes
    sizes = [b.num_rows for b in source.batches()]
    assert len(sizes) > 5 and sum(sizes) == 2000


# Reads an input file's rows in 1 MiB batches in a process of its own, and prints the most
# memory Arrow held at once (the pool's peak: the rest of a test session's would mix in).
_ARROW_PEAK = """
import sys
import pyarrow as pa
from batchrunner.io import open_input
source = open_input(sys.argv[1])
source.batch_bytes = 1 << 20
rows = sum(batch.num_rows for batch in source.batches())
print(rows, pa.default_memory_pool().max_memory())
"""


def test_a_csv_file_is_not_read_far_ahead_of_its_rows(tmp_path: Path) -> None:
    """pyarrow's CSV reader reads some 32 blocks ahead of the rows taken from it: with 16 MiB
    blocks, a 600,000-row CSV file of 1 kB texts made a run peak at 760 MB and ``report`` at
    990 MB, where the same table as Parquet took 160 MB. Here, 48 MB of CSV read 1 MiB of rows
    at a time holds a few MB of it at once, however large the file."""
    n = 48_000
    text = b"x" * 990
    path = tmp_path / "export.csv"
    path.write_bytes(b"id,text\n" + b"".join(b'%06d,"%s"\n' % (i, text) for i in range(n)))
    done = subprocess.run([sys.executable, "-c", _ARROW_PEAK, str(path)], capture_output=True,
                          text=True, check=True, timeout=120)
    rows, peak = map(int, done.stdout.split())
    assert rows == n
    assert peak < 24 << 20, f"reading the rows held {peak >> 20} MB at once"


def test_a_csv_value_longer_than_a_block_still_reads(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 2 MB document among short rows, read with blocks of 16 KiB: the read starts again with
    # larger blocks from where it was, every row once and in order.
    monkeypatch.setattr(bio, "CSV_BLOCK_SIZE", 1 << 14)
    doc = "line of a long document\n" * 80_000
    before = [f"{i},short {i}" for i in range(3000)]
    after = [f"{i},after {i}" for i in range(3000, 6000)]
    body = "\n".join(["id,text", *before, f'doc,"{doc}"', *after]) + "\n"
    path = write("long.csv", body.encode())
    source = open_input(path, batch_size=1000)
    rows = rows_of(source)
    assert len(rows) == 6001
    assert rows[3000] == {"id": "doc", "text": doc}
    assert [r["id"] for r in rows[:3000]] == [str(i) for i in range(3000)]
    assert [r["id"] for r in rows[3001:]] == [str(i) for i in range(3000, 6000)]
    assert [v for b in source.batches(["id"]) for v in b.column(0).to_pylist()] == [
        r["id"] for r in rows]
    assert max(b.num_rows for b in source.batches()) <= 1000


def test_a_csv_files_blocks_are_put_together_with_the_oldest_pyarrow_allowed(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyproject allows pyarrow 16, and pa.concat_batches came in 19: a CSV file of many blocks
    # must read without it.
    monkeypatch.delattr(pa, "concat_batches", raising=False)
    monkeypatch.setattr(bio, "CSV_BLOCK_SIZE", 1 << 12)
    body = "\n".join(["id,text", *(f"{i},text of row {i}" for i in range(2000))]) + "\n"
    source = open_input(write("blocks.csv", body.encode()), batch_size=1000)
    batches = list(source.batches())
    assert batches[0].num_rows >= 1000  # blocks of ~200 rows put together
    assert rows_of(source) == [{"id": str(i), "text": f"text of row {i}"} for i in range(2000)]


def test_a_csv_value_longer_than_the_largest_block_is_named(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bio, "CSV_MAX_BLOCK_SIZE", 1 << 20)  # blocks of 256 KiB, then 1 MiB
    # Rows whose quoted values hold line ends: the long one is row 3001, on line 3012.
    rows = "".join(f'{i},"short\n{i}"\n' if i < 10 else f"{i},short {i}\n" for i in range(3000))
    path = write("huge.csv", f'id,text\n{rows}doc,"{"x" * 3_000_000}"\n1,a\n'.encode())
    with pytest.raises(InputError) as info:
        rows_of(open_input(path))
    assert str(info.value) == (
        f"input {path}: row 3001 (line 3012) holds a value larger than 1 MiB, or a quote that "
        "is never closed — check the quoting")


def test_a_csv_value_of_many_quotes_longer_than_the_largest_block_is_named(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value whose quotes, each written twice in the file, make it longer than a block (JSON
    text in a cell) was not found, its text being shorter, and the message named only the row
    before it; it is named with its line."""
    monkeypatch.setattr(bio, "CSV_MAX_BLOCK_SIZE", 1 << 20)
    rows = "".join(f"{i},short {i}\n" for i in range(3000))
    doc = '"' * 1_040_000  # 2 MiB in the file, under 1 MiB of text
    path = write("quotes.csv", f'id,text\n{rows}doc,"{doc.replace(chr(34), 2 * chr(34))}"\n'
                               "1,a\n".encode())
    with pytest.raises(InputError) as info:
        rows_of(open_input(path))
    assert str(info.value) == (
        f"input {path}: row 3001 (line 3002) holds a value larger than 1 MiB, or a quote that "
        "is never closed — check the quoting")


@pytest.mark.parametrize(("error", "expected"), [
    ("CSV parse error: Expected 2 columns, got 3: x", "a row after row 2 (from line 6 on) has "
     "3 fields, the header has 2 — fix the quoting or the delimiter"),
    ("straddling object straddles two block boundaries", "a row after row 2 (from line 6 on) "
     "holds a value larger than 16 MiB"),
    ("CSV parse error: something else", "cannot be read as CSV after row 2, from line 6 on "
     "(CSV parse error: something else)"),
])
def test_a_csv_read_that_stops_where_no_row_is_found_names_the_line(
        write: Writer, error: str, expected: str) -> None:
    """The messages for a read that stopped where the rows, read again to name the one at
    fault, hold none (the file changed since, or reads otherwise) named only the row before
    it; they name the line the read stopped at too, as the others do."""
    path = write("ok.csv", b'id,text\n1,"two\nlines"\n\n2,b\n3,c\n')
    source = open_input(path)
    if "straddl" in error:
        source._block_size = bio.CSV_MAX_BLOCK_SIZE  # no larger blocks to try
    message = str(source._error(pa.ArrowInvalid(error), 2))  # type: ignore[attr-defined]
    assert message.startswith(f"input {path}: {expected}")


def test_a_csv_readers_file_is_its_own_to_close(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow's CSV reader reads ahead in a thread that goes on after the reader is closed: a
    stream closed under it let that thread read from whatever file next got its descriptor's
    number, so a read restarted with larger blocks (a value over a block) once in some 1,000
    met an empty first block and said the file had no data rows. The reader is given the path,
    and so owns its file until it is done with it."""
    given: list[object] = []
    open_csv = pa_csv.open_csv

    def recording(source: object, *args: object, **kwargs: object) -> object:
        given.append(source)
        return open_csv(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bio.pa_csv, "open_csv", recording)
    monkeypatch.setattr(bio, "CSV_MAX_BLOCK_SIZE", 1 << 20)
    rows = "".join(f"{i},short {i}\n" for i in range(3000))
    path = write("long.csv", f'id,text\n{rows}doc,"{"x" * 500_000}"\n1,a\n'.encode())
    source = open_input(path)
    assert len(rows_of(source)) == 3002  # read again with 1 MiB blocks from row 3001
    assert len(given) >= 3 and all(g == str(path) for g in given), given


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_wide_rows_come_in_batches_of_at_most_batch_bytes(tmp_path: Path, suffix: str) -> None:
    # Rows of 20 kB prompts: a batch of batch_size rows would be 20 MB; one of batch_bytes
    # (64 KiB here) holds 3. The id column alone still comes batch_size rows at a time.
    n, wide = 300, 20_000
    table = pa.table({"id": [f"r{i}" for i in range(n)],
                      "text": [f"{i} " + "x" * wide for i in range(n)]})
    path = tmp_path / f"wide{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path, row_group_size=100)
    elif suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in table.to_pylist()))
    source = open_input(path, batch_size=1000)
    source.batch_bytes = 64 << 10
    batches = list(source.batches())
    assert sum(b.num_rows for b in batches) == n
    assert [v for b in batches for v in b.column(0).to_pylist()] == table["id"].to_pylist()
    assert max(b.nbytes for b in batches) <= source.batch_bytes
    if suffix != ".csv":  # a CSV block is read whole (CSV_BLOCK_SIZE bounds it)
        raw = list(source._raw_batches(["id", "text"]))
        assert max(b.nbytes for b in raw) <= source.batch_bytes + wide + 100
    assert [b.num_rows for b in source.batches(["id"])] == [n]


def test_columns_empty_list_gives_row_counts_only(write: Writer) -> None:
    path = write("a.csv", b"a,b\n1,2\n3,4\n")
    batches = list(open_input(path).batches([]))
    assert sum(b.num_rows for b in batches) == 2
    assert all(b.num_columns == 0 for b in batches)


def test_unknown_column_names_the_file_and_the_columns(write: Writer) -> None:
    path = write("a.csv", b"a,b\n1,2\n")
    source = open_input(path)
    with pytest.raises(InputError, match=r"a\.csv: has no column 'c' — its columns are: a, b"):
        source.batches(["a", "c"])  # raised at the call, before any row is read


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("empty.csv", b"", "empty (0 bytes)"),
        ("header_only.csv", b"id,text\n", "no data rows"),
        ("header_no_newline.csv", b"id,text", "no data rows"),
        ("dup.csv", b"id,text,id\n1,2,3\n", "'id' appears twice"),
        (  # Excel saves a column past the data that was ever formatted as one with no name
            "excel.csv",
            b"id,text,,\r\n1,a,,\r\n",
            "2 columns have no name (empty header cells, as Excel saves columns past the data) "
            "— delete those columns, or give each a name",
        ),
        (
            "ragged.csv",
            b'id,text\n1,a\n2,"multi\nline"\n3,b,extra\n4,c\n',
            "row 3 (line 5) has 3 fields, the header has 2 — fix the quoting or the delimiter",
        ),
        ("short.csv", b"id,text\n1,a\n2\n", "row 2 (line 3) has 1 fields, the header has 2"),
        (
            "semicolons.csv",
            b"id;text\n1;plain\n2;hello, world\n",
            "row 2 (line 3) has 2 fields, the header has 1 — the file seems to be separated by "
            "semicolons; save it comma-separated",
        ),
        ("latin1.csv", "id,text\n1,ok\n2,café\n".encode("latin-1"), "line 3"),
        ("latin1_header.csv", "idé,text\n1,ok\n".encode("latin-1"), "line 1"),
        ("unicode_text.tsv", "id\ttext\r\n1\tcafé\r\n".encode("utf-16"),
         "is UTF-16 text (as Excel saves 'Unicode Text'), not UTF-8 — save it as 'CSV UTF-8'"),
        ("utf16be.csv", "\ufeffid,text\n1,é\n".encode("utf-16-be"), "is UTF-16 text"),
        ("notes.txt", b"a,b\n1,2\n", "use one of .csv, .tsv, .parquet, .jsonl"),
        ("data.json", b'[{"a": 1}]', "use one of .csv, .tsv, .parquet, .jsonl"),
    ],
)
def test_bad_csv_and_paths_give_one_line_input_errors(
    write: Writer, name: str, data: bytes, expected: str
) -> None:
    message = input_error(write(name, data))
    assert expected in message
    if name.startswith("latin1"):
        assert "not valid UTF-8" in message and "save it as UTF-8" in message


def test_bad_csv_row_deep_in_the_file_is_reported_while_streaming(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bio, "CSV_BLOCK_SIZE", 1 << 14)
    good = b"".join(b"%d,some text here\n" % i for i in range(5000))
    ragged = write("late.csv", b"id,text\n" + good + b"5000,a,b\n")
    source = open_input(ragged)  # the first block is fine: open succeeds
    with pytest.raises(InputError) as info:
        rows_of(source)
    assert str(info.value) == (
        f"input {ragged}: row 5001 (line 5002) has 3 fields, the header has 2 — "
        "fix the quoting or the delimiter"
    )
    # A bad byte anywhere is found when the file is opened: rows are later read one column at
    # a time, and pyarrow checks UTF-8 only in the columns it reads.
    latin = write("late_latin.csv", b"id,text\n" + good + b"5000,caf\xe9\n")
    with pytest.raises(InputError, match=r"not valid UTF-8 at line 5002 \(byte offset \d+\)"):
        open_input(latin)


def test_the_csv_byte_scan_leaves_ascii_to_vector_checks(
    write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a CSV file reads it through once for bytes that are not UTF-8 and for its
    quotes: a chunk of ASCII (most of most files) is neither decoded nor counted by bytes
    methods, a pass of Python's each over 600 MB (some 1.5 s of a run's start), and lines are
    counted only to name a bad byte's. What it finds is as before."""
    monkeypatch.setattr(bio, "_CHUNK", 1024)
    calls: list[str] = []

    class Chunk(bytes):
        def decode(self, *args: object, **kwargs: object) -> str:
            calls.append("decode")
            return super().decode(*args, **kwargs)  # type: ignore[arg-type]

        def count(self, *args: object) -> int:
            calls.append("count")
            return super().count(*args)  # type: ignore[arg-type]

    class Reader:
        def __init__(self, f: object) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            return Chunk(self.f.read(n))  # type: ignore[attr-defined]

        def seek(self, offset: int) -> int:
            return int(self.f.seek(offset))  # type: ignore[attr-defined]

        def __enter__(self) -> Reader:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()  # type: ignore[attr-defined]

    real_open = open

    def spying_open(path: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        f = real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]
        return Reader(f) if mode == "rb" else f

    monkeypatch.setattr(bio, "open", spying_open, raising=False)
    good = b"".join(b'%d,"some text, quoted"\n' % i for i in range(2000))
    assert open_input(write("ascii.csv", b"id,text\n" + good)).columns == ["id", "text"]
    assert calls == []
    accented = write("accented.csv", b"id,text\n" + good + "5000,café\n".encode())
    assert open_input(accented).columns == ["id", "text"]
    assert calls == []
    # A character cut by a chunk's end is whole; a bad byte is named by its line and offset.
    for cut in range(4):
        pad = b"x" * cut
        ok = write("cut.csv", b"id,text\n1," + pad + "€".encode() * 2000 + b"\n")
        assert open_input(ok).columns == ["id", "text"]
    bad = b"id,text\n" + good + b"5000,caf\xe9\n"
    with pytest.raises(InputError, match=rf"not valid UTF-8 at line 2002 \(byte offset "
                                         rf"{len(bad) - 2}\)"):
        open_input(write("late_latin.csv", bad))
    with pytest.raises(InputError, match=r"row 2001 \(line 2002\) opens a quote"):
        open_input(write("open.csv", b"id,text\n" + good + b'5000,"open\n'))


def test_csv_rows_are_named_with_the_lines_an_editor_shows_them_on(write: Writer) -> None:
    """A quoted value may hold line ends, so a CSV file's data row N is not always on line
    N + 1: a row named in a message comes with the line it starts on, as a JSONL file's are
    named by line."""
    path = write("multi.csv", b'id,text\n1,"two\nlines"\n\n2,b\n3,"three\nmore\nlines"\n4,d\n')
    source = open_input(path)
    assert source.where_rows(1) == "row 2 (line 5)"
    assert source.where_rows(0, 3) == "rows 1 and 4, lines 2 and 9"


def test_missing_file_and_directory_without_parquet(tmp_path: Path) -> None:
    message = input_error(tmp_path / "nope.csv")
    assert "no such file" in message
    empty_dir = tmp_path / "exports"
    empty_dir.mkdir()
    (empty_dir / "readme.txt").write_text("hi")
    assert "no .parquet files" in input_error(empty_dir)


def test_supported_suffixes_are_case_insensitive(write: Writer) -> None:
    assert SUPPORTED_SUFFIXES == (".csv", ".tsv", ".parquet", ".jsonl")
    assert open_input(write("UPPER.CSV", b"a\n1\n")).kind == "csv"
    assert open_input(write("UPPER.TSV", b"a\tb\n1\t2\n")).columns == ["a", "b"]


# --------------------------------------------------------------------------------------------
# Parquet


def test_parquet_file_keeps_types_and_knows_its_row_count(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b", "c"], "n": [1, 2, None], "x": [0.5, 1.5, 2.5]})
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=2)
    source = open_input(path, batch_size=2)
    assert (source.kind, source.columns, source.num_rows) == ("parquet", ["id", "n", "x"], 3)
    assert source.schema.field("n").type == pa.int64()
    assert [b.num_rows for b in source.batches()] == [2, 1]
    assert rows_of(source) == table.to_pylist()
    assert rows_of(source, ["x"]) == [{"x": 0.5}, {"x": 1.5}, {"x": 2.5}]


def test_a_parquet_row_group_is_not_read_whole(tmp_path: Path) -> None:
    """An export written in one row group (pandas and pyarrow write up to 1,048,576 rows in
    one) has each column in one chunk: its rows were read by loading the whole chunk, so a
    table of 900,000 rows of 1.8 kB of text peaked at 815 MB, and one of 2,000,000 rows would
    have taken twice that, however few rows a batch holds. The chunks are now read as a
    stream: here, 40 MB of text in one row group is read in 1 MiB batches holding a few MB."""
    n = 20_000
    text = pa.array([os.urandom(1000).hex() for _ in range(n)])  # 2 kB a row: 40 MB
    path = tmp_path / "export.parquet"
    pq.write_table(pa.table({"id": list(range(n)), "text": text}), path, row_group_size=n,
                   compression="none")
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    done = subprocess.run([sys.executable, "-c", _ARROW_PEAK, str(path)], capture_output=True,
                          text=True, check=True, timeout=120)
    rows, peak = map(int, done.stdout.split())
    assert rows == n
    assert peak < 20 << 20, f"reading the rows held {peak >> 20} MB at once"


def test_parquet_directory_reads_files_in_name_order(tmp_path: Path) -> None:
    directory = tmp_path / "export"
    directory.mkdir()
    for i, name in enumerate(["part-2.parquet", "part-0.parquet", "part-1.parquet"]):
        pq.write_table(
            pa.table({"id": [f"{name}:{j}" for j in range(3)], "k": [i] * 3}), directory / name
        )
    (directory / "_SUCCESS").write_bytes(b"")
    (directory / ".part-0.parquet.crc").write_bytes(b"junk")
    source = open_input(directory)
    assert (source.kind, source.num_rows, source.path) == ("parquet", 9, directory)
    ids = [r["id"] for r in rows_of(source)]
    assert ids == [f"part-{p}.parquet:{j}" for p in range(3) for j in range(3)]


def test_parquet_directory_files_must_share_a_schema(tmp_path: Path) -> None:
    directory = tmp_path / "mixed"
    directory.mkdir()
    pq.write_table(pa.table({"id": ["a"], "n": [1]}), directory / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "n": ["one"]}), directory / "b.parquet")
    message = input_error(directory)
    # Each file's side in the order the files are named: b's string first (it said "'n' is
    # int64 vs string", b.parquet's type given as a.parquet's).
    assert "b.parquet and a.parquet have different schemas" in message
    assert "'n' is string vs int64" in message
    pq.write_table(pa.table({"id": ["b"], "n": [2], "extra": [True]}), directory / "b.parquet")
    assert ("b.parquet and a.parquet have different schemas (columns id, n, extra vs id, n)"
            in input_error(directory))


def test_bad_parquet_inputs(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not really parquet")
    assert "not a readable Parquet file" in input_error(corrupt)

    truncated = tmp_path / "truncated.parquet"
    pq.write_table(pa.table({"a": list(range(100))}), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-20])
    assert "not a readable Parquet file" in input_error(truncated)

    no_rows = tmp_path / "no_rows.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.string())}), no_rows)
    assert "has 0 rows" in input_error(no_rows)

    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert "empty (0 bytes)" in input_error(empty)

    directory = tmp_path / "dir_with_bad_file"
    directory.mkdir()
    pq.write_table(pa.table({"a": [1]}), directory / "a.parquet")
    (directory / "b.parquet").write_bytes(b"garbage")
    message = input_error(directory)
    assert "b.parquet" in message and "not a readable Parquet file" in message


def test_parquet_duplicate_column_names(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    pq.write_table(table, path)
    assert "'a' appears twice" in input_error(path)


def test_csv_ragged_row_whose_text_mentions_utf8(write: Writer) -> None:
    message = input_error(write("r.csv", b"a,b\n1,2\ninvalid UTF8,UTF-8,x\n"))
    assert "row 2 (line 3) has 3 fields" in message


# --------------------------------------------------------------------------------------------
# JSONL and the OpenAI Batch API format


def test_jsonl_columns_are_every_key_typed_by_what_their_values_share(write: Writer) -> None:
    path = write(
        "in.jsonl",
        b'\xef\xbb\xbf{"id": "007", "n": 3, "x": 2.5, "ok": true, "tags": ["a"], "none": null}\n'
        b"\n"
        b'{"id": "008", "x": 1, "mixed": 1, "late": "only here", "price": 9.5}\r\n'
        b'{"id": "009", "mixed": "one", "price": 0.25}\n',
    )
    source = open_input(path)
    assert source.kind == "jsonl" and source.num_rows == 3
    assert [(f.name, str(f.type)) for f in source.schema] == [
        ("id", "string"), ("n", "int64"), ("x", "string"), ("ok", "bool"), ("tags", "string"),
        ("none", "string"), ("mixed", "string"), ("late", "string"), ("price", "double")]
    assert rows_of(source) == [
        {"id": "007", "n": 3, "x": "2.5", "ok": True, "tags": '["a"]', "none": None,
         "mixed": None, "late": None, "price": None},
        # Several kinds, integers beside decimals too: text, as written (1 stays "1").
        {"id": "008", "n": None, "x": "1", "ok": None, "tags": None, "none": None,
         "mixed": "1", "late": "only here", "price": 9.5},
        {"id": "009", "n": None, "x": None, "ok": None, "tags": None, "none": None,
         "mixed": "one", "late": None, "price": 0.25},
    ]


def test_jsonl_integers_past_64_bits_are_kept_as_written(write: Writer) -> None:
    """They were read as floats: ids 123456789012345678901234567890 and ...891 both became
    "1.2345678901234568e+29", and the file was refused for a repeated id it does not have; so
    were -9223372036854775809 and ...810 (19 digits, below -2**63), both -9.223372036854776e+18."""
    path = write(
        "big.jsonl",
        b'{"id": 123456789012345678901234567890, "meta": {"n": 123456789012345678901234567891}}\n'
        b'{"id": 123456789012345678901234567891, "meta": {"n": 1, "x": 0.5}}\n'
        b'{"id": 18446744073709551615, "meta": null}\n'
        b'{"id": -9223372036854775809, "meta": [-9223372036854775810]}\n'
        b'{"id": -9223372036854775810, "meta": null}\n',
    )
    source = open_input(path)
    assert [(f.name, str(f.type)) for f in source.schema] == [("id", "string"),
                                                             ("meta", "string")]
    assert rows_of(source) == [
        {"id": "123456789012345678901234567890", "meta": '{"n":123456789012345678901234567891}'},
        {"id": "123456789012345678901234567891", "meta": '{"n":1,"x":0.5}'},
        {"id": "18446744073709551615", "meta": None},
        {"id": "-9223372036854775809", "meta": "[-9223372036854775810]"},
        {"id": "-9223372036854775810", "meta": None},
    ]


def test_jsonl_numbers_past_a_double_are_kept_as_written(write: Writer) -> None:
    """JSON sets no range on numbers: a line with 1e400 was refused as "not valid JSON (number
    is infinity when parsed as double)". Such a number is kept as its text, as a long integer
    is; NaN, which is no JSON, and a broken line with an exponent are still refused."""
    path = write(
        "huge.jsonl",
        b'{"id": 1, "x": 1e400, "meta": {"big": -1E+999, "small": 1e-400}}\n'
        b'{"id": 2, "x": 2.5, "meta": null}\n',
    )
    assert rows_of(open_input(path)) == [
        {"id": 1, "x": "1e400", "meta": '{"big":"-1E+999","small":0.0}'},
        {"id": 2, "x": "2.5", "meta": None},
    ]
    # Past it with no exponent: 400 digits, with a fraction or none (refused as infinity too).
    digits = "1" + "0" * 399
    path = write("digits.jsonl", b'{"id": 1, "x": -%s.5}\n{"id": %s, "x": 1}\n'
                 % (digits.encode(), digits.encode()))
    assert rows_of(open_input(path)) == [{"id": "1", "x": f"-{digits}.5"},
                                         {"id": digits, "x": "1"}]
    for bad in (b'{"id": 1, "x": 1e400, "y": NaN}\n', b'{"id": 1, "x": 1e400,}\n'):
        with pytest.raises(InputError, match="line 1 is not valid JSON"):
            rows_of(open_input(write("bad.jsonl", bad)))


LONG_NUMBER_LINES = [
    b'{"id": 123456789012345678901234567890}',  # past 64 bits
    b'{"id": 12345678901234567890}',  # 20 digits, under 2**64
    b'{"id": 1234567890123456789}',  # 19 digits
    b'{"n": 9223372036854775808}',  # exactly 2**63
    b'{"n": -9223372036854775808}',  # -2**63
    b'{"n": -9223372036854775809}',  # below -2**63: 19 digits
    b'{"n": -922337203685477580}',  # 18 digits
    b'{"d": "2026-12-01-12345"}',
    b'{"n": -123456789012345678901}',  # negative, 21 digits
    b'{"n": 1.2345678901234567890123}',  # a long fraction
    b'{"n": 12345678901234567890.5}',
    b'{"n": 1e400000000000000000000}',  # an exponent of 21 digits (not read: infinite)
    b'{"n": 1.5e-12345678901234567890}',
    b'{"n": 12345678901234567E3}',
    b'{"t": "12345678901234567890"}',  # in a string
    b'{"t": "a\\"12345678901234567890\\"b", "n": 1}',  # in a string, beside escaped quotes
    b'{"t": "\\"", "n": 1234567890123456789, "m": 0}',
    b'{"t": "\\u0031\\u0032", "n": 0}',
    b'{"t": "\xd9\xa1\xd9\xa2\xd9\xa3 (Arabic-Indic digits)", "n": 1}',  # not ASCII digits
    b'{"n": [1234567890, 1234567890]}',  # 20 digits, not in a row
    b'{"n": 1234567890123456789012345678901234567890123456789012345678901234567890}',
    b"",
    b"00000000000000000000",
]


@pytest.mark.parametrize("line", LONG_NUMBER_LINES)
def test_a_long_number_is_found_as_the_regular_expression_finds_it(line: bytes) -> None:
    """The check that sends a line to the parser that keeps integers past 64 bits answers as
    ``[-0-9]{20}`` does (20 digits, or "-" and 19), on numbers in strings, escaped quotes,
    exponents and negative numbers."""
    assert bio._long_number(line) is (re.search(rb"[-0-9]{20}", line) is not None)


@given(st.binary(max_size=80) | st.text(alphabet="0123456789 -.e\"\\,:[]{}a\u0661", max_size=80)
       .map(str.encode))
def test_the_long_number_check_answers_as_the_regular_expression(line: bytes) -> None:
    assert bio._long_number(line) is (re.search(rb"[-0-9]{20}", line) is not None)


def test_a_jsonl_files_lines_are_looked_at_for_long_numbers_once(
        write: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run reads a JSONL file's rows four times (opening it, its ids, its rows, its results),
    and every line was looked at for integers past 64 bits each time; now only when the file is
    read through at open, the later reads finding them where they were, unless the file
    changed since, when every line is looked at again (a long number on another line is still
    kept as written)."""
    looked: list[bytes] = []
    check = bio._long_number
    monkeypatch.setattr(bio, "_long_number", lambda line: looked.append(line) or check(line))
    path = write("ids.jsonl", b'{"id": 123456789012345678901234567890, "n": 1}\n'
                              b'{"id": "a", "n": 2}\n\n{"id": "b", "n": 18446744073709551616}\n')
    source = open_input(path)
    at_open = len(looked)
    assert at_open >= 3 and [(f.name, str(f.type)) for f in source.schema] == [
        ("id", "string"), ("n", "string")]
    expected = [{"id": "123456789012345678901234567890", "n": "1"}, {"id": "a", "n": "2"},
                {"id": "b", "n": "18446744073709551616"}]
    assert rows_of(source) == expected and rows_of(source, ["n"]) == [
        {"n": r["n"]} for r in expected]
    assert len(looked) == at_open

    path.write_bytes(b'{"id": "c", "n": 1}\n{"id": 98765432109876543210, "n": 2}\n'
                     b'{"id": "d", "n": 3}\n')
    assert rows_of(source) == [{"id": "c", "n": "1"}, {"id": "98765432109876543210", "n": "2"},
                               {"id": "d", "n": "3"}]
    assert len(looked) == at_open + 3


def test_jsonl_streams_in_batches(write: Writer) -> None:
    data = b"".join(orjson.dumps({"id": i, "text": f"t{i}"}) + b"\n" for i in range(250))
    source = open_input(write("many.jsonl", data), batch_size=100)
    assert [b.num_rows for b in source.batches()] == [100, 100, 50]
    assert [r["id"] for r in rows_of(source)] == list(range(250))


def test_a_bad_jsonl_line_far_into_the_file_is_named_when_it_is_opened(write: Writer) -> None:
    data = b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(5000)) + b'{"id": 5000\n'
    assert "line 5001 is not valid JSON" in input_error(write("late.jsonl", data))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\n  \n", "has no JSON records"),
        (b'{"id": 1}\n{"id": 2\n', "line 2 is not valid JSON"),
        (b'[{"id": 1}]\n', "line 1 is an array, not a JSON object"),
        (b'{"id": 1}\n"text"\n', "line 2 is a string, not a JSON object"),
        (b'{"id": 1}\n{"id": "caf\xe9"}\n', "line 2 is not valid UTF-8 (byte offset 21)"),
    ],
)
def test_bad_jsonl_names_the_line(write: Writer, data: bytes, expected: str) -> None:
    assert expected in input_error(write("bad.jsonl", data))


@pytest.mark.parametrize("cut", [b'{"id": 2, "text": "half a rec', b'{"id": 2, "text": "caf\xc3'])
def test_a_jsonl_file_whose_last_line_is_cut_short_says_so(write: Writer, cut: bytes) -> None:
    """An app's log copied while the app was writing it ends in part of a record, with no line
    end (cut in a word, or in a character's bytes): the message said to write one JSON object
    per line, or to save the file as UTF-8. It now says the last line is cut short, and what to
    do; a line that is whole but bad, or a last line whole without its line end, read as before."""
    message = input_error(write("app.jsonl", b'{"id": 1, "text": "caf\xc3\xa9"}\n' + cut))
    assert "line 2, the file's last, is cut short" in message
    assert "remove that line" in message
    whole_but_bad = input_error(write("bad.jsonl", cut + b"\n{}\n"))
    assert "line 1 is not valid" in whole_but_bad and "cut short" not in whole_but_bad
    whole = write("whole.jsonl", b'{"id": 1}\n{"id": 2}')
    assert [r["id"] for r in rows_of(open_input(whole))] == [1, 2]


def openai_line(custom_id: str, content: str, override: dict[str, object] | None = None) -> bytes:
    record: dict[str, object] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]},
    }
    record.update(override or {})
    return orjson.dumps(record) + b"\n"


def test_openai_batch_file_round_trips_in_order(write: Writer) -> None:
    data = b"".join(openai_line(f"req-{i}", f"question {i} ✓") for i in range(5))
    source = open_input(write("batch.jsonl", data), batch_size=2)
    assert source.kind == "openai_batch"
    assert source.columns == ["custom_id", "method", "url", "body"]
    batches = list(source.batches())
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert all(b.schema == source.schema for b in batches)
    rows = rows_of(source)
    assert [r["custom_id"] for r in rows] == [f"req-{i}" for i in range(5)]
    assert {r["url"] for r in rows} == {"/v1/chat/completions"}
    bodies = [json.loads(str(r["body"])) for r in rows]
    assert bodies[3]["messages"][0]["content"] == "question 3 ✓"
    assert bodies[0]["model"] == "gpt-4o-mini"


def test_openai_batch_ids_are_read_without_writing_the_bodies(
        write: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass for the ids (a --limit run's check of them, a journal's rows mapped to the input)
    writes no body as text: only the passes that read the bodies do."""
    data = b"".join(openai_line(f"req-{i}", f"question {i}") for i in range(5))
    source = open_input(write("batch.jsonl", data))
    written: list[object] = []
    dumps = orjson.dumps

    def counted(value: object, *args: object) -> bytes:
        written.append(value)
        return dumps(value, *args)

    monkeypatch.setattr(orjson, "dumps", counted)
    assert [r["custom_id"] for b in source.batches(columns=["custom_id"])
            for r in b.to_pylist()] == [f"req-{i}" for i in range(5)]
    assert written == []
    assert len([b for b in source.batches(columns=["custom_id", "body"])]) == 1
    assert len(written) == 5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"url": "/v1/embeddings"}, "line 2: url is '/v1/embeddings'"),
        ({"method": "GET"}, "line 2: method is 'GET'"),
        ({"custom_id": 7}, "line 2: custom_id is 7"),
        ({"body": "hi"}, "line 2: body is 'hi'"),
    ],
)
def test_bad_openai_batch_lines(write: Writer, override: dict[str, object], expected: str) -> None:
    data = openai_line("a", "x") + openai_line("b", "y", override)
    assert expected in input_error(write("batch.jsonl", data))


def test_openai_batch_line_missing_a_key(write: Writer) -> None:
    second = orjson.dumps({"custom_id": "b", "method": "POST", "body": {}}) + b"\n"
    message = input_error(write("batch.jsonl", openai_line("a", "x") + second))
    assert "line 2 has no 'url'" in message


# --------------------------------------------------------------------------------------------
# Fingerprints and duplicate ids


def test_fingerprint_is_stable_and_changes_with_any_byte(tmp_path: Path, write: Writer) -> None:
    data = b"id,text\n" + b"".join(b"%d,hello\n" % i for i in range(200_000))  # > 1 MiB
    path = write("f.csv", data)
    first = open_input(path).fingerprint()
    assert first == open_input(path).fingerprint()
    assert len(first) == 64
    assert open_input(write("copy.csv", data)).fingerprint() == first
    edited = bytearray(data)
    edited[len(data) - 3] = ord("X")  # one byte, near the end, same size
    path.write_bytes(bytes(edited))
    assert open_input(path).fingerprint() != first


def test_directory_fingerprint_covers_names_and_bytes(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    pq.write_table(pa.table({"a": [1, 2]}), directory / "a.parquet")
    pq.write_table(pa.table({"a": [3]}), directory / "b.parquet")
    first = open_input(directory).fingerprint()
    assert open_input(directory).fingerprint() == first
    (directory / "b.parquet").rename(directory / "c.parquet")
    assert open_input(directory).fingerprint() != first


# --------------------------------------------------------------------------------------------
# Writers

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("content", pa.string()),
        ("tokens", pa.int64()),
        ("cost_usd", pa.float64()),
    ]
)
RESULT_ROWS: list[dict[str, object]] = [
    {"id": "007", "content": 'He said "hi",\nthen left', "tokens": 12, "cost_usd": 0.5},
    {"id": "008", "content": None, "tokens": None, "cost_usd": None},
    {"id": "009", "content": "", "tokens": 0, "cost_usd": 1.0},
]


def read_back(path: Path, fmt: str) -> list[dict[str, object]]:
    if fmt == "parquet":
        rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
        return rows
    if fmt == "csv":
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=RESULT_SCHEMA,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        rows = table.to_pylist()
        return rows
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fmt", RESULT_FORMATS)
def test_result_writer_round_trips_atomically_and_privately(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"results.{fmt}"
    path.write_text("old results")
    os.chmod(path, 0o644)
    batch = pa.RecordBatch.from_pylist(RESULT_ROWS[:2], schema=RESULT_SCHEMA)
    with ResultWriter(path, fmt, RESULT_SCHEMA) as writer:
        writer.write(batch)
        assert path.read_text() == "old results"  # untouched until close
        assert writer.temp_path == temp_path_for(path)
        assert stat.S_IMODE(writer.temp_path.stat().st_mode) == 0o600
        writer.write(pa.Table.from_pylist(RESULT_ROWS[2:], schema=RESULT_SCHEMA))
    assert read_back(path, fmt) == RESULT_ROWS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert no_temp_files(tmp_path)


def test_csv_results_have_one_header(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with ResultWriter(path, "csv", RESULT_SCHEMA) as writer:
        for row in RESULT_ROWS:
            writer.write(pa.RecordBatch.from_pylist([row], schema=RESULT_SCHEMA))
    with open(path, newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == ["id", "content", "tokens", "cost_usd"]
    assert len(records) == 1 + len(RESULT_ROWS)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_times_with_a_zone_are_written_alike_in_csv_and_jsonl(tmp_path: Path, fmt: str) -> None:
    """``finished_at`` (and an input's zoned times) as RFC 3339 text in UTC in both text formats:
    Arrow's CSV writer alone would write ``2026-11-30 16:49:23.602Z``, JSONL used ``+00:00``."""
    from datetime import UTC, datetime

    at = 1_796_057_363.602  # 2026-11-30T16:49:23.602Z
    schema = pa.schema([("finished_at", pa.timestamp("ms", tz="UTC")),
                        ("local", pa.timestamp("s", tz="Europe/Paris")),
                        ("naive", pa.timestamp("s"))])
    table = pa.table({"finished_at": pa.array([int(at * 1000), None], pa.int64()),
                      "local": pa.array([int(at), int(at)], pa.int64()),
                      "naive": pa.array([int(at), None], pa.int64())})
    path = tmp_path / f"r.{fmt}"
    with ResultWriter(path, fmt, schema) as writer:
        writer.write(table.cast(schema))
    if fmt == "csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["finished_at"] == "2026-11-30T16:49:23.602Z"
    assert rows[0]["local"] == "2026-11-30T16:49:23Z"  # the same instant, in UTC
    assert rows[1]["finished_at"] in ("", None)
    assert datetime.fromisoformat(rows[0]["finished_at"]) == datetime.fromtimestamp(
        at, UTC)


def test_pandas_datetimes_are_written_in_jsonl_results_as_before(tmp_path: Path) -> None:
    """A timestamp[ns] column without a zone (pandas' datetimes) was written in JSONL results
    as the text of the pandas Timestamps pyarrow made of them, importing pandas; the same
    text is now made without it (test_imports' run checks that it is not imported)."""
    import pandas as pd

    ns = [1704110400123456789, 1706745600000000000, -500_000_000, 1719835200123456000, None]
    table = pa.table({"at": pa.array(ns, pa.int64()).cast(pa.timestamp("ns"))})
    with ResultWriter(tmp_path / "r.jsonl", "jsonl", table.schema) as writer:
        writer.write(table)
    lines = (tmp_path / "r.jsonl").read_bytes().splitlines()
    written = [orjson.loads(line)["at"] for line in lines]
    assert written == [None if v is None else str(pd.Timestamp(v)) for v in ns]


def test_jsonl_results_keep_nulls_and_floats(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, "jsonl", RESULT_SCHEMA) as writer:
        writer.write(pa.RecordBatch.from_pylist(RESULT_ROWS, schema=RESULT_SCHEMA))
    lines = path.read_bytes().splitlines()
    assert orjson.loads(lines[1]) == {
        "id": "008",
        "content": None,
        "tokens": None,
        "cost_usd": None,
    }
    assert b'"cost_usd":1.0' in lines[2]


def test_abort_and_exception_leave_no_file(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    writer = ResultWriter(path, "parquet", RESULT_SCHEMA)
    writer.write(pa.RecordBatch.from_pylist(RESULT_ROWS, schema=RESULT_SCHEMA))
    writer.abort()
    writer.abort()
    assert not path.exists() and no_temp_files(tmp_path)

    with pytest.raises(RuntimeError, match="boom"), ResultWriter(path, "csv", RESULT_SCHEMA):
        raise RuntimeError("boom")
    assert not path.exists() and no_temp_files(tmp_path)


def test_writer_rejects_bad_output_paths_and_formats(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        ResultWriter(tmp_path / "missing" / "r.csv", "csv", RESULT_SCHEMA)
    with pytest.raises(UsageError, match="is a directory"):
        ResultWriter(tmp_path, "csv", RESULT_SCHEMA)
    with pytest.raises(UsageError, match="'xlsx' is not supported"):
        ResultWriter(tmp_path / "r.xlsx", "xlsx", RESULT_SCHEMA)
    with pytest.raises(UsageError, match="does not exist"):
        write_atomic_bytes(tmp_path / "missing" / "job.json", b"{}")


def test_write_atomic_bytes(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    write_atomic_bytes(path, b'{"a": 1}')
    write_atomic_bytes(path, b'{"a": 2}')
    assert path.read_bytes() == b'{"a": 2}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert no_temp_files(tmp_path)


def test_remove_stale_temp_files(tmp_path: Path) -> None:
    stale = [tmp_path / ".results.parquet.tmp-4242", tmp_path / ".job.json.tmp-1"]
    for p in stale:
        p.write_bytes(b"half written")
    keep = [tmp_path / "results.parquet", tmp_path / ".hidden", tmp_path / "x.tmp-3"]
    for p in keep:
        p.write_bytes(b"keep")
    assert remove_stale_temp_files(tmp_path) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert remove_stale_temp_files(tmp_path) == []
    assert remove_stale_temp_files(tmp_path / "missing") == []


_cell = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(st.tuples(_cell, _cell), min_size=1, max_size=20))
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_written_results_read_back_as_input_unchanged(
    tmp_path: Path, fmt: str, values: list[tuple[str, str]]
) -> None:
    schema = pa.schema([("a", pa.string()), ("b", pa.string())])
    rows = [{"a": a, "b": b} for a, b in values]
    path = tmp_path / f"round.{fmt}"
    with ResultWriter(path, fmt, schema) as writer:
        writer.write(pa.RecordBatch.from_pylist(rows, schema=schema))
    assert rows_of(open_input(path)) == rows


def parquet_plan(tmp_path: Path, table: pa.Table, prompt: str) -> Any:
    """The plan of a job over ``table``, written as in.parquet, its rows keyed by ``id``,
    each sent ``prompt`` (nothing is sent: ``iter_rows`` and ``make_work`` read it)."""
    from batchrunner.config import load_job
    from batchrunner.runner import RunOptions, prepare

    pq.write_table(table, tmp_path / "in.parquet")
    job = load_job(None, {
        "input": str(tmp_path / "in.parquet"), "id_column": "id", "model": "gpt-4o-mini",
        "prompt": prompt, "base_url": "http://127.0.0.1:9/v1", "output": str(tmp_path / "out")})
    return prepare(job, RunOptions(progress="none", handle_signals=False))


def test_parquet_values_read_in_a_prompt_as_text_not_python(tmp_path: Path) -> None:
    """A Parquet file's numbers, booleans, binary text, lists, structs and maps reach the
    prompt as JSON writes them (a float32 0.7 as 0.7, a year saved as a float as 2021), not as
    Python's repr of them; a NaN is a null (the row is not sent), and the id keeps its own text."""
    from batchrunner.runner import iter_rows, make_work

    table = pa.table({
        "id": pa.array([1.0, 2.0], pa.float64()),
        "text": pa.array(["héllo".encode(), b"\xff\xfebad"], pa.binary()),
        "tags": pa.array([["a", "b"], []], pa.list_(pa.string())),
        "meta": pa.array([{"lang": "en", "n": None}, {"lang": "de", "n": 2}]),
        "attrs": pa.array([[("k", "v")], []], pa.map_(pa.string(), pa.string())),
        "score": pa.array([0.7, 0.25], pa.float32()),
        "year": pa.array([2021.0, float("nan")], pa.float64()),
        "ok": pa.array([True, False]),
        "kind": pa.array(["x", "y"]).dictionary_encode(),
        "emb": pa.array([[0.7, None, 0.1], []], pa.list_(pa.float32())),
        "pt": pa.array([{"x": np.float16(0.3), "w": [0.2]}, None],  # pyarrow 16: numpy's only
                       pa.struct([("x", pa.float16()), ("w", pa.list_(pa.float32()))])),
        "fm": pa.array([[("a", 0.9)], []], pa.map_(pa.string(), pa.float32())),
    })
    plan = parquet_plan(
        tmp_path, table,
        "{id}|{text}|{tags}|{meta}|{attrs}|{score}|{year}|{ok}|{kind}|{emb}|{pt}|{fm}")
    sent: dict[str, str] = {}
    for key, row, _ in iter_rows(plan):
        work, why = make_work(plan, key, row)
        sent[key] = work.body["messages"][-1]["content"] if work is not None else why
    assert sent["1.0"] == ('1.0|héllo|["a","b"]|{"lang":"en","n":null}|{"k":"v"}|0.7|2021|'
                           'true|x|[0.7,null,0.1]|{"x":0.3,"w":[0.2]}|{"a":0.9}')
    assert sent["2.0"] == "column 'year' is null, and the prompt needs it"  # its NaN


def test_pandas_datetimes_read_in_a_prompt_as_before(tmp_path: Path) -> None:
    """A timestamp[ns] column (pandas' datetimes) reads in a prompt as pandas writes a Timestamp,
    as it did when pyarrow made them pandas Timestamps: nanoseconds when there are some, else
    microseconds when there are some, else whole seconds. Rows answered before keep their
    hashes (a changed text would send them again)."""
    import pandas as pd

    ns: list[int | None] = [1704110400123456789, 1706745600000000000, -500_000_000,
                            1704110400123456000, -8_000_000_000_000_000_500]
    _times_read_as_pandas_writes_them(tmp_path, ns, None)
    shown = [pd.Timestamp(v) for v in ns]
    assert [str(t)[19:] for t in shown] == [".123456789", "", ".500000", ".123456", ".999999500"]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "+05:30", "America/New_York"])
def test_pandas_datetimes_with_a_zone_read_in_a_prompt_as_before(tmp_path: Path,
                                                                 zone: str) -> None:
    """A timestamp[ns] column with a time zone (pandas' datetimes with one) reads in a prompt as
    pandas writes such a Timestamp, in its zone with the offset, and its rows keep their hashes,
    made without pandas, which pyarrow imported for them (some 0.2 s and 35 MB a run)."""
    ns: list[int | None] = [1704110400123456789, 1706745600000000000, -500_000_000,
                            1719835200123456000, 1720000000120000000]
    rows = _times_read_as_pandas_writes_them(tmp_path, ns, zone)
    assert len(rows) == len(ns)


def _times_read_as_pandas_writes_them(tmp_path: Path, ns: list[int | None],
                                      zone: str | None) -> list[dict[str, Any]]:
    """A Parquet input of times (nanoseconds) in ``zone`` (None: no zone), read as a run reads
    it: each row's prompt text and hash checked against pandas' Timestamp's, in the zone as
    zoneinfo has it, the row with no time left out; the rows, as read."""
    import pandas as pd

    from batchrunner.runner import hash_values, iter_rows, make_work

    when = pa.array(ns, pa.int64()).cast(pa.timestamp("ns", tz=zone))
    plan = parquet_plan(tmp_path, pa.table({"id": list(range(len(ns))), "when": when}),
                        "At {when}")
    rows = [row for _, row, _ in iter_rows(plan)]
    # A zone by name as Python's zoneinfo has it: pandas before 3 looks a name up in pytz,
    # whose rules also end with 2037.
    tz: Any = zone if zone is None or zone[0] in "+-" else ZoneInfo(zone)
    for row, v in zip(rows, ns, strict=True):
        if v is None:
            continue
        was = pd.Timestamp(v, tz=tz)
        work, _ = make_work(plan, str(row["id"]), row)
        assert work is not None and work.body["messages"][-1]["content"] == f"At {was}"
        assert hash_values((row["when"],)) == hash_values((was,))
    return rows


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_zoned_datetimes_past_2037_and_in_local_mean_time_read_as_pandas_writes_them(
        tmp_path: Path, zone: str) -> None:
    """A summer time from 2038 on (a loan's maturity, a contract's end) read an hour off in
    the prompt, in winter's offset (Arrow's time zone rules end with 2037), and a time in a
    zone's local mean time (before 1911 in Paris: +00:09:21) lost its offset's seconds: both
    texts, and the rows' hashes, differed from what pandas writes, and what rows answered
    before were hashed from (a rerun sent them again)."""
    ns = [2161998000000000000, 2224000000123456789, -3786825600000000000, None]
    rows = _times_read_as_pandas_writes_them(tmp_path, ns, zone)
    assert len(rows) == len(ns) and rows[-1]["when"] is None


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_zoned_times_to_the_microsecond_read_in_a_prompt_as_pyarrow_makes_them(
        tmp_path: Path, unit: str) -> None:
    """Times with a zone to the second, milli- or microsecond are made Python datetimes by
    batchrunner, not by pyarrow (which imports pandas for them): each row's prompt text (the
    datetime's ``str``) and hash (its RFC 3339 form, as orjson writes it) are those of
    pyarrow's datetime, which rows answered before were sent and recorded with, in named zones
    and fixed offsets, before 1970, in local mean time (+00:09:21) and in summers after 2037."""
    from batchrunner.arrow import python_rows
    from batchrunner.runner import hash_values, iter_rows, make_work

    us = [1704110400123456, -500_123_457, -2208988800000000, 2161998000654321,
          2224000000000001, 0, 1719835200120000, None]
    scale = {"s": 10**6, "ms": 1000, "us": 1}[unit]
    zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "+05:30", "-03:30"]
    table = pa.table({"id": list(range(len(us))), **{
        f"t{i}": pa.array([v if v is None else v // scale for v in us], pa.int64()).cast(
            pa.timestamp(unit, tz=zone)) for i, zone in enumerate(zones)}})
    pq.write_table(table, tmp_path / "in.parquet")
    before = pq.read_table(tmp_path / "in.parquet").to_pylist()  # pyarrow's own datetimes
    batch = pq.read_table(tmp_path / "in.parquet").to_batches()[0]
    assert python_rows(batch) == before
    assert [[str(v) for v in r.values()] for r in python_rows(batch)] == [
        [str(v) for v in r.values()] for r in before]
    assert orjson.dumps(python_rows(batch)) == orjson.dumps(before)

    names = [f"t{i}" for i in range(len(zones))]
    plan = parquet_plan(tmp_path, table, " | ".join(f"{{{n}}}" for n in names))
    rows = [row for _, row, _ in iter_rows(plan)]
    assert len(rows) == len(us)
    for row, was in zip(rows, before, strict=True):
        if was["t0"] is None:
            assert all(row[n] is None for n in names)
            continue
        work, _ = make_work(plan, str(row["id"]), row)
        assert work is not None
        assert work.body["messages"][-1]["content"] == " | ".join(str(was[n]) for n in names)
        for n in names:
            assert hash_values((row[n],)) == hash_values((was[n],))
    if not isinstance(before[2]["t1"].tzinfo, ZoneInfo):
        return  # pytz's zones, which pyarrow 16 takes where it is installed: to the minute, and
        # an hour off past 2037 (the rows' texts and hashes are that pyarrow's, as checked above)
    paris = str(before[2]["t1"])  # 1900: Paris's local mean time, to the second
    assert paris.startswith("1900-01-01 00:09:21") and paris.endswith("+00:09:21")
    summer = str(before[3]["t1"])  # 2038-07-06 05:00 in summer time, not winter's offset
    assert summer.startswith("2038-07-06 05:00:00") and summer.endswith("+02:00")


#: Seconds from 1970 to 10000-01-01T12:00:00Z: 9600-01-01 and 400 Gregorian years (146,097
#: days); and to 33658-01-20T02:46:40Z: 2058-01-20 and 79 such cycles. Winter's, in Paris:
#: pyarrow 16's zones are pytz's, which have no summer time past 2037 (a July of the year 10000
#: at +01:00), pyarrow 26's zoneinfo's (+02:00).
_Y10000 = 240_779_563_200 + 146_097 * 86_400
_Y33658 = 2_778_720_400 + 79 * 146_097 * 86_400


def _far_dates_table() -> pa.Table:
    """Dates and times past Python's (a year past 9999, before 1), an export's "never", beside
    ones within it."""
    return pa.table({
        "id": ["a", "b", "c", "d"],
        "day": pa.array([0, 2_932_897, -800_000, None], pa.int32()).cast(pa.date32()),
        "at": pa.array([86_400, 10**13, -10**11, None], pa.int64()).cast(pa.timestamp("s")),
        "local": pa.array([0, _Y10000 * 1000, _Y33658 * 1000, None], pa.int64()).cast(
            pa.timestamp("ms", tz="Europe/Paris")),
    })


_FAR_SHOWN = [  # as str() writes the values within Python's range
    ["1970-01-01", "1970-01-02 00:00:00", "1970-01-01 01:00:00+01:00"],
    ["10000-01-01", "318857-05-20 17:46:40", "10000-01-01 13:00:00+01:00"],
    ["-0221-09-04", "-1199-02-15 14:13:20", "33658-01-20 03:46:40+01:00"],
]


def test_dates_and_times_past_9999_are_shown_in_a_prompt_as_their_text(tmp_path: Path) -> None:
    """pyarrow raises OverflowError for a date past 9999 (10000-01-01: a common "never" in
    exports) or before year 1, and the run ended in a traceback, its rows before sent. They
    are their text now, as Arrow writes them (in the column's zone, with its offset), the
    dates and times Python holds left as they were (their rows' hashes too)."""
    from batchrunner.runner import iter_rows, make_work

    plan = parquet_plan(tmp_path, _far_dates_table(), "{day} | {at} | {local}")
    rows = [row for _, row, _ in iter_rows(plan)]
    shown = []
    for row in rows[:3]:
        work, _ = make_work(plan, str(row["id"]), row)
        assert work is not None
        shown.append(work.body["messages"][-1]["content"])
    assert shown == [" | ".join(texts) for texts in _FAR_SHOWN]
    first = pq.read_table(tmp_path / "in.parquet").slice(0, 1).to_pylist()[0]
    assert {k: rows[0][k] for k in first} == first  # pyarrow's own date and datetimes


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_dates_and_times_past_9999_are_written_in_csv_and_jsonl_results(
        tmp_path: Path, fmt: str) -> None:
    """A JSONL results file with a date past 9999, even in a column no prompt uses, ended the
    run in an OverflowError once every row was sent (``report`` too); a time with a zone past
    Arrow's years (32767) was written wrong in either format (10**13 s as the year -8823)."""
    table = _far_dates_table()
    path = tmp_path / f"r.{fmt}"
    with ResultWriter(path, fmt, table.schema) as writer:
        writer.write(table)
    if fmt == "csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[1]["day"] == "10000-01-01"
    assert rows[2]["day"] == "-0221-09-04"
    assert rows[1]["local"] == "10000-01-01T12:00:00.000Z"  # in UTC, as every zoned time
    assert rows[2]["local"] == "33658-01-20T02:46:40.000Z"
    if fmt == "jsonl":  # as orjson writes the others ("1970-01-02T00:00:00")
        assert [r["at"] for r in rows] == ["1970-01-02T00:00:00", "318857-05-20T17:46:40",
                                           "-1199-02-15T14:13:20", None]
        assert rows[0]["day"] == "1970-01-01"


def test_csv_and_jsonl_results_hold_nested_binary_and_extension_columns(tmp_path: Path) -> None:
    """Columns a CSV file has no type for (lists, structs, maps, binary that is not UTF-8, a
    UUID extension column) are written as text: JSON, UTF-8 with ``\\x`` escapes, the UUID's
    own form; a JSONL file has maps as objects, float32 in its shortest form (in a list too).
    Nothing refuses them after the run."""
    columns = {
        "lst": pa.array([[1, 2], None], pa.list_(pa.int64())),
        "st": pa.array([{"x": 1, "y": "q"}, None]),
        "mp": pa.array([[("k", "v")], []], pa.map_(pa.string(), pa.string())),
        "bin": pa.array([b"ok", b"\xff"], pa.binary()),
        "f32": pa.array([0.7, None], pa.float32()),
        "mb": pa.array([[(b"k", 1)], None], pa.map_(pa.binary(), pa.int64())),
        "emb": pa.array([[0.7, 0.1], None], pa.list_(pa.float32(), 2)),
    }
    uuid = hasattr(pa, "uuid")  # pyarrow 18 brought it
    if uuid:
        columns["u"] = pa.array([b"\x00" * 15 + b"\x01", None], pa.binary(16)).cast(pa.uuid())
    table = pa.table(columns)
    with ResultWriter(tmp_path / "r.csv", "csv", table.schema) as writer:
        writer.write(table)
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == {"lst": "[1,2]", "st": '{"x":1,"y":"q"}', "mp": '{"k":"v"}', "bin": "ok",
                       "f32": "0.7", "mb": '{"k":1}', "emb": "[0.7,0.1]",
                       **({"u": "00000000-0000-0000-0000-000000000001"} if uuid else {})}
    assert rows[1] == {"lst": "", "st": "", "mp": "{}", "bin": "\\xff", "f32": "", "mb": "",
                       "emb": "", **({"u": ""} if uuid else {})}
    with ResultWriter(tmp_path / "r.jsonl", "jsonl", table.schema) as writer:
        writer.write(table)
    first = orjson.loads((tmp_path / "r.jsonl").read_bytes().splitlines()[0])
    assert first["mp"] == {"k": "v"} and first["st"] == {"x": 1, "y": "q"}
    assert not uuid or first["u"] == "00000000-0000-0000-0000-000000000001"
    assert first["f32"] == 0.7  # not 0.699999988079071
    assert first["mb"] == {"k": 1}  # a map keyed by bytes: the keys as text
    assert first["emb"] == [0.7, 0.1]  # inside a list too


@pytest.mark.skipif(not hasattr(pa, "string_view"), reason="pyarrow without view types")
def test_csv_results_hold_text_and_binary_in_the_view_layout(tmp_path: Path) -> None:
    """A Parquet input written by Polars holds its text as string_view, which Arrow's CSV
    writer refuses: a --format csv run stopped with "Unsupported Type:string_view" after its
    rows were sent and paid for. Such columns are written as the others of their kind."""
    try:
        pa.array(["x"], pa.string_view()).cast(pa.string())
    except pa.ArrowNotImplementedError:  # pyarrow 16, which reads such a column as string
        pytest.skip("this pyarrow reads Parquet's view columns as plain ones")
    table = pa.table({"sv": pa.array(["wörld", None], pa.string_view()),
                      "bv": pa.array([b"ok", b"\xff"], pa.binary_view()),
                      "n": [1, 2]})
    with ResultWriter(tmp_path / "r.csv", "csv", table.schema) as writer:
        writer.write(table)
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == [{"sv": "wörld", "bv": "ok", "n": "1"},
                                          {"sv": "", "bv": "\\xff", "n": "2"}]
    with ResultWriter(tmp_path / "r.jsonl", "jsonl", table.schema) as writer:
        writer.write(table)
    assert [orjson.loads(line) for line in (tmp_path / "r.jsonl").read_bytes().splitlines()] == [
        {"sv": "wörld", "bv": "ok", "n": 1}, {"sv": None, "bv": "\\xff", "n": 2}]


def test_a_column_named_with_dots_or_brackets_is_used_in_a_template(tmp_path: Path) -> None:
    """Flattened JSON and Spark name columns ``user.name``: the template takes such a name as
    the column's own."""
    from batchrunner.config import load_job
    from batchrunner.runner import RunOptions, iter_rows, make_work, prepare

    (tmp_path / "in.jsonl").write_text('{"user.name": "Ann", "tags[0]": "x"}\n')
    job = load_job(None, {
        "input": str(tmp_path / "in.jsonl"), "model": "gpt-4o-mini",
        "prompt": "Hi {user.name} ({tags[0]})", "base_url": "http://127.0.0.1:9/v1",
        "output": str(tmp_path / "out")})
    plan = prepare(job, RunOptions(progress="none", handle_signals=False))
    [(key, row, _)] = list(iter_rows(plan))
    work, _why = make_work(plan, key, row)
    assert work is not None and work.body["messages"][-1]["content"] == "Hi Ann (x)"


def test_a_column_named_with_a_colon_or_an_exclamation_mark_is_used_in_a_template(
        tmp_path: Path) -> None:
    """A spreadsheet's ``Price: USD`` or ``Done!`` header: ``{Price: USD}`` was refused as a
    format spec ("must be a plain column name"), and no template could name the column. A
    field like it that is not a column's name is still refused."""
    from batchrunner.config import JobConfig, load_job
    from batchrunner.errors import ConfigError
    from batchrunner.runner import RunOptions, iter_rows, make_work, prepare

    (tmp_path / "in.csv").write_text("id,Price: USD,Done!x,text\n1,5,yes,hi\n")

    def job(prompt: str) -> JobConfig:
        return load_job(None, {
            "input": str(tmp_path / "in.csv"), "model": "gpt-4o-mini", "prompt": prompt,
            "base_url": "http://127.0.0.1:9/v1", "output": str(tmp_path / "out")})

    plan = prepare(job("Cost {Price: USD}, done {Done!x}: {text}"),
                   RunOptions(progress="none", handle_signals=False))
    [(key, row, _)] = list(iter_rows(plan))
    work, _why = make_work(plan, key, row)
    assert work is not None and work.body["messages"][-1]["content"] == "Cost 5, done yes: hi"
    for prompt in ("Say {text:>5}", "Say {text!r}", 'Say {"a": 1} to {text}'):
        with pytest.raises(ConfigError, match="must be a plain column name"):
            prepare(job(prompt), RunOptions(progress="none", handle_signals=False))


def test_a_column_in_double_braces_beside_a_real_field_is_warned_about(tmp_path: Path) -> None:
    """``{{ text }}`` (Jinja's way) beside ``{id}`` sent the literal ``{ text }`` for every row,
    with no word said; a literal brace that names no column (JSON in the prompt) says nothing."""
    from batchrunner.config import JobConfig, load_job
    from batchrunner.runner import RunOptions, prepare

    (tmp_path / "in.csv").write_text("id,text\n1,hi\n")

    def job(prompt: str) -> JobConfig:
        return load_job(None, {
            "input": str(tmp_path / "in.csv"), "model": "gpt-4o-mini", "prompt": prompt,
            "base_url": "http://127.0.0.1:9/v1", "output": str(tmp_path / "out")})

    options = RunOptions(progress="none", handle_signals=False)
    plan = prepare(job("Ticket {id}: {{ text }}"), options)
    assert ("the prompt template sends { text } as it is, not the value of column 'text': "
            "write {text} for that ({{ and }} are literal braces)") in plan.warnings
    plan = prepare(job('Reply {{"label": "..."}} about {text}, a {{note}}'), options)
    assert not any("as it is" in w for w in plan.warnings), plan.warnings


def test_a_column_named_in_the_system_message_is_warned_about(tmp_path: Path) -> None:
    """``system = "You write for the {brand} shop"`` sent "{brand}" as it is in every request:
    the system message is not a template. Said before the run; JSON in it says nothing."""
    from batchrunner.config import load_job
    from batchrunner.runner import RunOptions, prepare

    (tmp_path / "in.csv").write_text("brand,text\nAcme,hi\n")
    options = RunOptions(progress="none", handle_signals=False)
    for system, warned in [("You write for the {brand} shop", True),
                           ('Reply as {"brand": "..."}, never {{other}}', False)]:
        plan = prepare(load_job(None, {
            "input": str(tmp_path / "in.csv"), "model": "gpt-4o-mini", "prompt": "Say {text}",
            "system": system, "base_url": "http://127.0.0.1:9/v1",
            "output": str(tmp_path / "out")}), options)
        said = [w for w in plan.warnings if "system message" in w]
        assert said == ([
            "the system message is sent as it is, not as a template: {brand} in it is not the "
            "value of column 'brand' (put the column in the prompt)"] if warned else []), said
