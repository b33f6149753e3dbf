"""The journal: durable per-row outcomes in ``OUT_DIR/journal/``.

It is a directory of immutable Parquet segment files named
``seg-<run id>-<writer id>-<sequence>.parquet``. A segment is written to a temporary name,
fsynced, renamed into place and the directory fsynced, so a crash at any instant leaves either
the whole segment or none of it. Writers never share a name, so several processes (later,
several machines on shared storage) can add segments to one journal with no coordination. A
writer merges its own small segments as it goes, into ``seg-<run id>-<writer id>-<first>-<last>``
(``JournalWriter._merge``).

Reading merges all segments: the newest record of a row wins, except that a failure never
replaces an ``ok`` (a rerun that failed keeps the answer already paid for). What a row has cost
is carried from record to record (``earlier_cost_usd``), so its newest record knows the row's
whole cost; where an older ``ok`` wins over it, the winner's ``earlier_cost_usd`` is raised to
match, and the rerun's cost is not lost. Leftover temporary
files are removed; a segment that cannot be read stops the run with a message naming it, and is
never silently trusted.

Besides outcomes (``ok``, ``failed``) the journal holds ``retrying`` records (``RETRYING``): an
attempt of a row was billed (a reply with usage but no usable answer) and the row is to be sent
again. Such a record is written when that happens, carrying everything the row's billed attempts
cost so far in ``earlier_cost_usd``, so that the money is in the journal should the job stop (or
be killed) before the row's outcome comes. It is no outcome: it ranks below any ``ok`` or
``failed`` record of its row whatever their times (``ok`` 1, ``failed`` 0, ``retrying`` -1 in
the index), so a row whose records are all ``retrying`` is a row to do (``Latest.ok`` -1) whose
cost counts (``Latest.cost``); compaction keeps its latest ``retrying`` record when no outcome
wins, else it raises the winner's ``earlier_cost_usd`` as for any record. Journals without such
records read as before.

At the end of a run ``compact`` merges the segments into one, one record a row, sorted by input
position, in row groups of ``ROW_GROUP_ROWS``: the results file is then a merge of two sorted
streams (see ``batchrunner.results``). Compaction keeps only a narrow index of every record
(key, status, time, location) in memory and copies whole records one row group at a time, so
its memory does not grow with the width of the answers.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchrunner import compute as pc
from batchrunner.arrow import (
    bool_array,
    float64_array,
    int64_array,
    is_value,
    scalar,
    string_array,
    to_numpy,
)
from batchrunner.errors import JournalError, OutputError
from batchrunner.records import (
    ADDED_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOME_SCHEMA,
    REPEATED_COLUMNS,
    RETRYING,
    Outcome,
)

__all__ = ["ROW_GROUP_ROWS", "Fresh", "Journal", "JournalWriter", "Latest", "Order", "new_run_id"]

SEGMENT_GLOB = "seg-*.parquet"
# What a reply's cost is priced from, as a record keeps it (``Journal.price_unpriced``).
PRICED_FROM = ("model", "cost_usd", "prompt_tokens", "completion_tokens", "cached_tokens",
               "cache_write_tokens", "search_units", "search_requests", "attempts",
               "unknown_tries", "priced_as", "audio_prompt_tokens", "audio_completion_tokens")
ROW_GROUP_ROWS = 16_384
_GATHER_ROWS = 16_384  # records copied at a time while compacting (a row group)
_INDEX_ROWS = 65_536  # records ranked at a time while compacting
# A run merges its own segments as it goes (``JournalWriter.write``): every MERGE_FAN of its
# segments of one size are made one, so long as that one holds no more than MERGE_ROWS records.
MERGE_FAN = 16
MERGE_ROWS = 65_536
# A segment's Parquet pages: a page is cut once it holds this many bytes, checked every
# SEGMENT_PAGE_VALUES values, so that its buffers stay under the C allocator's mmap threshold
# (see ``write_segment``).
SEGMENT_PAGE_BYTES = 64 * 1024
SEGMENT_PAGE_VALUES = 128
# Parquet key-value metadata of a compacted segment: the input order it is sorted by.
ORDER_KEY = b"batchrunner.order"
# A record's location in the journal, as one int64: segment << 40 | row group << 24 | row.
# Locations grow in the order records were written (segments sort by run, then sequence).
_ROW_BITS = 24
_GROUP_BITS = 16
_GROUP_MASK = (1 << _GROUP_BITS) - 1
_ROW_MASK = (1 << _ROW_BITS) - 1
_T = TypeVar("_T")


class _Adder(Protocol):
    def add(self, part: pa.Table) -> None: ...


_F = TypeVar("_F", bound=_Adder)


# Rows whose values changed since their records were made: input positions (ascending) and each
# row's ``row_hash`` now. Of such a row's records, one made with that hash wins over the others.
Fresh = tuple[np.ndarray, np.ndarray]


class Order(Protocol):
    """The input order a journal is compacted in."""

    tag: str  # names the order: a journal already compacted in it is left alone
    rows: int  # positions run from 0 to rows - 1

    def positions(self, keys: pa.Array) -> pa.Array:
        """The int64 input position of each key (null: not in the input)."""
        ...


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def outcomes_table(outcomes: Sequence[Outcome]) -> pa.Table:
    """``outcomes`` as an Arrow table, built one column at a time from Arrow buffers.

    This runs for every row a run records, so it is kept cheap: about 1.6 µs a row (2,000
    rows with 300-character replies), where a table built through JSON lines took 14 µs
    (``pa.array`` would import pandas). Text that is
    not valid Unicode (a lone surrogate) is stored with "?" for the bad characters; a NaN is
    stored as null."""
    return pa.Table.from_arrays(
        [string_array(values, replace_invalid=True) if field.type == pa.string()
         else _number_array(values, field.type)
         for values, field in zip(_columns(outcomes), OUTCOME_SCHEMA, strict=True)],
        schema=OUTCOME_SCHEMA,
    )


def _column_lister() -> Callable[[Sequence[Outcome]], tuple[list[Any], ...]]:
    """A function that lists outcomes' values a column at a time, in ``OUTCOME_COLUMNS``'
    order: one list comprehension a column, its source made from the names (as ``dataclasses``
    makes its methods). The interpreter specialises an attribute read written out so, where
    ``attrgetter`` looks each name up: for 2,000 outcomes, 3,100 instructions a row, against
    8,800 for the rows' tuples of every field, transposed with ``zip``."""
    lists = "".join(f"[o.{name} for o in rows], " for name in OUTCOME_COLUMNS)
    namespace: dict[str, Any] = {}
    exec(f"def columns(rows):\n    return ({lists})\n", namespace)
    lister: Callable[[Sequence[Outcome]], tuple[list[Any], ...]] = namespace["columns"]
    return lister


_columns = _column_lister()


def _number_array(values: Sequence[float | None], type_: pa.DataType) -> pa.Array:
    """An int64 or float64 column of ``values``; None and NaN are null."""
    n = len(values)
    dtype = np.int64 if type_ == pa.int64() else np.float64
    nones = values.count(None)
    if nones == n:
        return pa.nulls(n, type_)
    if not nones:
        numbers = np.fromiter(values, dtype, n)
        nan = None if dtype is np.int64 else np.isnan(numbers)
        valid = ~nan if nan is not None and nan.any() else None
    else:
        valid = np.fromiter((v is not None and v == v for v in values), np.bool_, n)
        numbers = np.fromiter((v if ok else 0 for v, ok in zip(values, valid.tolist(),
                                                                strict=True)), dtype, n)
    if dtype is np.int64:
        return int64_array(numbers, valid)
    return float64_array(numbers, valid)


def write_segment(directory: Path, name: str, table: pa.Table) -> Path:
    """Write ``table`` as segment ``name`` atomically (temp file, fsync, rename, dir fsync).

    Uncompressed: a run's segments live only until its end compacts them (with zstd), and
    zstd here cost 4.3–5.1 µs a row of CPU to write and read back, against 1.6–1.7 µs
    uncompressed (2,000 outcomes with 300-character replies), for files 4.5 times smaller.

    In pages of ``SEGMENT_PAGE_BYTES``: Parquet's default page (1 MiB, checked every 1,024
    values) has a text column's page buffer grow past the 256 KiB from which the C allocator
    maps each block on its own (``cli._tune_memory``), and every block so mapped costs a page
    fault for each 4 KiB it touches, then goes back to the kernel when freed. Smaller pages come
    from the allocator's heap and are reused: 814 → 251 page faults and 7.2 → 5.5 ms of CPU a
    segment of 2,000 such outcomes, for a file 0.5 % bigger."""
    return _write_atomic(directory, name, lambda f: pq.write_table(
        table, f, compression="none", use_dictionary=list(REPEATED_COLUMNS),
        data_page_size=SEGMENT_PAGE_BYTES, write_batch_size=SEGMENT_PAGE_VALUES))


def _write_atomic(directory: Path, name: str, fill: Callable[[BinaryIO], None]) -> Path:
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as e:
        _remove(tmp)
        if e.errno == errno.ENOENT and not directory.is_dir():  # deleted: nothing is saved
            raise OutputError(
                f"cannot write journal segment {final}: {directory} was removed while the job "
                "ran, and with it the rows finished before — rerun to send them again"
            ) from None
        # A disk full wants room; a file-size limit (ulimit -f: EFBIG, as Python ignores
        # SIGXFSZ) wants raising, not room; one gone read-only (a disk error, a remount) wants
        # fixing.
        hint = ("raise the limit on the size of the files it writes (ulimit -f) and rerun"
                if e.errno == errno.EFBIG else "free space and rerun" if e.errno in _NO_ROOM
                else "rerun once it can be written")
        error = OutputError(
            f"cannot write journal segment {final} ({e.strerror or type(e).__name__}); rows "
            f"finished before are saved — {hint}")
        error.errno = e.errno
        raise error from None
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(directory)
    return final


_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def _copy_segments(sources: Sequence[Path], f: BinaryIO) -> None:
    """The records of ``sources``, in their order, into one segment file: zstd-compressed, as
    it may stay as long as the journal does, in row groups of ``ROW_GROUP_ROWS``, read one
    source at a time."""
    with pq.ParquetWriter(f, OUTCOME_SCHEMA, compression="zstd",
                          use_dictionary=list(REPEATED_COLUMNS),
                          data_page_size=SEGMENT_PAGE_BYTES,
                          write_batch_size=SEGMENT_PAGE_VALUES) as writer:
        held = pa.Table.from_batches([], OUTCOME_SCHEMA)
        for source in sources:
            held = pa.concat_tables([held, _read_group(_open(source), source, None, None)])
            while held.num_rows >= ROW_GROUP_ROWS:
                writer.write_table(held.slice(0, ROW_GROUP_ROWS))
                held = held.slice(ROW_GROUP_ROWS)
        if held.num_rows:
            writer.write_table(held)


def _remove(path: Path) -> bool:
    """Delete ``path`` if it is there; False where it cannot be (a file system gone read-only,
    whose error is the one to tell: the next run removes what is left)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


# The disk a run holds for its last journal write (``JournalWriter.reserve``): some 2,000 rows
# of long answers, more than a second's buffer and the requests in flight at a stop.
RESERVE_BYTES = 16 << 20
RESERVE_FREE_TIMES = 16  # held only on a disk with 16 times that free (256 MB)
RESERVE_PREFIX = ".reserve-"  # and the writer's run and id: a killed run's is removed by the next


class JournalWriter:
    """Buffers outcomes and writes them as segments.

    ``add`` is called from the event loop; ``take`` there too, then ``write`` in a worker thread
    (one at a time), so the loop never waits on the disk.
    """

    def __init__(self, directory: Path, run_id: str, writer_id: str = "w0", *,
                 not_before: float = -math.inf) -> None:
        self.directory = directory
        self.prefix = f"seg-{run_id}-{writer_id}-"
        self._seq = 0
        # This writer's segments not yet merged into a bigger one, oldest first: each one's
        # first and last sequence numbers, records and how many merges made it (see ``_merge``).
        self._written: list[tuple[int, int, int, int]] = []
        self._buffer: list[Outcome] = []
        self.rows_written = 0
        self._reserve: Path | None = None
        # A run holding the output directory's lock passes the journal's newest finished_at
        # (``Latest.newest_at``, as its prepare read it): its records finish after it, so that
        # they are the newest (``latest``) whatever the wall clock did since (set back by an NTP
        # step, or last night's run made with it ahead). Writers at once, on machines whose
        # clocks disagree, pass none: the newer time wins.
        self.not_before = not_before

    def reserve(self, nbytes: int = RESERVE_BYTES) -> bool:
        """Hold ``nbytes`` of disk (a file of that size), freed for the last write if the disk
        fills up meanwhile, so that what is buffered then, answers paid for, still fits (see
        ``flush``). Only on a disk with many times that free, so that a run that fits without
        it is not stopped by it. Best effort: False when it is not held (a disk short of room,
        a file size limit, no ``posix_fallocate`` or ``statvfs``: not on Windows or macOS)."""
        path = self.directory / f"{RESERVE_PREFIX}{self.prefix.removeprefix('seg-').rstrip('-')}"
        try:
            disk = os.statvfs(self.directory)
            if disk.f_bavail * disk.f_frsize < RESERVE_FREE_TIMES * nbytes:
                return False
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, nbytes)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            path.unlink(missing_ok=True)
            return False
        self._reserve = path
        return True

    def release(self) -> bool:
        """Free the disk ``reserve`` holds; False if it holds none."""
        if self._reserve is None:
            return False
        path, self._reserve = self._reserve, None
        return _remove(path)

    def add(self, outcome: Outcome) -> None:
        at = outcome.finished_at
        if at is not None and at <= self.not_before:  # the clock was set back: still newest
            outcome.finished_at = self.not_before + 0.001
        self._buffer.append(outcome)

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self) -> list[Outcome]:
        """The buffered outcomes, leaving the buffer empty (hand them to ``write``)."""
        rows, self._buffer = self._buffer, []
        return rows

    def write(self, rows: Sequence[Outcome]) -> None:
        """Write ``rows`` as the next segment, then merge this writer's small segments (see
        ``_merge``). Safe in a worker thread while ``add`` goes on."""
        if self._write(rows):
            self._merge()

    def _write(self, rows: Sequence[Outcome]) -> bool:
        if not rows:
            return False
        seq = self._seq
        self._seq += 1
        write_segment(self.directory, self._name(seq, seq), outcomes_table(rows))
        self.rows_written += len(rows)
        self._written.append((seq, seq, len(rows), 0))
        return True

    def _name(self, first: int, last: int) -> str:
        """A segment's name: its sequence number, or, merged, its first and last ones (which
        sorts where its first did: before the next segment, after the one before)."""
        span = f"{first:06d}" if first == last else f"{first:06d}-{last:06d}"
        return f"{self.prefix}{span}.parquet"

    def _merge(self) -> None:
        """Make this writer's last ``MERGE_FAN`` segments one, while they were made by as many
        merges and hold ``MERGE_ROWS`` records or fewer together. A run writes a segment a
        second: one of days against a rate-limited API wrote hundreds of thousands of them, of a
        few rows each, some 10 KB of footer apiece, which every ``status`` and the next start
        read one by one (38,000 segments of 1.9 million rows: 55 s and 730 MB a ``status``,
        33 s before a resumed run's first request). Merged so, a run's segments number a few
        dozen, plus one a ``MERGE_ROWS`` records; each record is written again once every
        ``MERGE_FAN`` times more segments it took. The merged segment is written whole before
        those it holds are removed, as ``compact`` does: a crash between leaves the same
        records twice, which reading merges. One that cannot be written (a full disk) leaves
        the segments as they are."""
        written = self._written
        while len(written) >= MERGE_FAN:
            tail = written[-MERGE_FAN:]
            level = tail[-1][3]
            rows = sum(t[2] for t in tail)
            if rows > MERGE_ROWS or any(t[3] != level for t in tail):
                return
            first, last = tail[0][0], tail[-1][1]
            sources = [self.directory / self._name(t[0], t[1]) for t in tail]
            try:
                _write_atomic(self.directory, self._name(first, last),
                              functools.partial(_copy_segments, sources))
            except (OutputError, JournalError):
                del written[-MERGE_FAN:]  # kept as they are, not tried again
                return
            for source in sources:
                _remove(source)
            _fsync_dir(self.directory)
            written[-MERGE_FAN:] = [(first, last, rows, level + 1)]

    def put_back(self, rows: list[Outcome]) -> None:
        """Rows ``write`` could not write: first in the buffer again, for the next write."""
        self._buffer[:0] = rows

    def flush(self) -> None:
        """Write what is buffered, the last write of a run: the disk ``reserve`` held is freed
        after it, or for it when the disk is full. A segment that cannot be written is tried in
        halves, so that as many rows as fit are saved; then the error is raised, the rows not
        written left in the buffer (``len``: answers the journal lacks)."""
        left, error = self._write_fitting(self.take())
        if left and self.release():  # the disk filled up: the reserve makes room for them
            left, error = self._write_fitting(left)
        self.release()
        if error is not None:
            self.put_back(left)
            raise error

    def _write_fitting(self, rows: list[Outcome]) -> tuple[list[Outcome], OutputError | None]:
        """Write ``rows``, in halves if they do not fit at once: the rows not written, and
        why."""
        try:
            self._write(rows)
            return [], None
        except OutputError as e:
            if len(rows) <= 1:
                return rows, e
            half = len(rows) // 2
            left, error = self._write_fitting(rows[:half])
            if error is not None:  # not even half fits: the rest would not either
                return left + rows[half:], error
            return self._write_fitting(rows[half:])


class Journal:
    """Reads and compacts the segments of one output directory."""

    def __init__(self, out_dir: Path) -> None:
        self.directory = out_dir / "journal"

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(SEGMENT_GLOB))

    def remove_temp_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        stale = [  # temporary files, and the disk a killed run held (JournalWriter.reserve)
            p for p in self.directory.iterdir()
            if p.name.startswith(".") and (".tmp-" in p.name or p.name.startswith(RESERVE_PREFIX))
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def check(self) -> None:
        """Refuse any segment whose footer cannot be read or whose columns are not ours."""
        for seg in self.segments():
            try:
                ok = _known_schema(pq.read_schema(seg))
            except FileNotFoundError as e:
                if not os.path.lexists(seg):  # compacted meanwhile (see ``_SegmentGone``)
                    continue
                reason = type(e).__name__  # there, and not to be read: a dangling link
            except Exception as e:
                reason = type(e).__name__
            else:
                if ok:
                    continue
                reason = "its columns are not those of this batchrunner's journal"
            raise JournalError(
                f"journal segment {seg} cannot be read ({reason}); move it aside to resend its "
                "rows, or restore it"
            )

    def read(self, columns: Iterable[str] | None = None) -> pa.Table:
        """The latest outcome of every row (one record a key), as an Arrow table."""
        cols = _read_columns(columns)
        tables = _listed_again(lambda: [_read_group(_open(seg), seg, None, cols)
                                        for seg in self.segments()])
        if not tables:
            return pa.Table.from_batches([], pa.schema([OUTCOME_SCHEMA.field(c) for c in cols]))
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return latest(table)

    def holds(self, column: str) -> bool:
        """Whether a record of the journal has a value in ``column`` (a column of
        ``ADDED_COLUMNS``): read from the segments' statistics, the column itself only where a
        row group has none."""
        def read() -> bool:
            for seg in self.segments():
                pf = _open(seg)
                if column not in pf.schema_arrow.names:
                    continue  # written before the column was
                at = pf.schema_arrow.get_field_index(column)
                meta = pf.metadata
                for rg in range(meta.num_row_groups):
                    group = meta.row_group(rg)
                    stats = group.column(at).statistics
                    if stats is not None and stats.has_null_count:
                        if stats.null_count < group.num_rows:
                            return True
                    elif _read_group(pf, seg, rg, [column])[column].null_count < group.num_rows:
                        return True
            return False
        return _listed_again(read)

    def answered_models(self) -> frozenset[str]:
        """The models of the journal's ``ok`` records (the models that answered, as their
        replies named them), reading those two columns only."""
        def read() -> set[str]:
            models: set[str] = set()
            for seg in self.segments():
                t = _read_group(_open(seg), seg, None, ["status", "model"])
                answered = pc.filter(t["model"], pc.fill_null(is_value(t["status"], "ok"),
                                                             scalar(False, pa.bool_())))
                models.update(m for m in pc.value_counts(answered).field("values").to_pylist()
                              if m)
            return models
        return frozenset(_listed_again(read))

    def price_unpriced(self, price: Callable[[dict[str, Any]], float | None],
                       run_id: str) -> int:
        """Give a cost to the rows answered without one that ``price`` now prices (a price set
        in the job since: a search price, or the model's): each latest outcome with no
        ``cost_usd``, its usage recorded and no other try of its row billed at a cost not
        known (``unknown_tries`` 0: an error status before the answer, a 429 or a 503, is no
        billed try; in a record written before that column, the row's one try, ``attempts``
        1), for which ``price``
        of its ``PRICED_FROM`` values is not None, is written again with that cost, as it was
        otherwise (its ``finished_at`` too: the new segment sorts after the old ones, so it
        wins). The results, reports, ``status`` and the budget all read the costs here, so
        they agree. Returns how many rows were priced so."""
        priced: dict[str, float] = {}
        zero, two = scalar(0, pa.int64()), scalar(2, pa.int64())
        for part in self.iter_latest(PRICED_FROM):
            alone = pc.fill_null(pc.equal(part["unknown_tries"], zero),
                                 pc.less(part["attempts"], two))
            wanted = pc.and_(pc.and_(pc.is_null(part["cost_usd"]), alone),
                             pc.and_(pc.is_valid(part["prompt_tokens"]),
                                     pc.is_valid(part["completion_tokens"])))
            wanted = pc.and_(wanted, pc.invert(is_value(part["status"], RETRYING)))
            for record in pc.filter(part, pc.fill_null(wanted, scalar(False, pa.bool_()))
                                    ).to_pylist():
                if (cost := price(record)) is not None:
                    priced[record["key"]] = cost
        if not priced:
            return 0
        keys = string_array(list(priced))
        records = pa.concat_tables(
            [pc.filter(part, pc.is_in(part["key"], value_set=keys))
             for part in self.iter_latest()])
        costs = float64_array(np.array([priced[k] for k in records["key"].to_pylist()]))
        i = records.schema.get_field_index("cost_usd")
        name = f"seg-{run_id}-priced-000000.parquet"
        if (segs := self.segments()) and name <= segs[-1].name:
            # A run id is its second and a random tag: one of the same second (or of a clock
            # set back since) may sort after this one, and its record would win the tie.
            name = f"{segs[-1].stem}~priced.parquet"
        write_segment(self.directory, name, records.set_column(i, OUTCOME_SCHEMA.field(i), costs))
        return len(priced)

    def unreported_costs(self) -> dict[str, float]:
        """Key → ``unreported_usd`` of each row that has one (the most of its records): what
        its tries billed, maybe, with no usage reported may have cost."""
        found: dict[str, float] = {}
        for part in self.iter_latest(["unreported_usd"]):
            some = pc.filter(part, pc.fill_null(pc.greater(part["unreported_usd"],
                                                           scalar(0.0, pa.float64())),
                                                scalar(False, pa.bool_())))
            found.update(zip(some["key"].to_pylist(), some["unreported_usd"].to_pylist(),
                             strict=True))
        return found

    def iter_latest(self, columns: Iterable[str] | None = None) -> Iterator[pa.Table]:
        """What ``read`` gives, a table at a time: a row group at a time when the journal is one
        compacted segment (one record a row, as a finished run leaves it), so that its reader
        does not hold it whole; else all of it at once."""
        segs = self.segments()
        pf = None
        if _compacted(segs):
            with suppress(_SegmentGone):  # compacted again meanwhile: read it as it is now
                pf = _open(segs[0])
        if pf is None:
            yield self.read(columns)
            return
        cols = _read_columns(columns)
        for rg in range(pf.num_row_groups):
            yield _read_group(pf, segs[0], rg, cols)

    def fold_latest(self, columns: Iterable[str], start: Callable[[], _F]) -> _F:
        """What ``read`` gives, added to ``start()`` (its ``add``) a table of some
        ``_INDEX_ROWS`` records at a time, read a segment at a time: the key, status, time
        (and cost) of every record first, to tell the latest ones, then the other columns of
        those. ``status`` reads so beside a run in progress, whose journal is many segments:
        its memory is that of the records' keys, not of every column of every record. A
        segment gone meanwhile (the run compacted the journal) has it read again, from
        ``start()``."""
        cols = _read_columns(columns)

        def fold() -> _F:
            total = start()
            for part in self._stream_latest(cols):
                total.add(part)
            return total

        return _listed_again(fold)

    def _stream_latest(self, cols: list[str]) -> Iterator[pa.Table]:
        """``fold_latest``'s tables (``cols``, which name key, status and finished_at)."""
        segs = self.segments()
        if _compacted(segs):
            pf = _open(segs[0])
            for rg in range(pf.num_row_groups):
                yield _read_group(pf, segs[0], rg, cols)
            return
        costs = ("cost_usd", "earlier_cost_usd")  # a row's cost is carried when both are read
        carried = (*costs, *(("unreported_usd",) if "unreported_usd" in cols else ()))
        first = ["key", "status", "finished_at", *(carried if set(costs) <= set(cols) else ())]
        rest = [c for c in cols if c not in first]
        index = [_read_group(_open(seg), seg, None, first) for seg in segs]
        keep, most, unreported = (_winners(pa.concat_tables(index)) if index
                                  else (None, None, None))
        at = kept = rows = 0
        pending: list[pa.Table] = []
        for i, seg in enumerate(segs):
            part, index[i] = index[i], pa.table({})  # each segment's index freed once read
            n = part.num_rows
            if rest:
                more = _read_group(_open(seg), seg, None, rest)
                for c in rest:
                    part = part.append_column(more.schema.field(c), more[c])
            part = part.select(cols)
            if keep is not None and not keep[at:at + n].all():
                part = pc.filter(part, bool_array(keep[at:at + n]))
            at += n
            if most is not None:
                end = kept + part.num_rows
                part = _carry_cost(part, most[kept:end],
                                   None if unreported is None else unreported[kept:end])
                kept = end
            pending.append(part)
            rows += part.num_rows
            if rows >= _INDEX_ROWS:
                yield pa.concat_tables(pending)
                pending, rows = [], 0
        if pending:
            yield pa.concat_tables(pending)

    def compact(self, run_id: str, order: Order | None = None, *,
                fresh: Fresh | None = None) -> Path | None:
        """Merge all segments into one: the latest record of every row, sorted by input
        position (rows the input does not have last, by key). A journal that is already one
        segment compacted in the same order is left alone. A crash at any point leaves either
        the old segments or the new one beside some of them (the same records twice, which
        reading merges). With ``fresh``, a changed row's record made with its values now wins
        over its older ones, even a failure over an ok: the old answer is to other text."""
        segs = self.segments()
        if not segs:
            return None
        tag = "" if order is None else order.tag
        if _compacted(segs) and _order_of(segs[0]) == tag:
            return segs[0]
        if len(segs) >= 1 << (63 - _ROW_BITS - _GROUP_BITS):
            raise JournalError(f"{self.directory} holds too many segments to compact")
        index = _latest(segs, order, cost=True, fresh=fresh, tried_at=True)
        loc, row_cost = index.locations(), index.located_costs()
        row_unreported = index.located_unreported()
        row_tried = index.located_tried()
        del index
        schema = OUTCOME_SCHEMA.with_metadata({ORDER_KEY: tag.encode()})

        def fill(f: BinaryIO) -> None:
            with pq.ParquetWriter(f, schema, compression="zstd",
                                  use_dictionary=list(REPEATED_COLUMNS)) as writer:
                held = pa.Table.from_batches([], schema)
                for start, part in self._gather(segs, loc):
                    end = start + part.num_rows
                    part = _carry_cost(part, row_cost[start:end], None if row_unreported is None
                                       else row_unreported[start:end])
                    if row_tried is not None:
                        part = _carry_tried(part, row_tried[start:end])
                    held = pa.concat_tables([held, part.replace_schema_metadata(schema.metadata)])
                    while held.num_rows >= ROW_GROUP_ROWS:
                        writer.write_table(held.slice(0, ROW_GROUP_ROWS))
                        held = held.slice(ROW_GROUP_ROWS)
                if held.num_rows:
                    writer.write_table(held)

        name = f"seg-{run_id}{_COMPACT}000000.parquet"
        final = _write_atomic(self.directory, name, fill)
        for seg in segs:
            if seg != final:
                seg.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        return final

    def _compacted_file(self) -> tuple[Path, pq.ParquetFile]:
        segs = self.segments()
        if len(segs) != 1:
            raise JournalError(f"{self.directory}: the journal is not compacted")
        return segs[0], _open(segs[0])

    def iter_compacted(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """The row groups of the compacted journal, in order (call ``compact`` first)."""
        seg, pf = self._compacted_file()
        for rg in range(pf.num_row_groups):
            yield _read_group(pf, seg, rg, columns)

    def compacted_rows(self) -> int:
        """How many records the compacted journal holds (call ``compact`` first)."""
        return int(self._compacted_file()[1].metadata.num_rows)

    def latest(self, order: Order | None, *, cost: bool = False,
               hashes: bool = False, tried_since: float | None = None) -> Latest:
        """Which record of every row is the latest, without reading whole records (see
        ``Latest``); with ``cost``, also what each row has cost, with ``hashes``, each
        latest record's ``row_hash``, and with ``tried_since``, which rows have an outcome
        (ok or failed) finished at that time or later."""
        return _listed_again(lambda: _latest(self.segments(), order, cost=cost, hashes=hashes,
                                             tried_since=tried_since))

    def sent_again(self, order: Order, fresh: Fresh, latest: Latest) -> np.ndarray:
        """The positions of ``fresh`` (rows whose values changed since their ``latest``
        record) that have an outcome made with their values now all the same, ``latest`` set
        to it: a run killed before its compaction sent them again and recorded a failure,
        which their older ``ok`` wins over but for ``fresh`` (as compaction will rank them).
        A compacted journal, one record a row, has none."""
        segs = self.segments()
        if not len(fresh[0]) or _compacted(segs):
            return np.empty(0, np.int64)
        now = _listed_again(lambda: _latest(self.segments(), order, fresh=fresh))
        positions = fresh[0]
        moved: np.ndarray = positions[now.loc[positions] != latest.loc[positions]]
        latest.loc[moved], latest.ok[moved] = now.loc[moved], now.ok[moved]
        return moved

    @staticmethod
    def _gather(segs: Sequence[Path], loc: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
        """The records at ``loc``, in that order, ``_GATHER_ROWS`` at a time, each with its
        offset in ``loc``. Each window reads the row groups it needs one at a time and keeps
        only the rows it takes."""
        last: tuple[int, pa.Table] | None = None
        pf_cache: tuple[int, pq.ParquetFile] | None = None

        def file(si: int) -> pq.ParquetFile:
            nonlocal pf_cache
            if pf_cache is None or pf_cache[0] != si:
                pf_cache = (si, _open(segs[si]))
            return pf_cache[1]

        def group(g: int) -> pa.Table:
            nonlocal last
            if last is None or last[0] != g:
                si = g >> _GROUP_BITS
                last = (g, _read_group(file(si), segs[si], g & _GROUP_MASK, None))
            return last[1]

        for start in range(0, len(loc), _GATHER_ROWS):
            window = loc[start:start + _GATHER_ROWS]
            groups = window >> _ROW_BITS
            uniq, which = np.unique(groups, return_inverse=True)
            sizes = np.array([file(g >> _GROUP_BITS).metadata.row_group(g & _GROUP_MASK).num_rows
                              for g in uniq.tolist()], np.int64)
            if sizes.sum() <= 2 * len(window):
                # The groups it takes from (most of their rows, as a rule: a run's segments),
                # joined, then one copy of its records in order: half the copying of the
                # other way, which copies each record twice.
                offsets = np.cumsum(sizes) - sizes
                rows = offsets[which] + (window & _ROW_MASK)
                joined = pa.concat_tables([group(g) for g in uniq.tolist()])
                yield start, pc.take(joined, int64_array(rows))
                continue
            # Few rows of each group (rows sent again by later runs, say): a group in memory
            # at a time, its rows taken, then put in order.
            perm = np.argsort(which, kind="stable")
            bounds = np.searchsorted(which[perm], np.arange(len(uniq) + 1)).tolist()
            pieces = []
            for j, g in enumerate(uniq.tolist()):
                rows = window[perm[bounds[j]:bounds[j + 1]]] & _ROW_MASK
                pieces.append(pc.take(group(g), int64_array(rows)))
            gathered = pa.concat_tables(pieces)
            inverse = np.empty_like(perm)
            inverse[perm] = np.arange(len(perm))
            yield start, pc.take(gathered, int64_array(inverse))


@dataclass
class Latest:
    """The latest record of every row, by input position and for keys the input lacks.

    ``loc[p]`` is the location of position ``p``'s latest record (-1: none), ``ok[p]`` 1 if it
    is ok, 0 if failed, -1 if the row has no outcome: no record, or only ``retrying`` ones
    (then ``loc[p]`` is the latest of those, and the row is to do). When asked for,
    ``cost[p]`` is what the row has cost so far (NaN: none): the most ``cost_usd`` plus
    ``earlier_cost_usd`` of any of its records, the newest's, as each record carries the ones
    before it (more than the latest record's own when a rerun's billed failure came after an
    ``ok``, or when the row has only ``retrying`` records: its billed attempts). ``others``
    holds the latest record of each key the input does not have, by key (columns key, ok, at,
    loc, and cost, the key's row's as above, when asked for). When asked for, ``row_hash[p]``
    is the latest record's ``row_hash`` (-1: none, or not recorded). With ``cost``,
    ``unreported[p]`` is the same of ``unreported_usd`` (the estimated cost of the row's tries
    billed, maybe, with no usage reported; NaN: none; None when no record has one), and
    ``others`` has it as ``unreported``. When asked for (``tried_since``), ``tried[p]`` is
    whether any outcome of the row, the latest or not, finished at that time or later."""

    loc: np.ndarray
    ok: np.ndarray
    cost: np.ndarray | None
    others: pa.Table
    row_hash: np.ndarray | None = None
    unreported: np.ndarray | None = None
    tried: np.ndarray | None = None
    last_tried: np.ndarray | None = None  # when asked for (compaction): each row's, NaN: none
    newest_at: float = -math.inf  # the newest finished_at of any record read, a winner or not

    def locations(self) -> np.ndarray:
        """Every latest record's location: by position, then the other keys by key."""
        at_positions: np.ndarray = self.loc[self.loc >= 0]
        if not self.others.num_rows:
            return at_positions
        return np.concatenate([at_positions, to_numpy(self.others["loc"])])

    def located_costs(self) -> np.ndarray:
        """What the row of each of ``locations()`` has cost (NaN: not known); needs
        ``cost``."""
        assert self.cost is not None
        at_positions: np.ndarray = self.cost[self.loc >= 0]
        if not self.others.num_rows:
            return at_positions
        return np.concatenate([at_positions,
                               to_numpy(self.others["cost"], fill=float("nan"))])

    def located_tried(self) -> np.ndarray | None:
        """When the row of each of ``locations()`` was last tried (NaN: not known; the keys
        the input does not have are not told); None unless asked for (``tried_at``)."""
        if self.last_tried is None:
            return None
        at_positions: np.ndarray = self.last_tried[self.loc >= 0]
        if not self.others.num_rows:
            return at_positions
        return np.concatenate([at_positions, np.full(self.others.num_rows, np.nan)])

    def located_unreported(self) -> np.ndarray | None:
        """``unreported`` of the row of each of ``locations()`` (NaN: none); None when no
        row has one. Needs ``cost``."""
        others = self.others["unreported"] if self.others.num_rows else None
        if self.unreported is None and (others is None or others.null_count == len(others)):
            return None
        placed = self.loc >= 0
        at_positions: np.ndarray = (self.unreported[placed] if self.unreported is not None
                                    else np.full(int(np.count_nonzero(placed)), np.nan))
        if others is None:
            return at_positions
        return np.concatenate([at_positions, to_numpy(others, fill=float("nan"))])

    def prior_unreported(self) -> float:
        """The estimated cost of the input's rows' tries billed, maybe, with no usage
        reported, as ``prior_cost`` counts the rest."""
        return 0.0 if self.unreported is None else float(np.nansum(self.unreported))

    def prior_cost(self) -> float:
        """What the input's rows have cost so far (their latest records' known costs, earlier
        attempts included): the keys the input no longer has are left out, as the reports
        leave them out."""
        return 0.0 if self.cost is None else float(np.nansum(self.cost))


def _latest(segs: Sequence[Path], order: Order | None, *, cost: bool = False,
            hashes: bool = False, fresh: Fresh | None = None,
            tried_since: float | None = None, tried_at: bool = False) -> Latest:
    """The winners are kept per input position (17 bytes a row, 8 more with the cost and 8 with
    the estimates of tries with no usage where a record has one, 8 with the hashes, 1 with
    ``fresh``, and 8 with the times rows were tried, ``tried_since`` or ``tried_at``) and
    each batch of records is scattered over them, so nothing is sorted but the odd key the
    input does not have."""
    rows = 0 if order is None else order.rows
    best_loc = np.full(rows, -1, np.int64)
    best_ok = np.full(rows, -1, np.int8)
    best_at = np.zeros(rows, np.float64)
    row_cost = np.full(rows, np.nan) if cost else None  # the most of any record of the row
    # The same, of unreported_usd: made only once a record has one (few jobs' do), not 8 MB
    # a million rows for nothing at every compaction.
    row_unreported: np.ndarray | None = None
    best_hash = np.full(rows, -1, np.int64) if hashes else None
    # With ``fresh``: 1 where the winner so far is a changed row's record made with its hash now.
    best_new = np.zeros(rows, np.int8) if fresh is not None else None
    # When each row was last tried (its outcomes' newest finished_at, or tried_at): for
    # ``tried_since``, and for compaction to carry into the record it keeps (``tried_at``).
    row_tried = np.full(rows, np.nan) if tried_since is not None or tried_at else None
    unknown: list[pa.Table] = []  # key, ok, at, loc, cost
    zero, none, end = (scalar(v, pa.int64()) for v in (0, -1, rows))
    no = scalar(False, pa.bool_())
    newest_at = -math.inf
    for batch in _index_batches(segs, cost=cost, hashes=hashes or fresh is not None,
                                tried=row_tried is not None):
        if len(batch):
            newest_at = max(newest_at, float(np.max(to_numpy(batch["at"]))))
        if order is None:
            unknown.append(batch)
            continue
        p = pc.cast(order.positions(batch["key"].combine_chunks()), pa.int64())
        inside = pc.fill_null(pc.and_(pc.greater_equal(p, zero), pc.less(p, end)), no)
        if not pc.all(inside).as_py():
            unknown.append(pc.filter(batch, pc.invert(inside)))
        p = to_numpy(pc.if_else(inside, p, none))
        if row_cost is not None:
            spent = to_numpy(batch["cost"], fill=float("nan"))
            np.fmax.at(row_cost, p[p >= 0], spent[p >= 0])
            if batch["unreported"].null_count < len(batch):
                if row_unreported is None:
                    row_unreported = np.full(rows, np.nan)
                guessed = to_numpy(batch["unreported"], fill=float("nan"))
                np.fmax.at(row_unreported, p[p >= 0], guessed[p >= 0])
        ok, at, loc = (to_numpy(batch[c]) for c in ("ok", "at", "loc"))
        if row_tried is not None:
            outcome = (p >= 0) & (ok >= 0)
            np.fmax.at(row_tried, p[outcome], to_numpy(batch["tried"])[outcome])
        digest = to_numpy(batch["hash"], fill=-1) if "hash" in batch.column_names else None
        new = None if fresh is None or digest is None else _made_fresh(p, digest, fresh)
        if new is not None:
            new[ok < 0] = 0  # a ``retrying`` record is no outcome: never above one
        # Within the batch: the last of each position by ([fresh,] ok, time, location) ...
        rank = np.lexsort((loc, at, ok, p) if new is None else (loc, at, ok, new, p))
        p = p[rank]
        last = np.ones(len(p), dtype=bool)
        last[:-1] = p[:-1] != p[1:]
        last &= p >= 0
        take = rank[last]
        p, ok, at, loc = p[last], ok[take], at[take], loc[take]
        # ... replaces the winner so far if it is ok and that is not, or as ok and no older
        # (a later location breaks a tie: batches come in location order); with ``fresh``, a
        # record made with a changed row's values now first.
        better = (ok > best_ok[p]) | ((ok == best_ok[p]) & (at >= best_at[p]))
        if new is not None and best_new is not None:
            new = new[take]
            better = (new > best_new[p]) | ((new == best_new[p]) & better)
            best_new[p[better]] = new[better]
        p = p[better]
        best_loc[p], best_ok[p], best_at[p] = loc[better], ok[better], at[better]
        if best_hash is not None and digest is not None:
            best_hash[p] = digest[take][better]
    del best_at
    records = pa.concat_tables(unknown).combine_chunks() if unknown else _index_schema(cost)
    others = _last_per_key(records, ["ok", "at", "loc"])
    if cost and others.num_rows:  # what each key's row has cost, as for positions
        for c in ("cost", "unreported"):
            most = _most_per_key(records["key"], to_numpy(records[c], fill=float("nan")),
                                 others["key"])
            others = others.set_column(others.schema.get_field_index(c), c,
                                       float64_array(most, ~np.isnan(most)))
    tried = (None if row_tried is None or tried_since is None
             else np.nan_to_num(row_tried, nan=-np.inf) >= tried_since)
    return Latest(loc=best_loc, ok=best_ok, cost=row_cost, others=others, row_hash=best_hash,
                  unreported=row_unreported, newest_at=newest_at, tried=tried,
                  last_tried=row_tried if tried_at else None)


def _made_fresh(p: np.ndarray, hashes: np.ndarray, fresh: Fresh) -> np.ndarray:
    """1 for each record (at input position ``p``, with ``row_hash`` ``hashes``) of a row in
    ``fresh`` made with its hash there; else 0."""
    positions, now = fresh
    if not len(positions):
        return np.zeros(len(p), np.int8)
    i = np.minimum(np.searchsorted(positions, p), len(positions) - 1)
    made: np.ndarray = ((positions[i] == p) & (now[i] == hashes)).astype(np.int8)
    return made


def _most_per_key(keys: pa.ChunkedArray, values: np.ndarray, of: pa.ChunkedArray) -> np.ndarray:
    """For each key of ``of``, the largest of ``values`` at that key in ``keys`` (NaN
    ignored; NaN if none). Not ``group_by``: it would import pandas."""
    encoded = pc.dictionary_encode(keys.combine_chunks())
    most = np.full(len(encoded.dictionary), np.nan)
    np.fmax.at(most, to_numpy(pc.cast(encoded.indices, pa.int64())), values)
    at = to_numpy(pc.cast(pc.index_in(of, value_set=encoded.dictionary), pa.int64()))
    found: np.ndarray = most[at]
    return found


def _carry_cost(part: pa.Table, row_cost: np.ndarray,
                row_unreported: np.ndarray | None = None) -> pa.Table:
    """``part`` with the ``earlier_cost_usd`` of records that carry less than ``row_cost``,
    their rows' costs, raised to match (see ``Latest``); and its ``unreported_usd``, where it
    has the column, raised to ``row_unreported`` so."""
    own = to_numpy(_spent(part["cost_usd"], part["earlier_cost_usd"]), fill=0.0)
    behind = row_cost > own
    if behind.any():
        part = _raise_earlier(part, behind, row_cost[behind])
    if row_unreported is not None and "unreported_usd" in part.column_names:
        i = part.schema.get_field_index("unreported_usd")
        guessed = to_numpy(part["unreported_usd"], fill=float("nan"))
        most = np.fmax(guessed, row_unreported)
        if not np.array_equal(most, guessed, equal_nan=True):
            part = part.set_column(i, "unreported_usd", float64_array(most, ~np.isnan(most)))
    return part


def _carry_tried(part: pa.Table, row_tried: np.ndarray) -> pa.Table:
    """``part`` with ``tried_at`` set where its row was tried after the record's own
    ``finished_at`` (``row_tried``): a rerun that failed, its ok answer kept."""
    own = to_numpy(part["finished_at"], fill=0.0)
    later = row_tried > own  # NaN: never
    if not later.any():
        return part
    value = to_numpy(part["tried_at"], fill=float("nan")).copy()
    value[later] = row_tried[later]
    i = part.schema.get_field_index("tried_at")
    return part.set_column(i, "tried_at", float64_array(value, ~np.isnan(value)))


def _raise_earlier(part: pa.Table, rows: np.ndarray, totals: np.ndarray) -> pa.Table:
    """``part`` with ``earlier_cost_usd`` set at ``rows`` (a mask) to ``totals`` less the
    record's own ``cost_usd``."""
    earlier = to_numpy(part["earlier_cost_usd"], fill=float("nan")).copy()
    own = to_numpy(part["cost_usd"], fill=0.0)
    earlier[rows] = totals - own[rows]
    i = part.schema.get_field_index("earlier_cost_usd")
    return part.set_column(i, "earlier_cost_usd", float64_array(earlier, ~np.isnan(earlier)))


def _index_schema(cost: bool) -> pa.Table:
    fields = [("key", pa.string()), ("ok", pa.int8()), ("at", pa.float64()),
              ("loc", pa.int64())] + (
        [("cost", pa.float64()), ("unreported", pa.float64())] if cost else [])
    return pa.Table.from_batches([], pa.schema(fields))


def _index_batches(segs: Sequence[Path], *, cost: bool = False,
                   hashes: bool = False, tried: bool = False) -> Iterator[pa.Table]:
    """key, ok (int8), at (finished_at) and loc of every record, ``_INDEX_ROWS`` or so at a
    time; with ``cost``, what its row has cost, with ``hashes``, its ``row_hash``, and with
    ``tried``, when its row was last tried (``tried_at``, else ``finished_at``)."""
    pending: list[pa.Table] = []
    rows = 0
    for si, seg in enumerate(segs):
        pf = _open(seg)
        for rg in range(pf.num_row_groups):
            t = _read_group(pf, seg, rg, ["key", "status", "finished_at",
                                          *(["cost_usd", "earlier_cost_usd", "unreported_usd"]
                                            if cost else []),
                                          *(["row_hash"] if hashes else []),
                                          *(["tried_at"] if tried else [])])
            if t.num_rows > _ROW_MASK or rg >= 1 << _GROUP_BITS:
                raise JournalError(f"journal segment {seg} is too large to compact")
            base = ((si << _GROUP_BITS) | rg) << _ROW_BITS
            pending.append(pa.table({
                "key": t["key"],
                "ok": _rank(t["status"]),
                "at": pc.fill_null(t["finished_at"], scalar(0.0, pa.float64())),
                "loc": int64_array(np.arange(base, base + t.num_rows, dtype=np.int64)),
                **({"cost": _spent(t["cost_usd"], t["earlier_cost_usd"]),
                    "unreported": t["unreported_usd"]} if cost else {}),
                **({"hash": t["row_hash"]} if hashes else {}),
                **({"tried": pc.coalesce(t["tried_at"], t["finished_at"],
                                         scalar(0.0, pa.float64()))} if tried else {}),
            }))
            rows += t.num_rows
            if rows >= _INDEX_ROWS:
                yield pa.concat_tables(pending).combine_chunks()
                pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending).combine_chunks()


def _rank(status: pa.ChunkedArray) -> pa.ChunkedArray:
    """How each record ranks among its row's by status (int8): ``ok`` 1, ``failed`` 0,
    ``retrying`` -1 (no outcome: below any, above no record)."""
    ok = pc.cast(is_value(status, "ok"), pa.int8())
    retrying = is_value(status, RETRYING)
    if not pc.any(retrying).as_py():
        return ok
    return pc.subtract(ok, pc.cast(retrying, pa.int8()))


def _spent(cost: pa.ChunkedArray, earlier: pa.ChunkedArray) -> pa.ChunkedArray:
    """What a record's row has cost: ``cost_usd`` plus ``earlier_cost_usd`` (null if both are)."""
    if earlier.null_count == len(earlier):
        return cost
    zero = scalar(0.0, pa.float64())
    both = pc.add(pc.fill_null(cost, zero), pc.fill_null(earlier, zero))
    return pc.if_else(pc.and_(pc.is_null(cost), pc.is_null(earlier)),
                      pa.nulls(len(cost), pa.float64()), both)


class _SegmentGone(JournalError):
    """A segment listed was gone when it was opened: a run that holds the output directory
    compacted the journal meanwhile (``status`` and ``estimate`` read it while a run writes).
    Its records are in the compacted segment, written before the segments it merged were
    removed: the journal is listed and read again."""


_LISTINGS = 8  # times a journal read by another process than its writer is listed
_RELIST_S = 0.05  # the pause before listing it again, doubled each time (6.35 s in all)


def _listed_again(read: Callable[[], _T]) -> _T:
    """``read()`` (which lists the segments), again while a segment it listed is gone: after a
    pause, so that a compaction removing the segments it merged (38,000 of them: seconds) is
    done by then. Listed again at once, the read went on finding the next one removed, and
    ``status`` failed as a run ended ("removed while it was read ... try again")."""
    for i in range(_LISTINGS - 1):
        with suppress(_SegmentGone):
            return read()
        time.sleep(_RELIST_S * 2 ** i)
    return read()


_COMPACT = "-compact-"  # in the name of the segment ``Journal.compact`` writes


def _compacted(segs: Sequence[Path]) -> bool:
    """Whether the journal is one compacted segment: one record a row."""
    return len(segs) == 1 and _COMPACT in segs[0].name


def _read_columns(columns: Iterable[str] | None) -> list[str]:
    """The columns a read gives: ``columns`` and those a record needs to be told latest."""
    if columns is None:
        return list(OUTCOME_COLUMNS)
    return list(dict.fromkeys(["key", "status", "finished_at", *columns]))


def _open(seg: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(seg)
    except FileNotFoundError as e:
        if os.path.lexists(seg):  # there, and not to be read (a dangling link): damaged
            raise _unreadable(seg, e) from None
        raise _SegmentGone(
            f"journal segment {seg} was removed while it was read (the run using the output "
            "directory compacting the journal, again and again) — try again") from None
    except Exception as e:
        raise _unreadable(seg, e) from None


def _known_schema(schema: pa.Schema) -> bool:
    """The schema of a segment this version wrote, or an earlier one: ``OUTCOME_SCHEMA``
    without some of ``ADDED_COLUMNS`` (each was added in its own version)."""
    if schema.equals(OUTCOME_SCHEMA):
        return True
    names = set(schema.names)
    if not names <= set(OUTCOME_COLUMNS) or not set(OUTCOME_COLUMNS) - names <= ADDED_COLUMNS:
        return False
    return bool(schema.equals(pa.schema([f for f in OUTCOME_SCHEMA if f.name in names])))


def _read_group(pf: pq.ParquetFile, seg: Path, rg: int | None, columns: Sequence[str] | None
                ) -> pa.Table:
    """Row group ``rg`` of a segment (``None``: all of it), refused unless its columns are
    ours; a column added since the segment was written is read as nulls."""
    cols = list(OUTCOME_COLUMNS) if columns is None else list(columns)
    try:
        have = set(pf.schema_arrow.names)
        absent = [c for c in cols if c in ADDED_COLUMNS and c not in have]
        read = [c for c in cols if c not in absent]
        t = (pf.read(columns=read, use_threads=False) if rg is None
             else pf.read_row_group(rg, columns=read, use_threads=False))
        for c in absent:
            field = OUTCOME_SCHEMA.field(c)
            t = t.add_column(cols.index(c), field, pa.nulls(t.num_rows, field.type))
        expected = pa.schema([OUTCOME_SCHEMA.field(c) for c in cols])
        if not t.schema.equals(expected):
            raise TypeError("its columns are not those of this batchrunner's journal")
    except Exception as e:
        raise _unreadable(seg, e) from None
    return t.replace_schema_metadata(None)


def _unreadable(seg: Path, e: BaseException) -> JournalError:
    return JournalError(
        f"journal segment {seg} cannot be read ({type(e).__name__}); move it aside to resend "
        "its rows, or restore it"
    )


def _order_of(seg: Path) -> str | None:
    try:
        meta = pq.read_schema(seg).metadata or {}
    except Exception:
        return None
    value = meta.get(ORDER_KEY)
    return None if value is None else value.decode(errors="replace")


def latest(table: pa.Table) -> pa.Table:
    """One record a key: the newest ``ok`` if any, else the newest ``failed``, else the newest
    ``retrying`` (newest: by ``finished_at``, null read as 0, then by place in ``table``, as
    ``Journal.latest`` ranks them); with the cost columns, its ``earlier_cost_usd`` raised to
    its row's whole cost (see ``Latest``). The records kept stay in ``table``'s order.

    Keys are told apart by hashing, and only the records of keys recorded more than once are
    ranked: a journal of a run in progress is mostly one record a key, and ``status`` reads it
    every few minutes beside the run (a sort of a million keys, and a copy of every column in
    that order, cost it more CPU and memory than the rest of its work)."""
    keep, most, unreported = _winners(table)
    if keep is None:  # one record a key
        return table
    winners = pc.filter(table, bool_array(keep))
    if {"tried_at", "finished_at"} <= set(table.column_names):  # as compaction carries it
        winners = _carry_tried(winners, _row_tried(table, keep))
    return winners if most is None else _carry_cost(winners, most, unreported)


def _row_tried(table: pa.Table, keep: np.ndarray) -> np.ndarray:
    """When the row of each record at ``keep`` was last tried: the newest ``tried_at``, else
    ``finished_at``, of its outcomes in ``table`` (NaN: none)."""
    codes = _key_codes(table["key"])
    at = np.fmax(to_numpy(table["finished_at"], fill=0.0),
                 to_numpy(table["tried_at"], fill=float("nan")))
    outcome = to_numpy(_rank(table["status"]), fill=-2) >= 0
    newest = np.full(int(codes.max()) + 1, np.nan)
    np.fmax.at(newest, codes[outcome], at[outcome])
    tried: np.ndarray = newest[codes[keep]]
    return tried


def _winners(table: pa.Table
             ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Which records of ``table`` ``latest`` keeps (a mask; None: all, one record a key),
    and, when it has the cost columns and a cost to carry, what the row of each record kept
    has cost (see ``latest``), and the most ``unreported_usd`` of its records (where it has
    that column and one)."""
    n = table.num_rows
    if n == 0:
        return None, None, None
    codes = _key_codes(table["key"])
    counts = np.bincount(codes)
    if len(counts) == n:  # one record a key
        return None, None, None
    repeated = np.flatnonzero(counts[codes] > 1)
    rank = to_numpy(_rank(table["status"]), fill=-2)[repeated]
    at = to_numpy(table["finished_at"], fill=0.0)[repeated]
    order = np.lexsort((repeated, at, rank, codes[repeated]))
    ranked = codes[repeated][order]
    last = np.ones(len(ranked), dtype=bool)
    last[:-1] = ranked[:-1] != ranked[1:]
    keep = counts[codes] == 1
    keep[repeated[order][last]] = True
    if not {"cost_usd", "earlier_cost_usd"} <= set(table.column_names):
        return keep, None, None
    guessed = None
    if "unreported_usd" in table.column_names and (
            table["unreported_usd"].null_count < n):
        most = np.full(len(counts), np.nan)
        np.fmax.at(most, codes[repeated],
                   to_numpy(table["unreported_usd"], fill=float("nan"))[repeated])
        guessed = most[codes[keep]]
    spent = _spent(table["cost_usd"], table["earlier_cost_usd"])
    if spent.null_count == len(spent):  # no cost: nothing to carry but the estimates
        return keep, (None if guessed is None else np.full(len(guessed), np.nan)), guessed
    most = np.full(len(counts), np.nan)
    np.fmax.at(most, codes[repeated], to_numpy(spent, fill=float("nan"))[repeated])
    kept: np.ndarray = most[codes[keep]]
    return keep, kept, guessed


def _key_codes(keys: pa.ChunkedArray) -> np.ndarray:
    """Each key's number (0, 1, ... in order of first appearance), by hashing."""
    encoded = pc.dictionary_encode(keys.combine_chunks(), null_encoding="encode")
    codes: np.ndarray = to_numpy(pc.cast(encoded.indices, pa.int64()))
    return codes


def _last_per_key(table: pa.Table, rank: Sequence[str]) -> pa.Table:
    """For each key, the row that sorts last by the ``rank`` columns; the result by key."""
    n = table.num_rows
    if n == 0:
        return table
    ranked = pc.sort_by(table, [("key", "ascending"), *((c, "ascending") for c in rank)])
    if n == 1:
        return ranked
    keys = ranked["key"]
    same_as_next = pc.equal(keys.slice(0, n - 1), keys.slice(1))
    last = pc.invert(pc.fill_null(same_as_next, scalar(False, pa.bool_())))
    mask = pa.concat_arrays([last.combine_chunks() if isinstance(last, pa.ChunkedArray)
                             else last, bool_array(np.ones(1, dtype=np.bool_))])
    return pc.filter(ranked, mask)
