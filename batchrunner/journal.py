"""The journal: durable per-row outcomes in ``OUT_DIR/journal/``.

It is a directory of immutable Parquet segment files named
``seg-<run id>-<writer id>-<sequence>.parquet``. A segment is written to a temporary name,
fsynced, renamed into place and the directory fsynced, so a crash at any instant leaves either
the whole segment or none of it. Writers never share a name, so several processes (later,
several machines on shared storage) can add segments to one journal with no coordination.

Reading merges all segments: the newest record of a row wins, except that a failure never
replaces an ``ok`` (a rerun that failed keeps the answer already paid for). Leftover temporary
files are removed; a segment that cannot be read stops the run with a message naming it, and is
never silently trusted.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrunner.errors import JournalError, OutputError
from batchrunner.records import OUTCOME_COLUMNS, OUTCOME_SCHEMA, Outcome

__all__ = ["Journal", "JournalWriter", "new_run_id"]

SEGMENT_GLOB = "seg-*.parquet"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def outcomes_table(outcomes: Sequence[Outcome]) -> pa.Table:
    cols = {name: [getattr(o, name) for o in outcomes] for name in OUTCOME_COLUMNS}
    return pa.Table.from_pydict(cols, schema=OUTCOME_SCHEMA)


def write_segment(directory: Path, name: str, table: pa.Table) -> Path:
    """Write ``table`` as segment ``name`` atomically (temp file, fsync, rename, dir fsync)."""
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write journal segment {final} ({e.strerror or type(e).__name__}); rows "
            "finished before are saved — free space and rerun"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return final


class JournalWriter:
    """Buffers outcomes and writes them as segments.

    ``add`` is called from the event loop; ``take`` there too, then ``write`` in a worker thread
    (one at a time), so the loop never waits on the disk.
    """

    def __init__(self, directory: Path, run_id: str, writer_id: str = "w0") -> None:
        self.directory = directory
        self.prefix = f"seg-{run_id}-{writer_id}-"
        self._seq = 0
        self._buffer: list[Outcome] = []
        self.rows_written = 0

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self) -> list[Outcome]:
        """The buffered outcomes, leaving the buffer empty (hand them to ``write``)."""
        rows, self._buffer = self._buffer, []
        return rows

    def write(self, rows: Sequence[Outcome]) -> None:
        """Write ``rows`` as the next segment. Safe in a worker thread while ``add`` goes on."""
        if not rows:
            return
        name = f"{self.prefix}{self._seq:06d}.parquet"
        self._seq += 1
        write_segment(self.directory, name, outcomes_table(rows))
        self.rows_written += len(rows)

    def flush(self) -> None:
        self.write(self.take())


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
        stale = [
            p for p in self.directory.iterdir() if p.name.startswith(".") and ".tmp-" in p.name
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def check(self) -> None:
        """Refuse any segment whose footer cannot be read or whose columns are not ours."""
        for seg in self.segments():
            try:
                ok = pq.read_schema(seg).equals(OUTCOME_SCHEMA)
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
        cols = list(OUTCOME_COLUMNS) if columns is None else list(
            dict.fromkeys(["key", "status", "finished_at", *columns])
        )
        tables = []
        for seg in self.segments():
            try:
                t = pq.read_table(seg, columns=cols)
                expected = pa.schema([OUTCOME_SCHEMA.field(c) for c in cols])
                if not t.schema.equals(expected):
                    raise TypeError("its columns are not those of this batchrunner's journal")
            except Exception as e:
                raise JournalError(
                    f"journal segment {seg} cannot be read ({type(e).__name__}); move it aside "
                    "to resend its rows, or restore it"
                ) from None
            tables.append(t)
        if not tables:
            return OUTCOME_SCHEMA.empty_table().select(cols)
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return latest(table)

    def compact(self, run_id: str) -> Path | None:
        """Merge all segments into one; duplicates from a crash mid-compaction are harmless."""
        segs = self.segments()
        if len(segs) <= 1:
            return segs[0] if segs else None
        table = self.read()
        final = write_segment(self.directory, f"seg-{run_id}-compact-000000.parquet", table)
        for seg in segs:
            if seg != final:
                seg.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        return final


def latest(table: pa.Table) -> pa.Table:
    """One record a key: the newest ``ok`` if any, else the newest record."""
    if table.num_rows == 0:
        return table
    ok_rank = pc.cast(pc.equal(table["status"], "ok"), pa.int8())
    idx = pa.array(range(table.num_rows), pa.int64())
    ranked = table.append_column("__ok", ok_rank).append_column("__i", idx)
    ranked = ranked.sort_by([("key", "ascending"), ("__ok", "ascending"),
                             ("finished_at", "ascending"), ("__i", "ascending")])
    keys = ranked["key"]
    n = ranked.num_rows
    if n > 1:
        same_as_next = pc.equal(keys.slice(0, n - 1), keys.slice(1))
        last = pc.invert(pc.fill_null(same_as_next, False))
        mask = pa.concat_arrays([last.combine_chunks() if isinstance(last, pa.ChunkedArray)
                                 else last, pa.array([True])])
        ranked = ranked.filter(mask)
    return ranked.drop_columns(["__ok", "__i"])
