"""Reading the input rows and writing the results: the only module that touches files with pyarrow.

Readers stream. ``open_input`` checks the input before any request is sent (it exists, has a
supported kind, has rows, its header and first batch parse; a CSV file is also read through once
for bytes that are not UTF-8 and for a quote left open to the end) and returns an ``InputSource``;
``InputSource.batches`` then yields ``pyarrow.RecordBatch`` objects of at most ``batch_size`` rows
(fewer of wide rows: about ``BATCH_BYTES`` at most), in file order, never holding the whole file
in memory.

    kind           path                        columns and types
    csv            ``*.csv``, ``*.tsv``        the header's names; every value a string, as written
                                               (``.tsv``: tab-separated, quoted as Excel writes it)
    parquet        ``*.parquet`` or a dir      the file's schema (a dir: ``*.parquet`` by name)
    jsonl          ``*.jsonl``                 every key any record has; types as below
    openai_batch   ``*.jsonl`` (Batch API)     custom_id, method, url, body (the body as JSON text)

A JSONL file is read through once when it is opened: every line must be a JSON object (a bad one
is named before any request is sent), its columns are every key any record has, in the order
first seen (a record without one has null there), and a column's type is what its values share:
int64 (integers), float64 (decimals), bool, or string; a column whose values are of several kinds
(integers beside decimals too), objects or arrays holds text: a JSON string as is, anything else
as its JSON text.

Writers are atomic: ``ResultWriter`` and ``write_atomic_bytes`` write a temporary file
``.<name>.tmp-<pid>`` (mode 0600) next to the target, fsync it, rename it onto the target and fsync
the directory, so a reader sees the old file or the new one, never half of one.
``remove_stale_temp_files`` deletes what a crashed run left behind.

Every problem a user can cause is an ``InputError`` (input) or a ``UsageError`` (output) whose
message is one line naming the file, the row or line when known, and what to fix; an output
directory another run holds is an ``OutputBusy``.
"""

from __future__ import annotations

import abc
import bisect
import codecs
import contextlib
import csv
import errno
import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from . import compute as pc
from .arrow import (
    dumps_json,
    has_maps_or_narrow_floats,
    holds_far_times,
    nested_values,
    prompt_text,
    python_values,
    string_array,
    typed_array,
    utc_texts,
)
from .errors import InputError, OutputBusy, OutputError, UsageError

__all__ = [
    "BATCH_BYTES",
    "CSV_BLOCK_SIZE",
    "CSV_MAX_BLOCK_SIZE",
    "DEFAULT_BATCH_SIZE",
    "OPENAI_BATCH_COLUMNS",
    "RESULT_FORMATS",
    "SUPPORTED_SUFFIXES",
    "InputSource",
    "ResultWriter",
    "RunLock",
    "Stamp",
    "check_utf8_path",
    "fingerprint_of",
    "input_files",
    "is_locked",
    "open_input",
    "remove_stale_temp_files",
    "shown_path",
    "stamp_of",
    "temp_path_for",
    "write_atomic_bytes",
]

SUPPORTED_SUFFIXES: Final = (".csv", ".tsv", ".parquet", ".jsonl")
RESULT_FORMATS: Final = ("parquet", "csv", "jsonl")

DEFAULT_BATCH_SIZE: Final = 8192
#: Bytes of Arrow data a batch holds at most, whatever ``batch_size`` allows: a run holds a few
#: copies of a batch (its rows as Python values, the results' columns beside them), so 8,192
#: rows of 50 kB prompts (400 MB a batch) made a 20,000-row run peak at 2.2 GB.
BATCH_BYTES: Final = 16 << 20
#: Bytes pyarrow's CSV reader parses at a time. Its reader reads some 32 blocks ahead of the
#: rows taken from it, so the block bounds the memory a CSV file's read holds: with 16 MiB
#: blocks, a 600,000-row file of 1 kB texts made a run peak at 760 MB (Parquet: 160 MB).
CSV_BLOCK_SIZE: Final = 256 << 10
#: The largest block. One value (a quoted cell) must fit in about a block: a read that meets a
#: longer one starts again with blocks 4 times larger, up to this, from the row it was at.
CSV_MAX_BLOCK_SIZE: Final = 16 << 20
#: Chunk size for hashing and scanning files.
_CHUNK: Final = 1 << 20
#: Columns of an OpenAI Batch API input file, in the order ``batches`` yields them.
OPENAI_BATCH_COLUMNS: Final = ("custom_id", "method", "url", "body")

_BOM: Final = codecs.BOM_UTF8
_QUOTE: Final = ord('"')
#: A line's bytes as ``_long_number`` looks at them: each ASCII digit and "-" as "0", any
#: other byte as " ".
_DIGITS_AS_ZERO: Final = bytes(0x30 if 0x30 <= b <= 0x39 or b == 0x2D else 0x20
                               for b in range(256))
#: A number of 20 digits or more, or a negative one of 19: an integer that may be past 64 bits
#: (below -2**63, or 2**64 and above), which orjson reads as a float.
_LONG_NUMBER: Final = b"0" * 20
#: How a JSON number passes a double's range (1.8e308), as orjson reads it: an exponent of
#: three digits or more, or 309 digits or more (an integer's too: orjson reads one past 64 bits
#: as a float).
_HUGE_NUMBER: Final = re.compile(rb"[eE][+-]?[0-9]{3}|[0-9]{309}")
_HUGE_DIGITS: Final = 309
_MAX_DETAIL: Final = 160


# --------------------------------------------------------------------------------------------
# Messages


def _one_line(text: str, limit: int = _MAX_DETAIL) -> str:
    """Collapse whitespace (newlines included) and shorten ``text`` for an error message."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _input_error(path: Path, message: str) -> InputError:
    return InputError(_one_line(f"input {path}: {message}", limit=10_000))


def _usage_error(path: Path, message: str) -> UsageError:
    return UsageError(_one_line(f"output {path}: {message}", limit=10_000))


def _output_error(path: Path, message: str, exc: OSError | None = None) -> OutputError:
    error = OutputError(_one_line(f"output {path}: {message}", limit=10_000))
    error.errno = None if exc is None else exc.errno
    return error


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text to show or write: UTF-8 as it is, other bytes (a name in Latin-1, which
    Python holds as lone surrogates) as ``\\x`` escapes, which UTF-8 text can hold."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_utf8_path(path: Path, what: str) -> None:
    """Refuse ``path`` (``what``: ``input``, say) when it is not UTF-8: a name in Latin-1 bytes,
    say. Arrow opens files by UTF-8 names only, so such an input could not be read, and such an
    output directory's journal not read back, after its rows were sent (paid for)."""
    text = os.path.abspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} {shown_path(text)}: the path is not UTF-8 (its other bytes "
                         "shown as \\x escapes), and batchrunner reads and writes files by "
                         "UTF-8 paths only — rename it, or the directory that is not, in UTF-8"
                         ) from None


def _short(value: object) -> str:
    """A user value quoted for a message: ``repr`` keeps it on one line."""
    return _one_line(repr(value), limit=60)


def _os_reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else _one_line(str(exc))


# --------------------------------------------------------------------------------------------
# Opening an input


def open_input(
    path: str | os.PathLike[str], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> InputSource:
    """Check the input at ``path`` and return a source that streams its rows.

    Raises ``InputError`` (one line, naming the file) if the file is missing, empty, of an
    unsupported kind, has no data rows, or its first batch cannot be parsed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    p = Path(path)
    check_utf8_path(p, "input")
    supported = ", ".join(SUPPORTED_SUFFIXES)
    try:
        st = p.stat()
    except FileNotFoundError:
        if any(c in p.name for c in "*?[") and p.parent.is_dir():  # a pattern, quoted
            raise _input_error(p, "no such file: a pattern is not expanded — give the directory "
                                  f"that holds the files, {shown_path(p.parent)} (every .parquet "
                                  "file in it is read), or one file") from None
        raise _input_error(p, "no such file or directory — check the path") from None
    except OSError as exc:
        raise _input_error(p, f"cannot read it ({_os_reason(exc)})") from None

    if p.is_dir():
        files = _parquet_files_in(p)
        if not files:
            nested = _nested_parquet_file(p)
            if nested is not None:  # a partitioned dataset: year=2024/part-0.parquet
                raise _input_error(
                    p,
                    f"has its .parquet files in subdirectories ({nested}), which are not read "
                    "— give the directory that holds them (one partition's, say)",
                )
            raise _input_error(
                p,
                "is a directory with no .parquet files — give a file "
                f"({supported}) or a directory of .parquet files",
            )
        return _ParquetSource(p, batch_size, files)

    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = f"{suffix!r} files are" if suffix else "files without a suffix are"
        raise _input_error(p, f"{shown} not supported — use one of {supported}"
                           f"{_SUFFIX_HINTS.get(suffix, '')}")
    if st.st_size == 0:
        raise _input_error(p, "the file is empty (0 bytes) — give a file with rows")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise _input_error(p, f"cannot read it ({_os_reason(exc)})") from None

    if suffix in (".csv", ".tsv"):
        return _CsvSource(p, batch_size, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _ParquetSource(p, batch_size, [p])
    return _JsonlSource(p, batch_size)


# What to do with a file of a kind users often have instead.
_SUFFIX_HINTS: Final = {
    ".ndjson": " (an .ndjson file is JSON Lines: rename it .jsonl)",
    ".json": " (for JSON, write one object per line in a .jsonl file)",
    ".xlsx": " (in Excel: Save As, CSV UTF-8)",
    ".xls": " (in Excel: Save As, CSV UTF-8)",
    ".gz": " (decompress it first)",
    ".zip": " (unzip it first)",
}


def _parquet_files_in(directory: Path) -> list[Path]:
    """The ``*.parquet`` files directly in ``directory``, by name (skips ``.*`` and ``_*``)."""
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise _input_error(directory, f"cannot list the directory ({_os_reason(exc)})") from None
    files = sorted(
        (
            e
            for e in entries
            if e.suffix.lower() == ".parquet" and not e.name.startswith((".", "_")) and e.is_file()
        ),
        key=lambda e: e.name,
    )
    for file in files:
        check_utf8_path(file, "input")
    return files


def _nested_parquet_file(directory: Path) -> str | None:
    """A ``*.parquet`` file one or two levels below ``directory`` (a partitioned dataset's:
    ``year=2024/month=1/part-0.parquet``), as a path relative to it, or None."""
    with contextlib.suppress(OSError):
        for pattern in ("*/*.parquet", "*/*/*.parquet"):
            for found in directory.glob(pattern):
                if found.is_file() and not found.name.startswith((".", "_")):
                    return str(found.relative_to(directory))
    return None


def _check_unique_names(path: Path, names: Sequence[str], what: str = "column") -> None:
    blank = names.count("")
    if blank > 1:
        raise _input_error(
            path,
            f"{blank} {what}s have no name (empty header cells, as Excel saves columns past the "
            f"data) — delete those {what}s, or give each a name",
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _input_error(
                path,
                f"the {what} name {_short(name)} appears twice — give every column its own name",
            )
        seen.add(name)


#: Each file's device, inode, size and modification time, in order (``stamp_of``).
Stamp = tuple[tuple[int, int, int, int], ...]


def input_files(path: Path) -> list[Path]:
    """The files the input at ``path`` is read from, as ``InputSource.files`` has them: the
    file itself, or a directory's Parquet files (``InputError`` if it cannot be listed), without
    opening any: for ``stamp_of`` alone (``batchrunner status``)."""
    return _parquet_files_in(path) if path.is_dir() else [path]


def stamp_of(files: Sequence[Path]) -> Stamp | None:
    """Each file's device, inode, size and modification time: cheap to take, and changed when
    a file is replaced or rewritten (``fingerprint_of`` tells whether its bytes did). None when
    a file cannot be looked at (removed, say)."""
    try:
        return tuple((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                     for st in (os.stat(f) for f in files))
    except OSError:
        return None


def fingerprint_of(path: Path, kind: str, files: Sequence[Path]) -> str:
    """SHA-256 (hex) over the input's size and bytes, the input at ``path`` of ``kind``
    (``InputSource.kind``) read from ``files``; for a directory, each file's name too.

    Reads the whole input in 1 MiB chunks. The same bytes give the same fingerprint; any
    changed, added or removed byte (or file) gives another.
    """
    h = hashlib.sha256()
    h.update(f"batchrunner-input-v1\0{kind}\0".encode())
    is_dir = path.is_dir()
    for file in files:
        try:
            with open(file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if is_dir:
                    h.update(file.name.encode("utf-8", "surrogateescape") + b"\0")
                h.update(f"{size}\0".encode())
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError as exc:
            raise _input_error(path, f"cannot read {file.name} ({_os_reason(exc)})") from None
    return h.hexdigest()


class InputSource(abc.ABC):
    """An input file (or Parquet directory), checked at open time, whose rows can be streamed.

    ``kind`` is ``"csv"``, ``"parquet"``, ``"jsonl"`` or ``"openai_batch"``; ``columns`` are the
    column names in order; ``schema`` is the Arrow schema ``batches`` yields; ``num_rows`` is
    known for Parquet (from the metadata) and JSONL (read through at open, ``rows_checked``),
    and ``None`` otherwise.
    """

    path: Path
    kind: str
    columns: list[str]
    schema: pa.Schema
    num_rows: int | None
    rows_checked: bool
    batch_size: int
    batch_bytes: int = BATCH_BYTES
    # Names pandas wrote as a RangeIndex (``df.set_index("id")`` of ids 1, 2, 3, ...): kept in
    # the file's metadata as a start and a step, not as a column, so no row holds them.
    range_index: tuple[str, ...] = ()
    # An OpenAI batch file's lines are refused, as they are read, for what every API would
    # answer 400 (a body with both max_tokens and max_completion_tokens): set by the runs that
    # send them, not by the rebuild of an earlier run's results, which reads them too.
    refuse_unsendable: bool = False

    def __init__(self, path: Path, batch_size: int) -> None:
        self.path = path
        self.batch_size = batch_size
        self.num_rows = None
        self.rows_checked = False  # every row was parsed, and counted, when it was opened

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, kind={self.kind!r}, "
            f"columns={self.columns!r}, num_rows={self.num_rows!r})"
        )

    # -- identity ---------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The files this input reads, in order (one, or a directory's Parquet files)."""
        return [self.path]

    def stamp(self) -> Stamp | None:
        """Each file's device, inode, size and modification time (``stamp_of``)."""
        return stamp_of(self.files())

    def fingerprint(self) -> str:
        """SHA-256 (hex) over the input's size and bytes (``fingerprint_of``)."""
        return fingerprint_of(self.path, self.kind, self.files())

    # -- rows -------------------------------------------------------------------------------

    def batches(self, columns: Sequence[str] | None = None
                ) -> Generator[pa.RecordBatch, None, None]:
        """Yield the rows in file order as record batches of at most ``batch_size`` rows.

        ``columns`` selects and orders the columns (all by default; ``[]`` yields batches with
        no columns, only row counts). Each call reads the input again from the start.
        Raises ``InputError`` for an unknown column, or for a row that cannot be parsed.
        """
        if isinstance(columns, str):
            raise TypeError("columns must be a sequence of column names, not a string")
        wanted = list(self.columns) if columns is None else list(columns)
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"columns lists a name twice: {wanted!r}")
        known = set(self.columns)
        for name in wanted:
            if name not in known:
                raise _input_error(
                    self.path,
                    f"has no column {_short(name)} — its columns are: "
                    + _one_line(", ".join(self.columns), limit=300),
                )
        # Validated here, not on the first next(): a wrong column shows before anything runs.
        return self._stream(wanted if wanted else self.columns[:1], counts_only=not wanted)

    def _stream(self, read: list[str], *, counts_only: bool
                ) -> Generator[pa.RecordBatch, None, None]:
        raw = self._raw_batches(read)
        try:
            for batch in raw:
                if counts_only:
                    batch = batch.select([])
                n = batch.num_rows
                size = self.batch_size
                if n > 1 and batch.nbytes > self.batch_bytes:  # wide rows: fewer at a time
                    size = min(size, max(1, n * self.batch_bytes // batch.nbytes))
                if n <= size:
                    if n:
                        yield batch
                    continue
                for start in range(0, n, size):
                    yield batch.slice(start, size)
        finally:
            raw.close()

    @abc.abstractmethod
    def _raw_batches(self, columns: list[str]) -> Generator[pa.RecordBatch, None, None]:
        """Batches with exactly ``columns`` (non-empty, all known); errors as ``InputError``."""

    def where_rows(self, *rows: int) -> str:
        """Where the rows at positions ``rows`` (0-based, ascending) are, for a message:
        ``rows 1 and 4``."""
        return _places("row", [r + 1 for r in rows])

    def _require_rows(self, message: str) -> None:
        """Read the first batch now, so that parse errors and a file without rows show at open."""
        raw = self._raw_batches(self.columns)
        try:
            for batch in raw:
                if batch.num_rows:
                    return
        finally:
            raw.close()
        raise _input_error(self.path, message)


# --------------------------------------------------------------------------------------------
# CSV

_RAGGED = re.compile(r"Expected (\d+) columns?, got (\d+)")


def delimiter_hint(columns: Sequence[str]) -> str:
    """A hint for a CSV file read as one column because it is not comma-separated, or whose
    first line is Excel's ``sep=`` line rather than the header, else ""."""
    if 1 <= len(columns) <= 2 and columns[0].startswith("sep=") and not any(columns[1:]):
        comma = "" if columns[0] in ("sep=", "sep=,") else " and save it comma-separated"
        return (" — its first line (sep=...) is Excel's separator line, not the header: delete "
                f"that line{comma}")
    if len(columns) == 1:
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if sep in columns[0]:
                # A .tsv file is read tab-separated: renaming is the quicker fix.
                tsv = " (or rename it to .tsv)" if sep == "\t" else ""
                return (f" — the file seems to be separated by {name}; save it "
                        f"comma-separated{tsv}")
    return ""


class _CsvSource(InputSource):
    kind = "csv"

    def where_rows(self, *rows: int) -> str:
        """The rows and the lines of the file they start on, as an editor numbers them (a
        quoted value may hold line ends): ``row 4 (line 7)``, ``rows 1 and 4, lines 2 and 7``."""
        wanted, lines = {r + 1 for r in rows}, []
        found = _csv_rows(self.path, self._delimiter)
        try:
            for row, line, _ in found:
                if row in wanted:
                    lines.append(line)
                    if len(lines) == len(wanted):
                        break
        finally:
            found.close()
        places = super().where_rows(*rows)
        if len(lines) != len(wanted):
            return places
        return (f"{places} (line {lines[0]})" if len(lines) == 1
                else f"{places}, {_places('line', lines)}")

    def __init__(self, path: Path, batch_size: int, delimiter: str = ",") -> None:
        super().__init__(path, batch_size)
        self.columns = []
        self._delimiter = delimiter
        self._block_size = CSV_BLOCK_SIZE  # grown for a file whose values are longer
        self._check_bytes()
        names = self._names()
        _check_unique_names(path, names)
        self.columns = names
        self.schema = pa.schema([(n, pa.string()) for n in names])
        self._require_rows("has a header but no data rows — add rows below the header")

    def _check_bytes(self) -> None:
        """Read the whole file once, before any row is used: every byte must be UTF-8, and no
        quote may stay open to the end of the file.

        Rows are read later only in the columns a step needs, and pyarrow checks UTF-8 only in
        the columns it reads, so a bad byte deep in an unread column would otherwise stop the
        run half-way. A quote that is never closed swallows every following row into one value
        without an error.
        """
        bad, quotes, inside = _scan_csv_bytes(self.path, self._delimiter)
        if bad is not None and bad[1] == 0 and _starts_utf16(self.path):
            raise _input_error(
                self.path,
                "is UTF-16 text (as Excel saves 'Unicode Text'), not UTF-8 — save it as "
                "'CSV UTF-8'",
            )
        if bad is not None:
            raise _input_error(
                self.path,
                f"is not valid UTF-8 at line {bad[0]} (byte offset {bad[1]}) — save it as UTF-8",
            )
        if quotes % 2 and (found := _find_unclosed_quote(self.path, self._delimiter)):
            raise _input_error(
                self.path,
                f"{_row_or_header(*found)} opens a quote that is never closed, so every line "
                "after it would be read as one value — fix the quoting",
            )
        if inside and (found := _find_text_after_quote(self.path, self._delimiter)):
            # Read on, the quotes were dropped and the text joined ("x"y as xy; a MySQL
            # export's \"no\" as \no\"): other text sent than the file's, with no word.
            raise _input_error(
                self.path,
                f"{_row_or_header(*found)} has text after a quoted value's closing quote — "
                'within a quoted value, write a quote as two ("" for "), not \\"; or quote '
                "the whole value",
            )

    def _names(self) -> list[str]:
        """The header's names (the first block is parsed for them)."""
        while True:
            try:
                with self._reader(None) as reader:
                    return [str(n) for n in reader.schema.names]
            except (pa.ArrowException, UnicodeDecodeError, OSError) as exc:
                if not self._larger_blocks(exc):
                    raise self._error(exc, 0) from None

    def _larger_blocks(self, exc: Exception) -> bool:
        """Whether ``exc`` is a value longer than a block that larger blocks may hold; if so,
        the blocks are now larger, for this read and the later ones."""
        if "straddl" not in str(exc) or self._block_size >= CSV_MAX_BLOCK_SIZE:
            return False
        self._block_size = min(self._block_size * 4, CSV_MAX_BLOCK_SIZE)
        return True

    @contextlib.contextmanager
    def _reader(self, include: list[str] | None) -> Iterator[Any]:
        if include is None:
            convert = pa_csv.ConvertOptions()
        else:
            convert = pa_csv.ConvertOptions(
                column_types={n: pa.string() for n in self.columns},
                include_columns=include,
                strings_can_be_null=False,
                check_utf8=True,
            )
        # Opened by its path, the file is the reader's own, closed once its read-ahead (a
        # thread that goes on after ``close``) lets go of it. A stream closed here while that
        # thread still read from its descriptor number let it read from the next file given the
        # same number: the next reader's first block came back empty ("Empty CSV file", some 1
        # in 1,000 reopens after a value over a block), or a scan or fingerprint missed bytes.
        reader = pa_csv.open_csv(
            str(self.path),
            read_options=pa_csv.ReadOptions(block_size=self._block_size),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True,
                                              delimiter=self._delimiter),
            convert_options=convert,
        )
        try:
            yield reader
        finally:
            reader.close()

    def _raw_batches(self, columns: list[str]) -> Generator[pa.RecordBatch, None, None]:
        """The blocks' rows put together into batches of up to ``batch_size`` rows and
        ``batch_bytes``, as a Parquet file's come (a block of 1 kB rows holds some 250)."""
        blocks = self._blocks(columns)
        parts: list[pa.RecordBatch] = []
        rows = size = 0
        try:
            for batch in blocks:
                parts.append(batch)
                rows += batch.num_rows
                size += batch.nbytes
                if rows >= self.batch_size or size >= self.batch_bytes:
                    yield _one_batch(parts)
                    parts, rows, size = [], 0, 0
        finally:
            blocks.close()
        if parts:
            yield _one_batch(parts)

    def _require_rows(self, message: str) -> None:
        blocks = self._blocks(self.columns)
        try:
            if any(batch.num_rows for batch in blocks):
                return
        finally:
            blocks.close()
        raise _input_error(self.path, message)

    def _blocks(self, columns: list[str]) -> Generator[pa.RecordBatch, None, None]:
        """Each block's rows, in order; a value longer than a block starts the read again with
        larger blocks, its rows read so far skipped."""
        rows_done = 0
        while True:
            skip = rows_done
            try:
                with self._reader(columns) as reader:
                    while True:
                        try:
                            batch = reader.read_next_batch()
                        except StopIteration:
                            break
                        n = batch.num_rows
                        if skip:
                            if n <= skip:
                                skip -= n
                                continue
                            batch, n, skip = batch.slice(skip), n - skip, 0
                        rows_done += n
                        yield batch
                return
            except (pa.ArrowException, UnicodeDecodeError, OSError) as exc:
                if not self._larger_blocks(exc):
                    raise self._error(exc, rows_done) from None

    def _error(self, exc: Exception, rows_done: int) -> InputError:
        text = str(exc)
        ragged = _RAGGED.search(text)
        if ragged:
            expected, got = int(ragged.group(1)), int(ragged.group(2))
            found = _find_ragged_row(self.path, expected, self._delimiter)
            if found is not None:
                row, line, got = found
                row_text = f"row {row} (line {line})"
            else:
                row_text = self._a_row_after(rows_done)
            fix = (delimiter_hint(self.columns or _header(self.path, self._delimiter))
                   or " — fix the quoting or the delimiter")
            return _input_error(
                self.path, f"{row_text} has {got} fields, the header has {expected}{fix}")
        if isinstance(exc, UnicodeDecodeError) or "invalid UTF8" in text:
            where = _find_bad_utf8(self.path)
            at = f" at line {where[0]} (byte offset {where[1]})" if where else ""
            return _input_error(self.path, f"is not valid UTF-8{at} — save it as UTF-8")
        if "straddl" in text:
            long = _find_long_row(self.path, self._delimiter, rows_done, CSV_MAX_BLOCK_SIZE)
            holder = (f"row {long[0]} (line {long[1]})" if long
                      else self._a_row_after(rows_done))
            return _input_error(
                self.path,
                f"{holder} holds a value larger than {CSV_MAX_BLOCK_SIZE >> 20} MiB, or a quote "
                "that is never closed — check the quoting",
            )
        if "Empty CSV file" in text:  # no whole line: a header with no line end, or blanks
            with self.path.open("rb") as f:
                blank = not f.read(CSV_BLOCK_SIZE).strip()
            return _input_error(self.path, (
                "holds only blank lines, no header and no rows — give a file with a header "
                "line and rows below it") if blank else (
                "has a header but no data rows — add rows below the header"))
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
            return _input_error(self.path, f"cannot read it ({_os_reason(exc)})")
        return _input_error(self.path, f"cannot be read as CSV {self._after(rows_done)} "
                                       f"({_one_line(text)})")

    def _after(self, rows_done: int) -> str:
        """``after row 5, from line 9 on``: where a read that failed past row ``rows_done``
        stopped, for a message (the line left out where the file cannot be read for it)."""
        line = _line_after_row(self.path, self._delimiter, rows_done)
        return f"after row {rows_done}" + (f", from line {line} on" if line else "")

    def _a_row_after(self, rows_done: int) -> str:
        """``a row after row 5 (from line 9 on)``: the row a message is about, not found."""
        line = _line_after_row(self.path, self._delimiter, rows_done)
        return f"a row after row {rows_done}" + (f" (from line {line} on)" if line else "")


def _header(path: Path, delimiter: str) -> list[str]:
    """The names on a CSV file's first line (read while its schema is not known yet)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        return next(csv.reader([f.readline(1 << 16)], delimiter=delimiter), [])


def _starts_utf16(path: Path) -> bool:
    """Whether ``path`` starts with a UTF-16 byte order mark."""
    try:
        with open(path, "rb") as f:
            return f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    except OSError:
        return False


def _find_bad_utf8(path: Path) -> tuple[int, int] | None:
    """(line, byte offset) of the first byte that is not UTF-8, or None if there is none."""
    return _scan_csv_bytes(path)[0]


def _scan_csv_bytes(path: Path, delimiter: str = ","
                    ) -> tuple[tuple[int, int] | None, int, bool]:
    """One pass over ``path`` in 1 MiB chunks: (line, byte offset) of the first byte that is
    not UTF-8 (or None), the number of ``"`` characters (odd: a quote may be left open), and
    whether a quote stands between two characters that are neither the ``delimiter``, a quote
    nor a line end (``x"y``: text after a closing quote, or a quote inside an unquoted value).

    The quotes are counted by a vector compare, and a chunk that is ASCII (``isascii`` stops
    at its first other byte) is not decoded: ``bytes.count`` and ``decode`` took some 1.5 s
    over 600 MB of text. Lines are counted only up to a bad byte, to name its line. The
    quotes' neighbours are looked at by vector too, until one such is found: 0.16 s over 138
    MB of text with 35,000 quotes a MiB, where the pass took 0.03 s without."""
    base, carry, quotes, inside, last = 0, b"", 0, False, b"\n"
    free = np.ones(256, np.bool_)  # the bytes that bound no value
    free[[ord(delimiter), _QUOTE, ord("\r"), ord("\n")]] = False
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                found = np.frombuffer(chunk, np.uint8) == _QUOTE
                n = int(np.count_nonzero(found))
                quotes += n
                if n and not inside:
                    inside = _quote_inside(last + chunk, free)
                last = chunk[-1:] or last
                if not carry and chunk.isascii():
                    if not chunk:
                        return None, quotes, inside
                    base += len(chunk)
                    continue
                buf = carry + chunk
                try:
                    buf.decode("utf-8")
                except UnicodeDecodeError as exc:
                    if chunk and exc.reason == "unexpected end of data":
                        # A character cut by the chunk boundary: finish it with the next chunk.
                        base += exc.start
                        carry = buf[exc.start :]
                        continue
                    at = base + exc.start
                    return (_line_at(f, at), at), quotes, inside
                base += len(buf)
                carry = b""
                if not chunk:
                    return None, quotes, inside
    except OSError:
        return None, quotes, inside


def _quote_inside(data: bytes, free: npt.NDArray[np.bool_]) -> bool:
    """Whether a quote in ``data`` (the chunk, after the byte before it) has on both sides a
    byte that ``free`` says bounds no value (not the delimiter, a quote, a line end); a quote
    last in ``data`` is looked at with the next chunk."""
    a = np.frombuffer(data, np.uint8)
    before = np.flatnonzero(a[1:-1] == _QUOTE)  # the byte before each quote
    left = before[free[a[before]]]
    return bool(np.any(free[a[left + 2]]))


def _line_at(f: Any, offset: int) -> int:
    """The line (from 1) byte ``offset`` of the open binary file ``f`` is on."""
    f.seek(0)
    line = 1
    while offset > 0:
        chunk = f.read(min(_CHUNK, offset))
        if not chunk:
            break
        line += chunk.count(b"\n")
        offset -= len(chunk)
    return line


_EOF_SENTINEL: Final = "batchrunner-end-of-file-7f3a9c"


def _find_unclosed_quote(path: Path, delimiter: str) -> tuple[int, int] | None:
    """(data row, first line) of a row whose quoted value runs to the end of the file, if any;
    row 0 is the header.

    Python's reader quotes as pyarrow's does; a sentinel line is read after the file, and if it
    does not come back as a record of its own, an open quote swallowed it.
    """
    old_limit = csv.field_size_limit(sys.maxsize)
    last: tuple[int, int] | None = None
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(itertools.chain(f, ["\n", _EOF_SENTINEL + "\n"]),
                                delimiter=delimiter)
            row, prev_line, header_seen = 0, 0, False
            for record in reader:
                start_line, prev_line = prev_line + 1, reader.line_num
                if not record:
                    continue
                if record == [_EOF_SENTINEL]:
                    return None
                if header_seen:
                    row += 1
                header_seen = True
                last = (row, start_line)
    except (OSError, csv.Error):
        return None
    finally:
        csv.field_size_limit(old_limit)
    return last


def _row_or_header(row: int, line: int) -> str:
    """``row 4 (line 7)``, or, row 0, ``the header (line 1)``: where a CSV file's fault is."""
    return f"row {row} (line {line})" if row else f"the header (line {line})"


def _find_text_after_quote(path: Path, delimiter: str) -> tuple[int, int] | None:
    """(data row, first line) of the first row with text after a quoted value's closing
    quote, which pyarrow joins to the value, the quotes dropped; row 0 is the header. A quote
    inside an unquoted value (5" screen) is text, as pyarrow reads it."""
    old_limit = csv.field_size_limit(sys.maxsize)
    row, prev_line, header_seen = 0, 0, False
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    return None
                except csv.Error as e:
                    if "expected after" in str(e):  # "',' expected after '\"'"
                        return (row + 1 if header_seen else 0), prev_line + 1
                    return None
                prev_line = reader.line_num
                if not record:
                    continue
                if header_seen:
                    row += 1
                header_seen = True
    except OSError:
        return None
    finally:
        csv.field_size_limit(old_limit)


def _csv_rows(path: Path, delimiter: str) -> Generator[tuple[int, int, list[str]], None, None]:
    """(data row, first line, fields) of each row of a CSV file, as pyarrow reads them (a
    quoted value may hold line ends; blank lines hold no row): the line an editor shows a row
    on, for a message. Stops early at a file it cannot read."""
    old_limit = csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header: list[str] = []
            while not header:
                header = next(reader, ["<eof>"])
            row, prev_line = 0, reader.line_num
            for record in reader:
                start_line, prev_line = prev_line + 1, reader.line_num
                if not record:
                    continue
                row += 1
                yield row, start_line, record
    except (OSError, csv.Error):
        return
    finally:
        csv.field_size_limit(old_limit)


def _line_after_row(path: Path, delimiter: str, row: int) -> int | None:
    """The line (from 1) after the one data row ``row`` ends on (row 0: the header), as
    ``_csv_rows`` counts them; None if the file has no such row or cannot be read."""
    old_limit = csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            seen = -1  # the header is row 0
            for record in reader:
                if record:
                    seen += 1
                    if seen == row:
                        return reader.line_num + 1
    except (OSError, csv.Error):
        return None
    finally:
        csv.field_size_limit(old_limit)
    return None


def _find_ragged_row(path: Path, expected: int, delimiter: str
                     ) -> tuple[int, int, int] | None:
    """(data row, first line, fields) of the first row without ``expected`` fields, if any."""
    rows = _csv_rows(path, delimiter)
    try:
        for row, line, record in rows:
            if len(record) != expected:
                return row, line, len(record)
    finally:
        rows.close()
    return None


def _find_long_row(path: Path, delimiter: str, after: int, limit: int
                   ) -> tuple[int, int] | None:
    """(data row, first line) of the first row past row ``after`` whose text is ``limit``
    bytes or more in the file (one that no block of ``limit`` bytes holds), if any: each
    ``"`` in a value counted twice, as a quoted value holds it."""
    rows = _csv_rows(path, delimiter)
    try:
        for row, line, record in rows:
            if row > after:
                chars = sum(map(len, record))
                if chars * 4 >= limit and sum(len(v.encode()) + v.count('"')
                                              for v in record) >= limit:
                    return row, line
    finally:
        rows.close()
    return None


# --------------------------------------------------------------------------------------------
# Parquet


class _ParquetSource(InputSource):
    kind = "parquet"

    def __init__(self, path: Path, batch_size: int, files: list[Path]) -> None:
        super().__init__(path, batch_size)
        self._files = files
        self._starts: list[int] = []  # the position of each file's first row
        first_schema: Any = None
        total = 0
        for file in files:
            schema, rows = self._inspect(file)
            self._starts.append(total)
            if first_schema is None:
                first_schema = schema
                _check_unique_names(self._label(file), [str(n) for n in schema.names])
            elif not schema.equals(first_schema, check_metadata=False):
                raise _input_error(
                    path,
                    f"{file.name} and {files[0].name} have different schemas "
                    f"({_schema_difference(schema, first_schema)}) — "
                    "every .parquet file in the directory must have the same columns and types",
                )
            total += rows
        self.range_index = _pandas_range_index(first_schema)
        self.schema = first_schema.remove_metadata()
        self.columns = [str(n) for n in self.schema.names]
        self.num_rows = total
        if total == 0:
            raise _input_error(path, "has 0 rows — give a file with rows")

    def files(self) -> list[Path]:
        return list(self._files)

    def where_rows(self, *rows: int) -> str:
        """In a directory, each row by its file and its row there: ``row 2 of part-0.parquet
        and row 2 of part-1.parquet`` (its row in all of them, ``row 4``, is in none)."""
        if len(self._files) == 1:
            return super().where_rows(*rows)
        places = []
        for row in rows:
            i = bisect.bisect_right(self._starts, row) - 1
            places.append(f"row {row - self._starts[i] + 1} of {self._files[i].name}")
        return places[0] if len(places) == 1 else f"{', '.join(places[:-1])} and {places[-1]}"

    def _label(self, file: Path) -> Path:
        """The path to name in messages: the file itself, or ``dir/file`` inside a directory."""
        return file if file == self.path else self.path / file.name

    def _inspect(self, file: Path) -> tuple[Any, int]:
        try:
            size = file.stat().st_size
        except OSError as exc:
            raise _input_error(self._label(file), f"cannot read it ({_os_reason(exc)})") from None
        if size == 0:
            raise _input_error(self._label(file), "the file is empty (0 bytes) — re-export it")
        try:
            with pq.ParquetFile(str(file)) as pf:
                return pf.schema_arrow, int(pf.metadata.num_rows)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _input_error(
                self._label(file),
                f"is not a readable Parquet file ({_one_line(str(exc))}) — re-export it",
            ) from None

    def _raw_batches(self, columns: list[str]) -> Generator[pa.RecordBatch, None, None]:
        for file in self._files:
            rows_done = 0
            try:
                # Column chunks read as a stream, _CHUNK at a time: by default a row group's
                # chunks are read whole, and an export written as one row group of a million
                # rows of text held all of its text at once, however few rows a batch takes.
                with pq.ParquetFile(str(file), buffer_size=_CHUNK, pre_buffer=False) as pf:
                    for batch in pf.iter_batches(batch_size=self._rows_at_a_time(pf, columns),
                                                 columns=columns):
                        rows_done += batch.num_rows
                        yield batch
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise self._damage(file, columns, rows_done, exc) from None

    def _damage(self, file: Path, columns: list[str], rows_done: int,
                exc: Exception) -> InputError:
        """The error of a read of ``columns`` of ``file`` that failed past row ``rows_done``,
        naming the column and the rows it cannot be read in: a batch spans several row groups
        and all the columns read, so the row it failed after says neither (a damaged page of a
        4,000-row file's seventh row group was "after row 0")."""
        found = None
        with (contextlib.suppress(pa.ArrowException, OSError, ValueError),
              pq.ParquetFile(str(file), buffer_size=_CHUNK, pre_buffer=False) as pf):
            found = _damaged_column(pf, columns, rows_done)
        if found is None:
            return _input_error(
                self._label(file),
                f"cannot read the rows after row {rows_done} ({_one_line(str(exc))}) — "
                "the file may be damaged; re-export it")
        name, first, last, reason = found
        rows = f"row {first}" if first == last else f"rows {first}–{last}"
        return _input_error(
            self._label(file),
            f"column {_short(name)} cannot be read in {rows} ({reason}) — the file may be "
            "damaged; re-export it")


    def _rows_at_a_time(self, pf: pq.ParquetFile, columns: list[str]) -> int:
        """``batch_size``, or fewer rows when ``columns`` are wide: as many as their size in the
        file, before compression, puts in ``batch_bytes`` (so that a batch of wide rows is never
        decoded whole only to be sliced)."""
        meta = pf.metadata
        wanted = set(columns)
        read = [j for j in range(meta.num_columns)
                if meta.schema.column(j).path.split(".")[0] in wanted]
        nbytes = sum(int(meta.row_group(g).column(j).total_uncompressed_size)
                     for g in range(meta.num_row_groups) for j in read)
        rows = int(meta.num_rows)
        if not rows or nbytes <= self.batch_bytes:
            return self.batch_size
        return min(self.batch_size, max(1, rows * self.batch_bytes // nbytes))


#: Rows a column is read at a time when a damaged one is looked for: the rows before the page
#: that fails are read whole, so the range named starts at most this many rows before it.
_PROBE_ROWS: Final = 1024


def _damaged_column(pf: pq.ParquetFile, columns: list[str], rows_done: int
                    ) -> tuple[str, int, int, str] | None:
    """The first of ``columns`` whose read alone fails, from the row group that holds row
    ``rows_done`` (0-based) on: its name, the rows it cannot be read in (from 1: the first
    after those it gave, to its row group's last), and why; None if each reads alone."""
    meta = pf.metadata
    start = 0
    for group in range(meta.num_row_groups):
        n = int(meta.row_group(group).num_rows)
        if start + n > rows_done:
            for name in columns:
                read = 0
                try:
                    for batch in pf.iter_batches(batch_size=_PROBE_ROWS, row_groups=[group],
                                                 columns=[name]):
                        read += batch.num_rows
                except (pa.ArrowException, OSError, ValueError) as exc:
                    return name, start + read + 1, start + n, _one_line(str(exc))
        start += n
    return None


def _pandas_range_index(schema: Any) -> tuple[str, ...]:
    """The names of the index levels pandas wrote into ``schema``'s metadata as a range."""
    raw = (schema.metadata or {}).get(b"pandas")
    if raw is None:
        return ()
    try:
        levels = json.loads(raw)["index_columns"]
        return tuple(str(level["name"]) for level in levels if isinstance(level, dict)
                     and level.get("kind") == "range" and level.get("name") is not None)
    except (ValueError, KeyError, TypeError):
        return ()


def _schema_difference(a: Any, b: Any) -> str:
    if list(a.names) != list(b.names):
        return f"columns {_one_line(', '.join(a.names), 80)} vs {_one_line(', '.join(b.names), 80)}"
    for field_a, field_b in zip(a, b, strict=True):
        if not field_a.type.equals(field_b.type):
            return f"column {_short(field_a.name)} is {field_a.type} vs {field_b.type}"
        if field_a.nullable != field_b.nullable:
            return f"column {_short(field_a.name)} is nullable in one file only"
    return "field metadata differs"


# --------------------------------------------------------------------------------------------
# JSONL and the OpenAI Batch API format


class _JsonlSource(InputSource):
    def __init__(self, path: Path, batch_size: int) -> None:
        super().__init__(path, batch_size)
        self.kind = "jsonl"
        # The byte offsets of the lines ``_long_number`` found when the file was read through
        # (``_scan``), and the file's ``stamp`` then: the later reads of an unchanged file look
        # them up rather than look at every line again (a run reads its rows three times more).
        self._long_lines: frozenset[int] = frozenset()
        self._scanned: object = None
        first = self._first_record()
        if first is None:
            raise _input_error(
                path, "has no JSON records, only blank lines — write one JSON object per line"
            )
        # Three of the four keys, or a custom_id with a body that is a request, are a batch
        # line that lacks some: named as such (line 1 has no 'method'), not read as a file of
        # prompts that asks for --prompt (whose advice, --prompt-column body, sent each body
        # as the user's text).
        if sum(key in first for key in OPENAI_BATCH_COLUMNS) >= 3 or (
                "custom_id" in first and isinstance(first.get("body"), dict)):
            self.kind = "openai_batch"
            self.columns = list(OPENAI_BATCH_COLUMNS)
            self.schema = pa.schema([(n, pa.string()) for n in self.columns])
            self._require_rows("has no JSON records — write one JSON object per line")
        else:
            self.kind = "jsonl"
            self._scan()  # reads every record: at least the first, found above

    def _scan(self) -> None:
        """Every record, read once before any row is used: the columns (every key, in the order
        first seen), their types, and the row count; a line that is not a JSON object is named
        now, not half-way through the run."""
        kinds: dict[str, int] = {}
        n = 0
        long_lines: list[int] = []
        stamp = self.stamp()
        for lineno, offset, line in self._lines():
            long = _long_number(line)
            if long:
                long_lines.append(offset)
            for key, value in self._parse(lineno, offset, line, long).items():
                kinds[key] = kinds.get(key, 0) | _kind(value)
            n += 1
        self._long_lines, self._scanned = frozenset(long_lines), stamp
        self.num_rows = n
        self.rows_checked = True
        self.columns = list(kinds)
        self.schema = pa.schema([(k, _JSONL_TYPES.get(bits, pa.string()))
                                 for k, bits in kinds.items()])

    def _lines(self) -> Generator[tuple[int, int, bytes], None, None]:
        """(line number, byte offset, stripped text) of each non-blank line."""
        try:
            with open(self.path, "rb") as f:
                offset = 0
                for lineno, raw in enumerate(f, start=1):
                    start = offset
                    offset += len(raw)
                    line = raw.strip()
                    if lineno == 1 and line.startswith(_BOM):
                        line = line[len(_BOM) :].strip()
                    if line:
                        yield lineno, start, line
        except OSError as exc:
            raise _input_error(self.path, f"cannot read it ({_os_reason(exc)})") from None

    def _parse(self, lineno: int, offset: int, line: bytes, long: bool | None = None
               ) -> dict[str, Any]:
        """The line's record; ``long``: whether ``_long_number(line)``, if known."""
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if (huge := _with_huge_numbers(line)) is not None:
                return self._object(lineno, huge)
            if self._cut_short(offset):
                raise _input_error(
                    self.path,
                    f"line {lineno}, the file's last, is cut short: it has no line end and is not "
                    "whole JSON (copied while it was still being written?) — wait for the file "
                    "to be complete, or remove that line",
                ) from None
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise _input_error(
                    self.path,
                    f"line {lineno} is not valid UTF-8 (byte offset {offset + bad.start}) — "
                    "save it as UTF-8",
                ) from None
            raise _input_error(
                self.path,
                f"line {lineno} is not valid JSON ({_one_line(exc.msg, 80)}) — "
                "write one JSON object per line",
            ) from None
        if self.kind == "jsonl" and (_long_number(line) if long is None else long):
            # An id like 123456789012345678901234567890 is kept as written, not rounded to
            # 1.2345678901234568e+29 (orjson reads integers past 64 bits as floats).
            obj = json.loads(line)
        return self._object(lineno, obj)

    def _object(self, lineno: int, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            what = _json_kind(obj)
            raise _input_error(
                self.path,
                f"line {lineno} is {what}, not a JSON object — write one JSON object per line",
            )
        return obj

    def _cut_short(self, offset: int) -> bool:
        """Whether the line at byte ``offset`` is the file's last and has no line end: a log
        file copied or read while its writer was still appending to it."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(_CHUNK):
                    if b"\n" in chunk:
                        return False
        except OSError:
            return False
        return True

    def where_rows(self, *rows: int) -> str:
        """The lines of the file the rows are on, as an editor numbers them (blank lines
        hold no row): ``lines 1 and 7``."""
        wanted, lines = set(rows), []
        for at, (lineno, _, _) in enumerate(self._lines()):
            if at in wanted:
                lines.append(lineno)
                if len(lines) == len(wanted):
                    break
        return _places("line", lines)

    def _first_record(self) -> dict[str, Any] | None:
        lines = self._lines()
        try:
            for lineno, offset, line in lines:
                return self._parse(lineno, offset, line)
        finally:
            lines.close()
        return None

    def _raw_batches(self, columns: list[str]) -> Generator[pa.RecordBatch, None, None]:
        batch_size = self.batch_size
        openai = self.kind == "openai_batch"
        with_body = "body" in columns
        types = [self.schema.field(name).type for name in columns]
        convert = [_as_text if t == pa.string() else None for t in types]
        values: list[list[Any]] = [[] for _ in columns]
        n = nbytes = 0
        # The file as it was read through: its long numbers are where they were found then.
        known = (self._long_lines if not openai and self._scanned is not None
                 and self.stamp() == self._scanned else None)
        lines = self._lines()
        try:
            for lineno, offset, line in lines:
                obj = self._parse(lineno, offset, line,
                                  None if known is None else offset in known)
                if openai:
                    self._check_openai(lineno, obj)
                    # The body as text, only for the passes that read it (not the ids').
                    body = orjson.dumps(obj["body"]).decode() if with_body else ""
                    for out, name in zip(values, columns, strict=True):
                        out.append(body if name == "body" else obj[name])
                    nbytes += len(body)
                else:
                    for out, name, conv in zip(values, columns, convert, strict=True):
                        value = obj.get(name)
                        if conv is not None:
                            value = conv(value)
                            nbytes += len(value) if value else 0  # the batch's text
                        out.append(value)
                n += 1
                if n == batch_size or nbytes >= self.batch_bytes:
                    yield self._batch(columns, types, values, lineno)
                    values = [[] for _ in columns]
                    n = nbytes = 0
        finally:
            lines.close()
        if n:
            yield self._batch(columns, types, values, None)

    def _batch(self, columns: list[str], types: list[pa.DataType], values: list[list[Any]],
               lineno: int | None) -> pa.RecordBatch:
        arrays = []
        for name, typ, column in zip(columns, types, values, strict=True):
            array = typed_array(column, typ)
            if array is None:  # the file changed since it was opened: a value of another kind
                where = f"by line {lineno}" if lineno else "at its end"
                raise _input_error(self.path, f"changed while it was read: column {_short(name)} "
                                   f"holds a value that is not {typ} {where} — run again")
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, names=list(columns))

    def _check_openai(self, lineno: int, obj: dict[str, Any]) -> None:
        missing = [k for k in OPENAI_BATCH_COLUMNS if k not in obj]
        if missing:
            raise _input_error(
                self.path,
                f"line {lineno} has no {_short(missing[0])} — every line of an OpenAI batch file "
                "needs custom_id, method, url and body",
            )
        custom_id, method, url = obj["custom_id"], obj["method"], obj["url"]
        if not isinstance(custom_id, str) or not custom_id:
            number = isinstance(custom_id, int | float) and not isinstance(custom_id, bool)
            raise _input_error(
                self.path,
                f"line {lineno}: custom_id is {_short(custom_id)} — it must be a non-empty string"
                + (f': write it as "{custom_id}"' if number else ""),
            )
        if not isinstance(method, str) or method.upper() != "POST":
            raise _input_error(
                self.path, f'line {lineno}: method is {_short(method)} — it must be "POST"'
            )
        if not isinstance(url, str) or not url.rstrip("/").endswith("/chat/completions"):
            raise _input_error(
                self.path,
                f"line {lineno}: url is {_short(url)} — batchrunner sends /v1/chat/completions "
                "requests only: move the lines for other endpoints to a file of their own (for "
                "the Batch API)",
            )
        body = obj["body"]
        if not isinstance(body, dict):
            raise _input_error(
                self.path, f"line {lineno}: body is {_short(body)} — it must be a JSON object",
            )
        messages = body.get("messages")
        if self.refuse_unsendable and not (isinstance(messages, list) and messages):
            # Every chat completions API answers 400 ("'messages' is a required property"):
            # a body written for the legacy completions API ("prompt"), most often.
            said = "no messages" if messages is None else f"messages {_short(messages)}"
            raise _input_error(
                self.path,
                f"line {lineno}: body has {said} — a chat completion's body needs a list of "
                'them: "messages": [{"role": "user", "content": "..."}]'
                + (' (a "prompt" is the legacy completions API\'s)' if "prompt" in body else ""),
            )
        if (self.refuse_unsendable and body.get("max_tokens") is not None
                and body.get("max_completion_tokens") is not None):
            # Every API in front of OpenAI's models answers such a body 400: the file is
            # refused before anything is sent, as a job file that sets both is.
            raise _input_error(
                self.path,
                f"line {lineno}: body sets both max_tokens and max_completion_tokens — APIs "
                "refuse a request with both (OpenAI: \"Setting 'max_tokens' and "
                "'max_completion_tokens' at the same time is not supported\"): keep one of "
                "them in every line (max_completion_tokens for a reasoning model: o-series, "
                "GPT-5)",
            )


def _one_batch(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    """``parts`` (one schema) as one batch, copied together; ``pa.concat_batches`` does so from
    pyarrow 19, this with any pyarrow the project allows, at the same cost."""
    if len(parts) == 1:
        return parts[0]
    batches = pa.Table.from_batches(parts).combine_chunks().to_batches()
    return batches[0] if batches else parts[0]


def _places(what: str, numbers: list[int]) -> str:
    """``row 3``, ``rows 1 and 4``, ``rows 1, 4 and 9``."""
    if len(numbers) == 1:
        return f"{what} {numbers[0]}"
    return f"{what}s {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}"


def _with_huge_numbers(line: bytes) -> Any | None:
    """The line's value where orjson refused it only for a number past a double's range
    (``1e400``, 309 digits: JSON sets no limit), each such number kept as written, as a long
    integer is (an integer as one); None where the line is not valid JSON for another reason."""
    if not _HUGE_NUMBER.search(line):
        return None
    huge = []

    def finite_or_text(text: str) -> float | str:
        value = float(text)
        if math.isinf(value):
            huge.append(text)
            return text
        return value

    def long_int(text: str) -> int:
        if len(text) >= _HUGE_DIGITS:
            huge.append(text)
        return int(text)  # past 4,300 digits, a ValueError: refused

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(line, parse_float=finite_or_text, parse_int=long_int,
                           parse_constant=refuse)
    except ValueError:  # JSONDecodeError, a NaN or Infinity, bytes not UTF-8
        return None
    return value if huge else None


def _long_number(line: bytes) -> bool:
    """Whether ``line`` holds 20 ASCII digits or "-" in a row (in a string too, where reading
    the line again finds the same values), as ``re.search(rb"[-0-9]{20}", line)`` finds: one
    pass of ``bytes.translate`` and a substring search, some 5 times as fast as that search."""
    return _LONG_NUMBER in line.translate(_DIGITS_AS_ZERO)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits, which orjson does not write
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# The kinds of JSON value a JSONL column holds (bits), and the column type each makes when it
# is the only kind; any mix (integers beside decimals too, so that 10 stays "10" in a prompt, as
# written), objects and arrays are text.
_INT, _FLOAT, _BOOL, _STR, _OTHER = 1, 2, 4, 8, 16
_JSONL_TYPES = {_INT: pa.int64(), _FLOAT: pa.float64(), _BOOL: pa.bool_(), _STR: pa.string()}


def _kind(value: Any) -> int:
    if value is None:
        return 0
    kind = type(value)
    if kind is str:
        return _STR
    if kind is bool:
        return _BOOL
    if kind is int:
        return _INT if -(2**63) <= value < 2**63 else _OTHER
    return _FLOAT if kind is float else _OTHER


# --------------------------------------------------------------------------------------------
# Duplicate keys


# --------------------------------------------------------------------------------------------
# Atomic writing


def temp_path_for(path: Path) -> Path:
    """The temporary file written before ``path`` is replaced: ``.<name>.tmp-<pid>``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _check_output_path(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise _usage_error(path, f"the directory {parent} does not exist — create it first")
    if path.is_dir():
        raise _usage_error(path, "is a directory — give a file name")


def _create_private(path: Path) -> int:
    """Create (or truncate) ``path`` readable and writable by its owner only; return the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the file may have existed with wider permissions
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be fsynced."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temp file (0600), fsync, rename, fsync dir."""
    path = Path(path)
    _check_output_path(path)
    tmp = temp_path_for(path)
    try:
        fd = _create_private(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _output_error(path, f"cannot write it ({_os_reason(exc)})", exc) from None
    _fsync_dir(path.parent)


# What flock fails with where a file system does not support it on a directory.
_NO_FLOCK: Final = frozenset(
    getattr(errno, name) for name in ("ENOLCK", "EBADF", "EINVAL", "EOPNOTSUPP", "ENOTSUP")
    if hasattr(errno, name))


class RunLock:
    """An exclusive ``flock`` on the output directory itself, held while a run (or a rebuild of
    the outputs) uses it, so that two never do at once: two runs of one job would send the same
    rows twice.

    The OS releases it when the process ends, however it ends, so a killed run leaves no stale
    lock; and it creates no file. Taken on ``__enter__`` if the directory exists, else by
    ``acquire`` once the run has created it. ``holder`` names the run holding it, for the
    message. Not taken on Windows, nor where the file system has no ``flock`` on a directory
    (NFS): there, as before, nothing stops a second run.
    """

    def __init__(self, out_dir: Path, holder: Callable[[], str] = lambda: "") -> None:
        self.out_dir = Path(out_dir)
        self._holder = holder
        self._fd: int | None = None
        self.unsupported = sys.platform == "win32"  # no flock here: runs go unguarded

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        if self.out_dir.is_dir():
            self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def acquire(self) -> None:
        if self._fd is not None or self.unsupported:
            return
        import fcntl

        try:
            fd = os.open(self.out_dir, os.O_RDONLY)
        except OSError as exc:
            raise _output_error(self.out_dir, f"cannot open it ({_os_reason(exc)})") from None
        for _ in range(3):  # `status` looking at the lock holds it for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except BlockingIOError:
                time.sleep(0.05)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_FLOCK:  # NFS on a directory, some FUSE mounts
                    self.unsupported = True
                    return
                raise _output_error(self.out_dir, f"cannot lock it ({_os_reason(exc)})"
                                    ) from None
        os.close(fd)
        holder = self._holder()
        raise OutputBusy(
            f"another batchrunner run is using {self.out_dir}{f' ({holder})' if holder else ''}"
            "; let it finish or stop it, then run again"
        )


def is_locked(out_dir: Path) -> bool:
    """Whether a run holds ``out_dir``'s ``RunLock`` now."""
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the ``.*.tmp-*`` files a crashed run left in ``directory``; return them.

    Call it before this process opens writers in ``directory``: it removes every such file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed: list[Path] = []
    # ".name.tmp-PID" from this module; ".name.XXXX.tmp" from earlier report writers.
    for candidate in sorted({*directory.glob(".*.tmp-*"), *directory.glob(".*.tmp")}):
        if candidate.is_symlink() or candidate.is_file():
            try:
                candidate.unlink()
            except FileNotFoundError:
                continue
            removed.append(candidate)
    return removed


def _has_zone(typ: pa.DataType) -> bool:
    return pa.types.is_timestamp(typ) and typ.tz is not None


def _utc_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Timestamps with a time zone as RFC 3339 text in UTC, as ``2026-11-30T16:49:23.602Z``:
    the CSV and JSONL results write a time alike (Arrow's CSV writer would write
    ``2026-11-30 16:49:23.602Z``), and Python, pandas and JavaScript all read it."""
    utc = pc.cast(column, pa.timestamp(column.type.unit, tz="UTC"))
    return utc_texts(utc, pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ"))


def _for_json(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Columns whose Python values would not read as the data does, made so: timestamps with a
    time zone as ``_utc_text`` (turned into Python datetimes, pyarrow would import pandas for
    the zone); pandas' datetimes (timestamp[ns]) without one as the text of the pandas
    Timestamps pyarrow made of them (importing pandas), which orjson wrote by their ``str``;
    float32 as the float64 nearest its shortest text (0.7, not 0.699999988079071)."""
    for i, field in enumerate(batch.schema):
        typ = field.type
        if _has_zone(typ):
            batch = batch.set_column(i, field.name, _utc_text(batch.column(i)))
        elif pa.types.is_timestamp(typ) and typ.unit == "ns":
            batch = batch.set_column(i, field.name, prompt_text(batch.column(i)))
        elif pa.types.is_float32(typ) or pa.types.is_float16(typ):
            shortest = pc.cast(pc.cast(batch.column(i), pa.string()), pa.float64())
            batch = batch.set_column(i, field.name, shortest)
    return batch


def _json_rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """The rows of ``batch`` as a JSONL file holds them (see ``_for_json``), float32 and
    float16 inside lists, structs and maps shortened too, maps as dicts, dates and times past
    Python's (10000-01-01: ``to_pylist`` raises OverflowError) as the text orjson writes of
    the others."""
    batch = _for_json(batch)
    far = [i for i in range(batch.num_columns) if holds_far_times(batch.column(i))]
    plain = batch
    for i in far:  # read as nulls by to_pylist, then replaced
        plain = plain.set_column(i, batch.schema.field(i).name, pa.nulls(batch.num_rows))
    rows: list[dict[str, Any]] = plain.to_pylist()
    for i in far:
        for row, value in zip(rows, python_values(batch.column(i), sep="T"), strict=True):
            row[batch.schema.field(i).name] = value
    for i, field in enumerate(batch.schema):
        if pa.types.is_nested(field.type) and has_maps_or_narrow_floats(field.type):
            for row, value in zip(rows, nested_values(batch.column(i)), strict=True):
                row[field.name] = value
    return rows


#: Text and binary in Arrow's view layout (what Polars writes), which its CSV writer refuses.
_VIEWS: Final = {getattr(pa, view)(): getattr(pa, plain)()
                 for view, plain in (("string_view", "string"), ("binary_view", "binary"))
                 if hasattr(pa, view)}


def _not_csv(typ: pa.DataType) -> bool:
    """Whether Arrow's CSV writer cannot write a column of ``typ`` (or not every value of it:
    binary that is not UTF-8), or not as ours do (a time with a zone, see ``_utc_text``)."""
    return (pa.types.is_nested(typ) or isinstance(typ, pa.BaseExtensionType) or _has_zone(typ)
            or pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
            or pa.types.is_fixed_size_binary(typ) or typ in _VIEWS)


def _csv_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A column ``_not_csv`` as text: lists, structs and maps as JSON, binary as UTF-8 (``\\x``
    escapes where it is not), an extension type's values (a UUID, say) as ``str`` writes them,
    a time with a zone as ``_utc_text``, text and binary in the view layout as the others."""
    if _has_zone(column.type):
        return _utc_text(column)
    if column.type in _VIEWS:
        column = pc.cast(column, _VIEWS[column.type])
    if isinstance(column.type, pa.BaseExtensionType):
        return string_array([None if v is None else str(v) for v in column.to_pylist()])
    return prompt_text(column)


class ResultWriter:
    """Stream record batches into ``path`` as Parquet, CSV or JSONL, atomically.

    Rows go to a temporary file ``.<name>.tmp-<pid>`` (mode 0600) in the same directory;
    ``close`` fsyncs it and renames it onto ``path``, ``abort`` deletes it. As a context manager
    it closes on success and aborts on an exception.
    """

    def __init__(self, path: Path, fmt: str, schema: pa.Schema,
                 dictionary: Sequence[str] | None = None) -> None:
        """``dictionary``: the columns a Parquet file dictionary-encodes (default: all)."""
        if fmt not in RESULT_FORMATS:
            raise UsageError(
                f"results format {fmt!r} is not supported — use one of {', '.join(RESULT_FORMATS)}"
            )
        self.path = Path(path)
        self.fmt = fmt
        self.schema = schema
        self.rows_written = 0
        self._done = False
        _check_output_path(self.path)
        self._tmp = temp_path_for(self.path)
        try:
            fd = _create_private(self._tmp)
        except OSError as exc:
            raise _output_error(self.path, f"cannot write it ({_os_reason(exc)})", exc) from None
        self._file = os.fdopen(fd, "wb")
        self._writer: Any = None
        self._as_text: list[str] = []  # columns a CSV file holds as text (``_csv_text``)
        try:
            if fmt == "parquet":
                self._writer = pq.ParquetWriter(
                    self._file, schema, compression="zstd",
                    use_dictionary=True if dictionary is None else list(dictionary))
            elif fmt == "csv":
                self._as_text = [f.name for f in schema if _not_csv(f.type)]
                self._writer = pa_csv.CSVWriter(self._file, pa.schema(
                    [f.with_type(pa.string()) if f.name in self._as_text else f
                     for f in schema]))
        except BaseException:
            self.abort()
            raise

    @property
    def temp_path(self) -> Path:
        return self._tmp

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append the rows of ``batch`` (its schema must match, or cast to, the writer's)."""
        if self._done:
            raise RuntimeError(f"ResultWriter for {self.path} is already closed")
        if not batch.schema.equals(self.schema, check_metadata=False):
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            try:
                batch = pc.cast_table(table, self.schema)
            except (pa.ArrowException, ValueError) as exc:
                raise ValueError(
                    f"batch schema does not match the writer's schema: {_one_line(str(exc))}"
                ) from exc
        if batch.num_rows == 0:
            return
        for name in self._as_text:
            i = batch.schema.get_field_index(name)
            batch = batch.set_column(i, name, _csv_text(batch.column(i)))
        try:
            if self._writer is not None:
                self._writer.write(batch)
            else:
                self._file.write(
                    b"".join(
                        dumps_json(row, orjson.OPT_APPEND_NEWLINE) for row in _json_rows(batch)
                    )
                )
        except OSError as exc:
            raise _output_error(self.path, f"cannot write it ({_os_reason(exc)})", exc) from None
        self.rows_written += batch.num_rows

    def close(self) -> None:
        """Finish the file, fsync it and move it onto ``path`` atomically. Idempotent."""
        if self._done:
            return
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise _output_error(self.path, f"cannot write it ({_os_reason(exc)})",
                                    exc) from None
            raise
        self._done = True
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop what was written: close and delete the temporary file. Idempotent."""
        if self._done:
            return
        self._done = True
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        with contextlib.suppress(OSError):
            self._file.close()
        _unlink_quietly(self._tmp)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
