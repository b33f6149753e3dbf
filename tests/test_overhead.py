"""What a run costs the kernel for each request, counted rather than timed (timings on a shared
machine are not a test): the system calls a run makes (``strace -c``, where installed), and the
size of the pages a journal segment is written in (the buffers behind them, when too big, are
mapped from the kernel for each segment and faulted in page by page)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner import cli
from batchrunner.journal import outcomes_table, write_segment
from batchrunner.records import Outcome
from batchrunner.simulator import SimulatorConfig, SimulatorThread

KEY = "sk-test-overhead-0123456789abcdef"

pytestmark = [
    pytest.mark.usefixtures("job_env"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's system calls"),
]


def _syscalls(base_url: str, tmp_path: Path, rows: int) -> Counter[str]:
    """The system calls of ``batchrunner run`` over ``rows`` rows, by name (every thread)."""
    work = tmp_path / f"n{rows}"
    work.mkdir()
    inp = work / "in.csv"
    inp.write_text("id,text\n" + "".join(f"r{i},product {i}\n" for i in range(rows)))
    counts = work / "strace.txt"
    proc = subprocess.run(
        ["strace", "-f", "-c", "-o", str(counts), sys.executable, "-m", "batchrunner", "run",
         "--input", str(inp), "--id-column", "id", "--prompt", "Describe {text}",
         "--model", "gpt-4o-mini", "--base-url", base_url, "--output", str(work / "out"),
         "--concurrency", "16", "--progress", "none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if "ptrace" in proc.stderr and proc.returncode != 0:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls: Counter[str] = Counter()
    for line in counts.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_request_asks_the_kernel_for_the_process_id_once(tmp_path: Path) -> None:
    """Asking for the current task without naming the loop makes asyncio check the process id
    (a ``getpid`` system call) each time; aiohttp's request path does so once a request, and
    the client's watchdog, which keeps a deadline for each request's task, no more."""
    with SimulatorThread(SimulatorConfig()) as sim:
        small = _syscalls(sim.base_url, tmp_path, 40)
        large = _syscalls(sim.base_url, tmp_path, 240)
    per_request = (large["getpid"] - small["getpid"]) / 200
    assert per_request <= 1.1, (small, large)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _skip(data: bytes, at: int, kind: int) -> int:
    """Past one Thrift compact-protocol value of type ``kind`` starting at ``at``."""
    if kind in (1, 2):  # a boolean field carries its value in its type
        return at
    if kind == 3:
        return at + 1
    if kind in (4, 5, 6):
        return _varint(data, at)[1]
    if kind == 7:
        return at + 8
    if kind == 8:
        size, at = _varint(data, at)
        return at + size
    if kind in (9, 10):
        head = data[at]
        at += 1
        size, elem = head >> 4, head & 0x0F
        if size == 15:
            size, at = _varint(data, at)
        for _ in range(size):
            at = _skip(data, at, 2 if elem == 1 else elem)
        return at
    if kind == 12:
        return _struct(data, at)[1]
    raise AssertionError(f"Thrift type {kind} in a page header")


def _struct(data: bytes, at: int) -> tuple[dict[int, int], int]:
    """A Thrift compact struct's integer fields by id, and where it ends."""
    fields: dict[int, int] = {}
    field = 0
    while True:
        head = data[at]
        at += 1
        if head == 0:
            return fields, at
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field += delta
        else:
            raw, at = _varint(data, at)
            field = (raw >> 1) ^ -(raw & 1)
        if kind in (4, 5, 6):
            raw, end = _varint(data, at)
            fields[field] = (raw >> 1) ^ -(raw & 1)
            at = end
        else:
            at = _skip(data, at, kind)


def _page_sizes(path: Path, column: str) -> list[int]:
    """The uncompressed sizes of the pages of ``column``'s chunk in the first row group, read
    from the Parquet page headers (PageHeader: 1 type, 2 uncompressed size, 3 compressed
    size)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns)
                 if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = path.read_bytes()
    at, end, sizes = start, start + chunk.total_compressed_size, []
    while at < end:
        header, at = _struct(data, at)
        sizes.append(header[2])
        at += header[3]
    assert at == end, (at, end)
    return sizes


def test_a_segment_is_written_in_pages_the_allocator_keeps(tmp_path: Path) -> None:
    """Parquet's default page (1 MiB) had a segment's reply text grow buffers past the 256 KiB
    from which the C allocator maps each block on its own: some 800 page faults a segment of
    2,000 replies of 300 characters, 250 with pages of 64 KiB. Each page stays well under."""
    outcomes = [Outcome(key=f"r{i}", status="ok", content=f"reply {i:05d} " + "x" * 288,
                        finish_reason="stop", prompt_tokens=20, completion_tokens=64,
                        latency_ms=10.0, attempts=1, finished_at=1.7e9 + i)
                for i in range(2_000)]
    seg = write_segment(tmp_path, "seg-20260101T000000-aaaaaa-w0-000000.parquet",
                        outcomes_table(outcomes))
    sizes = _page_sizes(seg, "content")
    assert sum(sizes) >= 600_000, sizes  # every reply is there, in pages
    assert max(sizes) <= 160 * 1024, sizes
    assert pq.read_table(seg)["content"].to_pylist() == [o.content for o in outcomes]


def _pool_chosen(env_pool: str | None) -> str:
    """The backend of Arrow's default pool in a process that starts as the CLI does, with
    ``ARROW_DEFAULT_MEMORY_POOL`` set to ``env_pool`` (None: not set)."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_pool
    proc = subprocess.run(
        [sys.executable, "-c", "from batchrunner import cli; cli.before_imports(); "
         "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"],
        capture_output=True, text=True, timeout=120, env=env, check=True)
    assert proc.stderr == "", proc.stderr  # no warning of a pool this pyarrow lacks
    return proc.stdout.strip()


def test_arrow_takes_jemalloc_where_pyarrow_has_it() -> None:
    """Blocks of 256 KiB and up that the C allocator maps and unmaps each time they are taken
    and freed (compaction's columns, Parquet's pages) are faulted in page by page; jemalloc
    keeps freed pages for a while. A pool the environment names is the one taken."""
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        expected = "system"
    else:
        expected = "jemalloc"
    assert _pool_chosen(None) == expected
    assert _pool_chosen("system") == "system"
    assert _pool_chosen("mimalloc") == "mimalloc"


def test_jemalloc_is_read_from_the_build_settings_pyarrow_ships(tmp_path: Path) -> None:
    """Without importing pyarrow (its pool is chosen as it is imported): its ``config.h`` says
    whether it was built with jemalloc; a pyarrow that ships none gets the C allocator."""
    settings = tmp_path / "with" / "include" / "arrow" / "util" / "config.h"
    settings.parent.mkdir(parents=True)
    settings.write_text("#define ARROW_IPC\n#define ARROW_JEMALLOC\n#define ARROW_JSON\n")
    assert cli._has_jemalloc([str(tmp_path / "with")])
    settings.write_text("#define ARROW_IPC\n/* #undef ARROW_JEMALLOC */\n"
                        "#define ARROW_JEMALLOC_VENDORED\n#define ARROW_MIMALLOC\n")
    assert not cli._has_jemalloc([str(tmp_path / "with")])
    assert not cli._has_jemalloc([str(tmp_path / "without")])
    assert not cli._has_jemalloc([])
