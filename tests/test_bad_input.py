"""Bad input, through the real command line: exit 2, one line naming what to fix, nothing sent.

Every case runs ``batchrunner.cli.main`` in-process against a simulator on 127.0.0.1 and checks:
the exit code is 2; stderr is exactly one line, ``batchrunner: error: ...``, naming the file, row,
option or field to fix; the simulator received no request; and nothing on disk changed (no output
directory created, no file written or touched). Argument errors caught by argparse are one
line too.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner import io as bio
from batchrunner.cli import main
from batchrunner.simulator import SimulatorConfig, SimulatorThread, prompt_key

KEY = "sk-test-bad-input-0123456789"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig()) as s:
        yield s


pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


@dataclass
class Ctx:
    tmp: Path
    url: str
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
        return path

    def good_csv(self) -> Path:
        return self.write("good.csv", "id,text\na,hello\nb,world\n")

    def args(self, inp: Path | str, *extra: str, prompt: str | None = "Say {text}",
             out: Path | None = None, base_url: str | None = None,
             model: str | None = "gpt-4o-mini") -> list[str]:
        argv = ["run", "--input", str(inp), *(["--model", model] if model else []),
                "--output", str(out or self.out), "--progress", "none"]
        if prompt is not None:
            argv += ["--prompt", prompt]
        if base_url is None:
            base_url = self.url
        if base_url:
            argv += ["--base-url", base_url]
        return argv + list(extra)

    def job(self, body: str, name: str = "job.toml") -> list[str]:
        """A job file with ``body`` (TOML) and the simulator's base_url unless it sets one."""
        if "[endpoint]" not in body:
            body += f"\n[endpoint]\nbase_url = {json.dumps(self.url)}\n"
        return ["run", str(self.write(name, body)), "--progress", "none"]


GOOD_JOB = """\
[input]
path = "good.csv"
[request]
model = "gpt-4o-mini"
prompt = "Say {text}"
[output]
dir = "out"
"""

Setup = Callable[[Ctx], tuple[list[str], list[str]]]
CASES: dict[str, Setup] = {}


def case(name: str) -> Callable[[Setup], Setup]:
    def register(fn: Setup) -> Setup:
        assert name not in CASES
        CASES[name] = fn
        return fn

    return register


# -- the input file ----------------------------------------------------------------------------


@case("missing input file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.tmp / "nope.csv"), ["nope.csv", "no such file"]


@case("empty file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.write("empty.csv", b"")), ["empty.csv", "empty"]


@case("CSV of blank lines")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was "has no data rows — add rows below the header", of a file with no header.
    return c.args(c.write("blank.csv", "\n\n")), [
        "blank.csv: holds only blank lines, no header and no rows — give a file with a header "
        "line and rows below it"]


@case("header-only CSV")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.write("header.csv", "id,text\n")), ["header.csv", "no data rows"]


@case("unreadable Parquet")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("garbage.parquet", b"this is not parquet at all" * 10)
    return c.args(inp), ["garbage.parquet", "not a readable Parquet file"]


@case("CSV with a ragged row")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("ragged.csv", "id,text\na,b\nc,d,e\nf,g\n")
    return c.args(inp), ["ragged.csv", "row 2 (line 3)", "3 fields"]


@case("CSV with a ragged row past the first block")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.monkeypatch.setattr(bio, "CSV_BLOCK_SIZE", 1 << 14)
    rows = "".join(f"r{i},text {i}\n" for i in range(3000))
    inp = c.write("late_ragged.csv", "id,text\n" + rows + "z,a,b\n")
    return c.args(inp), ["late_ragged.csv", "row 3001 (line 3002)"]


@case("non-UTF-8 CSV (latin-1)")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("latin.csv", "id,text\na,café\n".encode("latin-1"))
    return c.args(inp), ["latin.csv", "not valid UTF-8", "line 2"]


@case("latin-1 byte deep in a column only the prompt reads")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Rows are counted from the id column alone; a bad byte in the text column after the first
    # block used to surface half-way through the run, after hundreds of requests.
    c.monkeypatch.setattr(bio, "CSV_BLOCK_SIZE", 1 << 14)
    rows = "".join(f"r{i},text {i}\n" for i in range(3000)).encode()
    inp = c.write("late_latin.csv", b"id,text\n" + rows + b"z,caf\xe9\n")
    return c.args(inp, "--id-column", "id"), ["late_latin.csv", "not valid UTF-8", "line 3002"]


@case("CSV quote never closed")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # pyarrow reads this as ONE row whose text swallows the rest of the file.
    inp = c.write("unclosed.csv", 'id,text\na,"unclosed\nb,world\nc,again\n')
    return c.args(inp), ["unclosed.csv", "row 1 (line 2)", "quote"]


@case("CSV with text after a closing quote")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # A MySQL export's backslash-escaped quotes: pyarrow read on past the first \" as the
    # value's end, dropped the quotes and joined the rest: "He said \no\"" was sent, exit 0.
    rows = "".join(f'r{i},"fine, {i}",5" screen\n' for i in range(3000))
    inp = c.write("mysql.csv", 'id,text,size\n' + rows + 'z,"He said \\"no\\"",1\n')
    return c.args(inp), ["mysql.csv", "row 3001 (line 3002) has text after a quoted value's "
                         'closing quote — within a quoted value, write a quote as two ("" '
                         'for "), not \\"; or quote the whole value']


@case("TSV with a value that begins with a quoted part")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("said.tsv", 'id\ttext\na\t"Hello," she said\n')
    return c.args(inp), ["said.tsv", "row 1 (line 2) has text after a quoted value's closing "
                         "quote"]


@case("tab-separated file named .csv")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # It showed the header's tabs as spaces ("columns: sku name category", the column it
    # said was missing among them), asked "did you mean" the whole header line, and said
    # only to save it comma-separated, where renaming it .tsv does.
    inp = c.write("tabs.csv", "id\ttext\tcategory\na\thello\thome\n")
    return c.args(inp), ["(columns: 'id\\ttext\\tcategory') — the file seems to be "
                         "separated by tabs; save it comma-separated (or rename it to .tsv)"]


@case("semicolon-separated CSV")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("semi.csv", "id;text\na;hello\n")
    return c.args(inp), ["{text}", "semi.csv", "semicolons"]


@case("Excel's sep= line above the header")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Read as the header (columns "sep=" and ""): the message named only the columns.
    inp = c.write("excel.csv", "sep=,\nid,text\na,hello\n")
    return c.args(inp), ["{text}", "excel.csv", "(sep=...) is Excel's separator line",
                         "delete that line"]


@case("Excel's sep=; line above a semicolon-separated header")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("excel.csv", "sep=;\nid;text\na;hello\n")
    return c.args(inp), ["(sep=...) is Excel's separator line",
                         "delete that line and save it comma-separated"]


@case("duplicate ids")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("dup.csv", "id,text\na,1\nb,2\na,3\n")
    return c.args(inp, "--id-column", "id"), ["dup.csv", "'a'", "more than once", "'id'"]


@case("duplicate ids far apart, named by their rows")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # A 20,000-row export that repeats id 7 at its row 15001: the message named the id only,
    # leaving the rows to hunt for; it names both rows now.
    ids = list(range(20_000))
    ids[15_000] = 7
    pq.write_table(pa.table({"id": ids, "text": ["t"] * 20_000}), c.tmp / "dup.parquet")
    return c.args(c.tmp / "dup.parquet", "--id-column", "id"), [
        "dup.parquet", "id '7' appears more than once in column 'id' (rows 8 and 15001)"]


@case("duplicate ids in a Parquet folder, named by their files")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # A Spark export's parts: the rows were counted across the files ("rows 3 and 5000"),
    # leaving the user to add up the parts' lengths to find them.
    (c.tmp / "parts").mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["t"] * 3}), c.tmp / "parts" / "p0.parquet")
    pq.write_table(pa.table({"id": [4, 3], "text": ["t"] * 2}), c.tmp / "parts" / "p1.parquet")
    return c.args(c.tmp / "parts", "--id-column", "id"), [
        "id '3' appears more than once in column 'id' (row 3 of p0.parquet and row 2 of "
        "p1.parquet)"]


@case("a null id in a Parquet folder, named by its file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    (c.tmp / "parts").mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["t"] * 2}), c.tmp / "parts" / "p0.parquet")
    pq.write_table(pa.table({"id": pa.array([3, None], pa.int64()), "text": ["t"] * 2}),
                   c.tmp / "parts" / "p1.parquet")
    return c.args(c.tmp / "parts", "--id-column", "id"), [
        "row 2 of p1.parquet has no value in id column 'id'"]


@case("--input given a pattern the shell expanded into Parquet files")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # --input parts/*.parquet: the second file was taken for the job file ("pass it as --input
    # parts/p1.parquet", the first file dropped), a third refused as "run takes no argument".
    (c.tmp / "parts").mkdir()
    parts = []
    for i in range(3):
        parts.append(c.tmp / "parts" / f"p{i}.parquet")
        pq.write_table(pa.table({"text": ["a", "b"]}), parts[-1])
    argv = c.args(parts[0])
    at = argv.index(str(parts[0])) + 1
    return [*argv[:at], *(str(p) for p in parts[1:]), *argv[at:]], [
        "--input takes one file or a directory, and was given 3 files",
        "a pattern the shell expanded?) — give their directory, --input "
        f"{c.tmp / 'parts'} (every .parquet file in it is read)"]


@case("--input given a pattern the shell expanded into CSV files")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    more = c.write("b.csv", "id,text\nc,x\n")
    argv = c.args(c.good_csv())
    at = argv.index(str(c.tmp / "good.csv")) + 1
    return [*argv[:at], str(more), *argv[at:]], [
        "was given 2 files", "— give one file, or a directory of .parquet files"]


@case("--input given a pattern in quotes")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    (c.tmp / "parts").mkdir()
    pq.write_table(pa.table({"text": ["a", "b"]}), c.tmp / "parts" / "p0.parquet")
    return c.args(c.tmp / "parts" / "p*.parquet"), [
        "no such file: a pattern is not expanded — give the directory that holds the files, "
        f"{c.tmp / 'parts'} (every .parquet file in it is read), or one file"]


@case("an id pandas wrote as the file's index")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Ids 101, 102, 103 as a RangeIndex, which to_parquet keeps in the metadata only: the id
    # was "not a column", though pandas reads it back as the index. pandas 3 makes them one on
    # set_index("ticket_id"); pandas 2 keeps an Index there, written as a column: the
    # RangeIndex is made here, the same file from either.
    df = pd.DataFrame({"text": ["a", "b", "c"]},
                      index=pd.RangeIndex(101, 104, name="ticket_id"))
    df.to_parquet(c.tmp / "tickets.parquet")
    return c.args(c.tmp / "tickets.parquet", "--id-column", "ticket_id"), [
        "id_column 'ticket_id' is not a column of input tickets.parquet (columns: text) — it is "
        "the index pandas wrote the file with", "df.reset_index().to_parquet(...)"]


@case("Parquet damaged in a column the prompt does not use")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Only the id and prompt columns were decoded before sending: every row was sent and paid
    # for, then writing the results (every column) stopped the run with exit 2, "after row 0".
    inp = _parquet_damaged_in_column(c.tmp / "damaged.parquet", "note", 300)
    return c.args(inp, "--id-column", "id"), [
        "damaged.parquet: column 'note' cannot be read in rows 201–400 (", "re-export it"]


@case("Parquet damaged in an unused column of the rows a --limit run sends")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # A --limit run decodes the ids alone; its results hold every column of the rows it sent.
    inp = _parquet_damaged_in_column(c.tmp / "damaged.parquet", "note", 3)
    return c.args(inp, "--id-column", "id", "--limit", "2"), [
        "damaged.parquet: column 'note' cannot be read in rows 1–200 ("]


@case("times in a time zone the machine does not have, in the prompt")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was a traceback (an ExceptionGroup of ~80 lines) at the first row, exit 1.
    when = pa.array([0, 86_400], pa.int64()).cast(pa.timestamp("s", tz="Mars/Olympus"))
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "ts": when}),
                   c.tmp / "mars.parquet")
    return c.args(c.tmp / "mars.parquet", "--id-column", "id", prompt="{text} at {ts}"), [
        "mars.parquet: column 'ts' holds times in the time zone 'Mars/Olympus', which this "
        "machine's time zone database does not have"]


@case("null id")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("nullid.jsonl", '{"id": "a", "text": "x"}\n{"id": null, "text": "y"}\n')
    return c.args(inp, "--id-column", "id"), ["nullid.jsonl", "line 2", "'id'"]


@case("duplicate column names")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("dupcol.csv", "id,text,text\na,b,c\n")
    return c.args(inp), ["dupcol.csv", "'text' appears twice"]


@case("unsupported suffix .xlsx")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("sheet.xlsx", b"PK\x03\x04 not really a workbook")
    return c.args(inp), ["sheet.xlsx", "'.xlsx'", ".csv, .tsv, .parquet, .jsonl",
                         "(in Excel: Save As, CSV UTF-8)"]


@case("an .ndjson file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("rows.ndjson", '{"text": "a"}\n')
    return c.args(inp), ["rows.ndjson", "'.ndjson' files are not supported",
                         "(an .ndjson file is JSON Lines: rename it .jsonl)"]


@case("model column of numbers")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Each row was sent asking for model "1", "2", ..., and the run ended advising to price them.
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "m": [1, 2]}),
                   c.tmp / "models.parquet")
    return c.args(c.tmp / "models.parquet", "--model-column", "m", model=None), [
        "model_column 'm' of", "models.parquet holds int64 values, not model names: name the "
        "column of text that gives each row's model"]


@case("directory with no parquet files")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.write("exports/readme.txt", "nothing here")
    return c.args(c.tmp / "exports"), ["exports", "no .parquet files"]


@case("partitioned Parquet directory")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # It was "a directory with no .parquet files", though it holds them a level down.
    (c.tmp / "sales" / "year=2024").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a", "b"]}), c.tmp / "sales" / "year=2024" / "p.parquet")
    c.write("sales/_SUCCESS", b"")
    return c.args(c.tmp / "sales"), [
        "sales: has its .parquet files in subdirectories (year=2024/p.parquet), which are not "
        "read — give the directory that holds them"]


@case("Parquet directory with mismatched schemas")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    (c.tmp / "parts").mkdir()
    pq.write_table(pa.table({"text": ["a", "b"]}), c.tmp / "parts" / "a.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), c.tmp / "parts" / "b.parquet")
    return c.args(c.tmp / "parts"), ["parts", "b.parquet", "a.parquet", "different schemas"]


@case("JSONL with a bad line")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("bad.jsonl", '{"text": "a"}\n{"text": \n{"text": "c"}\n')
    return c.args(inp), ["bad.jsonl", "line 2", "not valid JSON"]


@case("JSONL line that is not JSON, far into the file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Found when the file is opened: before, the rows above it were sent first.
    rows = "".join(f'{{"text": "row {i}"}}\n' for i in range(3000))
    inp = c.write("late.jsonl", rows + '{"text": "cut\n')
    return c.args(inp), ["late.jsonl", "line 3001 is not valid JSON"]


@case("OpenAI batch line missing body")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    line = {"custom_id": "t1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
    bad = {k: v for k, v in line.items() if k != "body"} | {"custom_id": "t2"}
    inp = c.write("batch.jsonl", json.dumps(line) + "\n" + json.dumps(bad) + "\n")
    return c.args(inp, prompt=None, model=None), ["batch.jsonl", "line 2", "'body'"]


@case("OpenAI batch line whose body has a prompt, not messages")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Each such row was sent and failed with every API's 400 ("'messages' is a required
    # property"), as one with no messages, or none in its list, was.
    lines = [{"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
             for i in range(3)]
    lines[1]["body"] = {"model": "gpt-4o-mini", "prompt": "hi"}
    inp = c.write("batch.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return c.args(inp, prompt=None, model=None), [
        "batch.jsonl: line 2: body has no messages — a chat completion's body needs a list of "
        'them: "messages": [{"role": "user", "content": "..."}] (a "prompt" is the legacy '
        "completions API's)"]


@case("OpenAI batch line whose messages are empty")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    line = {"custom_id": "t1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": []}}
    inp = c.write("batch.jsonl", json.dumps(line) + "\n")
    return c.args(inp, prompt=None, model=None), [
        "batch.jsonl: line 1: body has messages [] — a chat completion's body needs a list of "
        "them"]


@case("OpenAI batch line whose body sets max_tokens and max_completion_tokens")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Every such row was sent and answered 400 by OpenAI and the gateways in front of it.
    lines = [{"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                       "max_completion_tokens": 50}} for i in range(3)]
    lines[2]["body"]["max_tokens"] = 50
    inp = c.write("batch.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return c.args(inp, prompt=None, model=None), [
        "batch.jsonl: line 3: body sets both max_tokens and max_completion_tokens",
        "keep one of them in every line"]


@case("OpenAI batch file with request settings it would not use")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    line = {"custom_id": "t1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}]}}
    inp = c.write("batch.jsonl", json.dumps(line) + "\n")
    return c.args(inp, "--max-tokens", "5"), [
        "batch.jsonl is an OpenAI batch file",
        "model (--model), prompt (--prompt), max_tokens (--max-tokens) would not be used",
        "leave them out (of the options, or of the job file) and set what the requests need"]


# -- the prompt and the columns ---------------------------------------------------------------


@case("template names a missing column")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), prompt="Say {nope}"), ["{nope}", "good.csv", "id, text"]


@case("malformed template")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), prompt="Say {oops"), ["prompt template", "{oops", "{{"]


@case("template with a format spec")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), prompt="Say {text:>5}"), ["{text:>5}", "plain column name"]


@case("template picking a part of a value")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), prompt="Say {text.lang}"), [
        "{text.lang} picks part of column text's values, which a template cannot: flatten it "
        "into a column of its own first", "df['lang'] = df['text'].map(json.loads).str['lang']",
        "write {lang}", "columns: id, text"]


@case("template picking a part of no column")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), prompt="Say {meta.lang} {text}"), [
        "{meta.lang} must be a column name", "cannot be picked", "columns: id, text"]


@case("JSON braces in a prompt, not doubled, with no colon")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return (c.args(c.good_csv(), prompt='Reply with {"bug"} or {text}'),
            ["names column {\"bug\"}", "write {{ and }} for literal braces"])


@case("a template naming a column whose accents the input spells otherwise")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # The header written as macOS writes names (e + U+0301), the template as typed (é): the
    # message named a column the input "does not have", beside a list showing it.
    path = c.tmp / "accents.csv"
    path.write_text("id,cafe\u0301\n1,espresso\n", encoding="utf-8")
    return (c.args(path, prompt="Describe {caf\u00e9}"),
            ["'cafe\u0301' is that name with its accents written as other Unicode characters"])


@case("a closing brace alone in a template")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # It said to write {{, which is the opening brace's doubling.
    return (c.args(c.good_csv(), prompt="close } only {text}"),
            ["Single '}' encountered in format string (write }} for a literal })"])


@case("an opening brace never closed in a template")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return (c.args(c.good_csv(), prompt="Say {text"),
            ["expected '}' before end of string (write {{ for a literal {)"])


@case("template with a conversion")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), prompt="Say {text!r}"), ["{text!r}", "plain column name"]


@case("id_column that does not exist")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), "--id-column", "nope"), ["id_column 'nope'", "good.csv"]


@case("prompt_column that does not exist")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    argv = c.args(c.good_csv(), "--prompt-column", "nope", prompt=None)
    return argv, ["prompt_column 'nope'", "good.csv"]


@case("both prompt and prompt_column")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), "--prompt-column", "text"), ["--prompt", "--prompt-column"]


@case("no prompt at all")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), prompt=None), ["no prompt", "prompt_column"]


@case("no model")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    argv = c.args(c.good_csv())
    i = argv.index("--model")
    del argv[i : i + 2]
    return argv, ["no model", "--model"]


@case("no input")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    argv = c.args("x.csv")
    del argv[1:3]
    return argv, ["no input", "--input"]


@case("no output directory")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    argv = c.args(c.good_csv())
    i = argv.index("--output")
    del argv[i : i + 2]
    return argv, ["no output directory: pass --output DIR, a directory of its own"]


@case("no job at all")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return ["run"], ["no job given: name a job file (jobs/demo.toml, say), or "
                     "pass --input FILE, --prompt TEXT, --model NAME and --output DIR"]


# -- the job file -----------------------------------------------------------------------------


@case("job file not found")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return ["run", str(c.tmp / "missing.toml")], ["missing.toml", "not found"]


@case("bad TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.job("[input\npath = \n"), ["job.toml", "not valid TOML", "line 1"]


@case("a text value written without quotes")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was "Invalid value (at line 5, column 9)" alone: a newcomer writes TOML as YAML.
    c.good_csv()
    return c.job(GOOD_JOB.replace('model = "gpt-4o-mini"', "model = gpt-4o-mini")), [
        "job.toml: not valid TOML: Invalid value (at line ",
        ' — text goes in quotes: model = "gpt-4o-mini"']


@case("a variable written as a shell's, unquoted")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was "Invalid value (at line 4, column 9)" alone, for a gateway guide's $NBILITY_MODEL.
    c.good_csv()
    return c.job(GOOD_JOB.replace('model = "gpt-4o-mini"', "model = ${NBILITY_MODEL}")), [
        "job.toml: not valid TOML: Invalid value (at line ",
        " — a job file does not expand $NBILITY_MODEL: write the value itself, in quotes, or, "
        'from a shell where NBILITY_MODEL is set, pass --model "$NBILITY_MODEL"']


@case("a text value without quotes holding a #")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was 'prompt = "Classify"': TOML reads "#" as a comment's start, which the text was.
    c.good_csv()
    return c.job(GOOD_JOB.replace('prompt = "Say {text}"', "prompt = Classify #1: {text}")), [
        ' — text goes in quotes: prompt = "Classify #1: {text}"']


@case("a number key given a word")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was 'max_tokens = "lots"': quoted, it is refused again, as text.
    c.good_csv()
    return c.job(GOOD_JOB.replace('prompt = "Say {text}"',
                                  'prompt = "Say {text}"\nmax_tokens = lots')), [
        " — max_tokens takes a number, not text (max_tokens = 10, say)"]


@case("a string not closed on its line")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was "Illegal character '\\n' (at line 5, column 19)" alone.
    c.good_csv()
    return c.job(GOOD_JOB.replace('"Say {text}"', '"Say {text}')), [
        "not valid TOML: Illegal character", "(at line 5, ",
        ' — a string is not closed on its line: end it with " (text of many lines goes in '
        'triple quotes, """...""")']


@case("a Windows path in double quotes")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was "Unescaped '\\' in a string (at line 2, column 13)" alone.
    return c.job(GOOD_JOB.replace('"good.csv"', '"C:\\data\\good.csv"')), [
        "not valid TOML: Unescaped '\\' in a string (at line 2, ",
        ' — a backslash in "..." starts an escape (\\n, \\t): write \\\\ for one, or put the '
        "text in single quotes, which keep it as it is: path = 'C:\\data\\good.csv'"]


@case("a comma after a value")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB.replace('"gpt-4o-mini"', '"gpt-4o-mini",')), [
        "not valid TOML: Expected newline or end of document after a statement (at line 4, ",
        " — no comma after a value: TOML puts one key on a line (commas go in [ ] and { })"]


@case("a table declared twice")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + "[request.extra]\nseed = 1\n[request.extra]\nuser = \"x\"\n"), [
        "not valid TOML: Cannot declare",
        " — [request.extra] is declared twice: put all its keys under one header"]


@case("a yes written as Python's True")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB.replace("[output]", "stream = True\n[output]")), [
        "not valid TOML: Invalid value",
        " — a yes or no is true or false, in lower case: stream = true"]


@case("a command-line option's name as a job file's key")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # --rpm is requests_per_minute in a job file: refused with the list of known keys alone.
    c.good_csv()
    return c.job(GOOD_JOB + "[limits]\nrpm = 500\n"), [
        "unknown key 'rpm' in [limits]",
        "; --rpm on the command line is [limits] requests_per_minute in a job file"]


@case("unknown top-level key")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job("nmae = 'x'\n" + GOOD_JOB), ["job.toml", "'nmae'"]


@case("unknown key inside a table")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + "[limits]\nrpmm = 5\n"), ["job.toml", "'rpmm'", "[limits]"]


@case("a key misspelt")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was refused with the list of known keys alone, the one meant to be found among them.
    c.good_csv()
    body = GOOD_JOB.replace("prompt = ", "promt = ")
    return c.job(body), ["job.toml", "unknown key 'promt' in [request]",
                         "; did you mean 'prompt'?"]


@case("a table misspelt")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + "[limit]\nrequests_per_minute = 5\n"), [
        "job.toml", "unknown key 'limit'", "; did you mean [limits]?"]


@case("the OpenAI SDK's client settings under their names, as a gateway's guide sets them")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # OpenAI(api_key=..., timeout=60, max_retries=2): refused with the list of known keys alone
    c.good_csv()
    return c.job(GOOD_JOB + "[limits]\nmax_retries = 2\n"), [
        "unknown key 'max_retries' in [limits]",
        "the OpenAI SDK's max_retries = N is [limits] max_attempts = N + 1 here"]


@case("an API key written into the job file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + '[endpoint]\napi_key = "sk-in-the-job-file-0123456789"\n'), [
        "unknown key 'api_key' in [endpoint]",
        "the key is read from the environment or a .env file, never from the job file"]


@case("max_tokens 1.5 in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB.replace("[request]\n", "[request]\nmax_tokens = 1.5\n")
    return c.job(body), ["job.toml", "[request] max_tokens", "integer", "1.5"]


@case('max_tokens "10" in TOML')
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB.replace("[request]\n", '[request]\nmax_tokens = "10"\n')
    return c.job(body), ["job.toml", "[request] max_tokens", "integer", "'10'"]


@case("temperature a string in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB.replace("[request]\n", '[request]\ntemperature = "hot"\n')
    return c.job(body), ["job.toml", "[request] temperature", "'hot'"]


@case("stop not a string in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB.replace("[request]\n", "[request]\nstop = 5\n")
    return c.job(body), ["job.toml", "[request] stop"]


@case("image_column not a string in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was an AttributeError traceback ('int' object has no attribute 'strip').
    c.good_csv()
    body = GOOD_JOB.replace("[request]\n", "[request]\nimage_column = 5\n")
    return c.job(body), ["job.toml", "[request] image_column", "string", "5"]


@case("schema_file not a string in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was a TypeError traceback (expected str, bytes or os.PathLike object, not list).
    c.good_csv()
    body = GOOD_JOB.replace("[request]\n", '[request]\nschema_file = ["a.json"]\n')
    return c.job(body), ["job.toml", "[request] schema_file", "string", "['a.json']"]


@case("schema_file that is not a JSON Schema")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was named as "[request] response_format: the JSON schema is not valid", a field the
    # job file does not have, and not the file
    c.good_csv()
    c.write("ticket.schema.json", '{"type": "object", "required": "name"}')
    body = GOOD_JOB.replace("[request]\n", '[request]\nschema_file = "ticket.schema.json"\n')
    return c.job(body), ["job.toml", "[request] schema_file", "ticket.schema.json",
                         "not a valid JSON Schema: at required: 'name' is not of type 'array'"]


@case("schema_file whose $ref points nowhere")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was sent: every reply came back failed schema_error ("its $ref ... points nowhere"),
    # each one paid for.
    c.good_csv()
    c.write("ticket.schema.json", json.dumps({
        "type": "object", "properties": {"label": {"$ref": "#/$defs/Label"}},
        "definitions": {"Label": {"enum": ["bug", "billing"]}}}))
    body = GOOD_JOB.replace("[request]\n", '[request]\nschema_file = "ticket.schema.json"\n')
    return c.job(body), ["job.toml", "[request] schema_file", "ticket.schema.json",
                         "$ref '#/$defs/Label' points to nothing in the schema"]


@case("schema_file with a type JSON Schema does not have")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Was "'str' is not valid under any of the given schemas", naming neither where nor why.
    c.good_csv()
    c.write("ticket.schema.json", '{"type": "object", "properties": {"label": {"type": "str"}}}')
    return c.args(c.tmp / "good.csv", "--schema-file", "ticket.schema.json"), [
        "--schema-file ticket.schema.json: not a valid JSON Schema: at properties/label/type: "
        "'str' is not a type JSON Schema has (its types: array, boolean, integer, null, "
        "number, object, string)"]


@case("[request] response_format whose $ref points nowhere")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB.replace("[output]", """\
[request.response_format]
type = "json_schema"
json_schema = { name = "t", schema = { properties = { a = { "$ref" = "#/$defs/A" } } } }
[output]""")
    return c.job(body), ["[request] response_format: its $ref '#/$defs/A' points to nothing"]


@case("[request] response_format json_schema with no name")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Sent as written, every row was answered 400 by OpenAI ("Missing required parameter:
    # 'response_format.json_schema.name'"), and by vLLM.
    c.good_csv()
    body = GOOD_JOB.replace("[output]", """\
[request.response_format]
type = "json_schema"
json_schema = { schema = { type = "object", properties = { a = { type = "string" } } } }
[output]""")
    return c.job(body), ["[request] response_format: json_schema has no name, for which APIs "
                         "refuse every request — give it one: json_schema = { name = "]


@case("[request] response_format json_schema whose name is a number")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB.replace("[output]", """\
[request.response_format]
type = "json_schema"
json_schema = { name = 5, schema = { type = "object" } }
[output]""")
    return c.job(body), ["json_schema name 5 would have every request refused: give it a name "
                         "(text)"]


@case("[request.extra.tools] written as one table, not [[request.extra.tools]]")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Sent as written: OpenAI answers every row 400 ("expected an array"), and a simulator
    # rehearsal came back ok with no call checked and no json_ columns.
    c.good_csv()
    body = GOOD_JOB.replace("[output]", """\
[request.extra]
tool_choice = "required"
[request.extra.tools]
type = "function"
[request.extra.tools.function]
name = "record"
parameters = { type = "object", properties = { a = { type = "string" } } }
[output]""")
    return c.job(body), ["[request.extra] tools is not a list, which APIs take only",
                         "write [[request.extra.tools]], in double brackets"]


@case("[request.extra] response_format as a string")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Sent as written, every row was answered 400, and no reply was checked as JSON.
    c.good_csv()
    body = GOOD_JOB.replace("[output]", '[request.extra]\nresponse_format = "json_object"\n'
                                        "[output]")
    return c.job(body), ["[request.extra] response_format must be a table, as "
                         "response_format = { type = \"json_object\" }, got 'json_object'"]


@case("[request.extra] tool_choice = \"required\" with no tools")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # OpenAI answers every row 400 ("'tool_choice' is only allowed when 'tools' are
    # specified"); a simulator rehearsal came back ok.
    c.good_csv()
    body = GOOD_JOB.replace("[output]", '[request.extra]\ntool_choice = "required"\n[output]')
    return c.job(body), ["[request.extra] tool_choice asks for a tool call, but the job has no "
                         "tools (APIs refuse every row so)"]


@case("messages in [request.extra]")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # Few-shot turns put here replaced the prompt's message: every row was sent the same
    # conversation, and every row came back ok with the same answer.
    c.good_csv()
    body = GOOD_JOB.replace("[output]", "[request.extra]\nmessages = [{role = 'user', "
                            "content = 'Example: hi'}]\n[output]")
    return c.job(body), ["job.toml: [request.extra] messages would replace every row's prompt",
                         "OpenAI batch JSONL file"]


@case("zero max_attempts in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + "[limits]\nmax_attempts = 0\n"), ["[limits] max_attempts", "0"]


@case("negative concurrency in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + "[limits]\nconcurrency = -4\n"), ["[limits] concurrency", "-4"]


@case("simulator not a boolean in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + '[endpoint]\nsimulator = "yes"\n'), ["[endpoint] simulator"]


@case("a misspelt [simulator] setting")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB + "[endpoint]\nsimulator = true\n[simulator]\nlatnecy_ms = 5\n"
    return c.job(body), ["job file", "job.toml", "[simulator]", "'latnecy_ms'"]


@case("an output directory that cannot be made")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), "--output", "/proc/batchrunner-out"), [
        "cannot create the output directory /proc/batchrunner-out", "--output"]


@case("a price that is not a number")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    body = GOOD_JOB + '[prices."gpt-4o-mini"]\ninput = "cheap"\noutput = 1\n'
    return c.job(body), ["job.toml", "[prices", "input", "'cheap'"]


# -- options: limits, numbers, the endpoint ---------------------------------------------------

for _opt, _value in [("--rpm", "-1"), ("--rpm", "0"), ("--tpm", "0"), ("--concurrency", "0"),
                     ("--concurrency", "-3"), ("--max-attempts", "0"), ("--timeout", "0"),
                     ("--timeout", "-5"), ("--max-tokens", "0"), ("--temperature", "nan"),
                     ("--temperature", "9"), ("--top-p", "-1"), ("--top-p", "5")]:

    def _limit(c: Ctx, opt: str = _opt, value: str = _value) -> tuple[list[str], list[str]]:
        return c.args(c.good_csv(), opt, value), [opt, value]

    case(f"{_opt} {_value}")(_limit)


@case("prompt that names no column (the shell ate $text)")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return (c.args(c.good_csv(), prompt="Classify: "),
            ["'Classify: ' names no column", "every row would be sent the same prompt"])


@case("a column name with a space around it")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("spaced.csv", "id, text\na,hello\n")
    return c.args(inp, prompt="Say {text}"), [
        "(columns: id, ' text'; ' text' has spaces around its name)"]


@case("--base-url not a URL")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), base_url="api.example.com/v1"), ["--base-url", "http(s) URL"]


@case("OPENAI_BASE_URL not a URL")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.monkeypatch.setenv("OPENAI_BASE_URL", "ftp://files.example.com/v1")
    return c.args(c.good_csv(), base_url=""), ["OPENAI_BASE_URL", "'ftp://files.example.com/v1'"]


@case("--base-url-env names a variable holding no URL")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.monkeypatch.setenv("NBILITY_BASE_URL", "files.example.com/v1")
    return (c.args(c.good_csv(), "--base-url-env", "NBILITY_BASE_URL", base_url=""),
            ["NBILITY_BASE_URL", "'files.example.com/v1'"])


@case("--base-url-env names the key's variable")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-secret-0123456789")
    return (c.args(c.good_csv(), "--base-url-env", "OPENAI_API_KEY", base_url=""),
            ["OPENAI_API_KEY holds the API key, not the endpoint's URL"])


@case("--base-url-env given the URL itself")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return (c.args(c.good_csv(), "--base-url-env", c.url, base_url=""),
            ["--base-url-env holds a URL, not the name of the environment variable",
             "set the URL as --base-url"])


@case("--base-url-env names a variable that is not set")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.monkeypatch.delenv("NBILITY_BASE_URL", raising=False)
    return (c.args(c.good_csv(), "--base-url-env", "NBILITY_BASE_URL", base_url=""),
            ["no endpoint", "NBILITY_BASE_URL"])


def without_other_endpoint_variables(c: Ctx) -> None:
    """No variable of the machine's that a message would name beside the test's own."""
    for name in list(os.environ):
        if name.upper().endswith(("_BASE_URL", "_API_BASE", "_API_KEY")):
            c.monkeypatch.delenv(name)


@case("the URL in .env under a gateway guide's name")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # The guide's .env: NBILITY_API_KEY, NBILITY_BASE_URL. The message said to set
    # OPENAI_BASE_URL, as if none were set.
    without_other_endpoint_variables(c)
    c.write(".env", f"NBILITY_API_KEY={KEY}\nNBILITY_BASE_URL={c.url}\n")
    return (c.args(c.good_csv(), base_url=""),
            ["no endpoint: OPENAI_BASE_URL is not set; to read the URL from another variable, "
             "pass --base-url-env NBILITY_BASE_URL (NBILITY_BASE_URL from "
             f"{c.tmp / '.env'} is set), or pass --base-url URL"])


@case("the key in .env under a gateway guide's name")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    without_other_endpoint_variables(c)
    c.write(".env", f"NBILITY_API_KEY={KEY}\n")
    c.monkeypatch.setattr("batchrunner.runner.is_loopback", lambda host: False)
    return (c.args(c.good_csv()),
            ["no API key: OPENAI_API_KEY is not set; to read the key from another variable, "
             f"pass --api-key-env NBILITY_API_KEY (NBILITY_API_KEY from {c.tmp / '.env'} is "
             "set), or set OPENAI_API_KEY", "any value: OPENAI_API_KEY=none"])


@case("the key in .env written as YAML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # "OPENAI_API_KEY: sk-..." is no .env line: it was skipped, and the message said to set
    # the variable in a .env file, as if there were none.
    without_other_endpoint_variables(c)
    c.write(".env", f"# the gateway's key\nOPENAI_API_KEY: {KEY}\n")
    c.monkeypatch.setattr("batchrunner.runner.is_loopback", lambda host: False)
    argv = c.args(c.good_csv())
    return argv, [f"batchrunner: error: no API key: {c.tmp / '.env'} has a line for "
                  "OPENAI_API_KEY with no =, which is not read: write OPENAI_API_KEY=..."]


@case("the key variable's name mistyped")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # --api-key-env MYKEY with MY_KEY set: the message named no variable set, as its name
    # does not end in _API_KEY.
    without_other_endpoint_variables(c)
    c.monkeypatch.setenv("MY_KEY", KEY)
    return (c.args(c.good_csv(), "--api-key-env", "MYKEY"),
            ["no API key: MYKEY is not set; to read the key from another variable, pass "
             "--api-key-env MY_KEY (MY_KEY from the environment is set), or set MYKEY"])


@case("no key set, only a near miss of its name that holds a URL")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # OPENAI_API_BASE (a URL) and OPENAI_API_TYPE ("azure") are near misses of OPENAI_API_KEY:
    # the message said to pass --api-key-env OPENAI_API_BASE, which sends a URL as the key.
    without_other_endpoint_variables(c)
    c.monkeypatch.setenv("OPENAI_API_BASE", c.url)
    c.monkeypatch.setenv("OPENAI_API_TYPE", "azure")
    c.monkeypatch.setattr("batchrunner.runner.is_loopback", lambda host: False)
    return (c.args(c.good_csv()),
            ["batchrunner: error: no API key: set OPENAI_API_KEY in the environment or in a "
             ".env file"])


@case("a job file's base_url written as ${VARIABLE}")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # As docker compose writes it: not expanded, it was refused as 'not a URL — is it the
    # API key?'.
    return (c.job(GOOD_JOB + '[endpoint]\nbase_url = "${NBILITY_BASE_URL}"\n'),
            ["[endpoint] base_url is $NBILITY_BASE_URL, which is not expanded: to read the URL "
             'from NBILITY_BASE_URL, set base_url_env = "NBILITY_BASE_URL" in [endpoint] instead'])


@case("a job file's api_key_env written as ${VARIABLE}")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # It was 'not a variable name — is it the key itself?'.
    return (c.job(GOOD_JOB + '[endpoint]\napi_key_env = "${NBILITY_API_KEY}"\n'
                  f"base_url = {json.dumps(c.url)}\n"),
            ["[endpoint] api_key_env takes the variable's name, without $ or braces: "
             "NBILITY_API_KEY"])


@case("--base-url-env written as $VARIABLE")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return (c.args(c.good_csv(), "--base-url-env", "$NBILITY_BASE_URL", base_url=""),
            ["--base-url-env takes the variable's name, without $ or braces: NBILITY_BASE_URL"])


@case("a job file's model written as ${VARIABLE}")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # A gateway guide keeps the model in NBILITY_MODEL: sent as the text "${NBILITY_MODEL}",
    # every row was answered "model does not exist"
    c.good_csv()
    return (c.job(GOOD_JOB.replace('"gpt-4o-mini"', '"${NBILITY_MODEL}"')),
            ["[request] model is ${NBILITY_MODEL}, which is not expanded: write the model's "
             'name, like gpt-4o-mini (or, from a shell where NBILITY_MODEL is set, pass --model '
             '"$NBILITY_MODEL")'])


@case("--model written as $VARIABLE")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return (c.args(c.good_csv(), model="$NBILITY_MODEL"),
            ["--model is $NBILITY_MODEL, which is not expanded"])


@case("JSON braces in a prompt, not doubled")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return (c.args(c.good_csv(), prompt='Reply as {"label": "bug"}: {text}'),
            ["plain column name", "write {{ and }} for literal braces"])


@case("a row without an id")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("noid.csv", 'id,text\na,"x\nand more"\n,y\nc,z\n')
    return c.args(inp, "--id-column", "id"), [
        "noid.csv", "row 2 (line 4) has no value in id column 'id'"]


@case("a CSV id repeated, after values of more than one line")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("dup.csv", 'id,text\na,"x\nand more"\nb,y\na,z\n')
    return c.args(inp, "--id-column", "id"), [
        "dup.csv", "id 'a' appears more than once in column 'id' (rows 1 and 3, lines 2 and 5)"]


@case("a JSONL row without an id")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.write("noid.jsonl", '{"id": 1, "text": "x"}\n{"text": "y"}\n')
    return c.args(inp, "--id-column", "id"), ["noid.jsonl", "line 2 has no value in id column"]


@case("an input file given as the job")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    inp = c.good_csv()
    return (["run", str(inp), "--prompt", "Say {text}", "--model", "gpt-4o-mini"],
            ["looks like an input file", f"--input {inp}"])


@case("an input file whose name has a space given as the job")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # The hint's --input was printed unquoted: pasted, the shell split the name in two.
    inp = c.write("my data.csv", "id,text\na,hello\n")
    return (["run", str(inp), "--prompt", "Say {text}", "--model", "gpt-4o-mini"],
            ["looks like an input file", f"--input '{inp}' (the job argument"])


@case("the simulator and a base_url both in the job file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # The demo's "simulator = true  # replace with base_url = ..." with the line added, not
    # replaced: the run would quietly go to the simulator.
    body = GOOD_JOB + f'[endpoint]\nsimulator = true\nbase_url = {json.dumps(c.url)}\n'
    return c.job(body), ["[endpoint] simulator and", "[endpoint] base_url are both set"]


@case("--simulator and --base-url both given")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), "--simulator"), ["--simulator and --base-url are both set"]


@case("base_url with /chat/completions")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # The client appends /chat/completions itself: every request would be a 404.
    url = c.url + "/chat/completions"
    return c.args(c.good_csv(), base_url=url), ["--base-url", "without /chat/completions"]


@case("base_url of the Responses endpoint")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), base_url=c.url + "/responses"), [
        "--base-url must be the base URL, not another endpoint's", "/chat/completions"]


@case("base_url with a line break")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # urlsplit silently drops the line break; the run then failed every row as connection errors.
    return c.args(c.good_csv(), base_url=c.url + "\nx"), ["--base-url", "control characters"]


@case("base_url with a query string")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    url = c.url + "?api-version=1"
    return c.args(c.good_csv(), base_url=url), ["--base-url", "query string"]


@case("no API key")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.monkeypatch.delenv("OPENAI_API_KEY")
    # The simulator as a remote endpoint: one on this machine is sent no key when none is set.
    c.monkeypatch.setattr("batchrunner.runner.is_loopback", lambda host: False)
    return c.args(c.good_csv()), ["no API key", "OPENAI_API_KEY", ".env"]


@case("no API key for a server that may check none")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    # A vLLM or Ollama on another machine, started without a key: any value does, which the
    # message did not say (a reader of its guide went looking for a key that does not exist).
    c.monkeypatch.delenv("OPENAI_API_KEY")
    c.monkeypatch.setattr("batchrunner.runner.is_loopback", lambda host: False)
    return c.args(c.good_csv()), ["no API key", "a server that checks none", "any value"]


@case("an API key set to nothing")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.monkeypatch.setenv("OPENAI_API_KEY", " ")
    return c.args(c.good_csv()), [
        "no API key: OPENAI_API_KEY from the environment is empty — set it to the key (set in "
        "the environment, even empty, it wins over a .env file)"]


@case("api_key_env naming an unset variable")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    return c.args(c.good_csv(), "--api-key-env", "NO_SUCH_KEY_VAR"), ["NO_SUCH_KEY_VAR"]


# -- the output directory ---------------------------------------------------------------------


@case("output directory is a file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    afile = c.write("taken", "I am a file")
    return c.args(c.good_csv(), out=afile), ["--output", "taken", "is a file"]


@case("output directory below a file")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    afile = c.write("taken", "I am a file")
    return c.args(c.good_csv(), out=afile / "sub"), [
        "--output", "taken", "is a file, not a directory — choose another directory"]


@case("output directory with a damaged job.json")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.write("out/job.json", "{not json")
    return c.args(c.good_csv()), [
        "job.json is damaged (JSONDecodeError); restore it from a backup, or move the output "
        "directory aside (its journal holds the answers paid for) and run the job into a new one"]


@case("output directory with a journal but no job.json")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.write("out/journal/seg-x-w0-000000.parquet", b"whatever")
    return c.args(c.good_csv()), ["out", "journal", "job.json"]


@case("output directory holding a results file but no job.json")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.write("out/results.parquet", b"another tool's results")
    c.write("out/report.html", b"<html></html>")
    return c.args(c.good_csv()), [
        "out holds results.parquet and report.html but no job.json: not a batchrunner job's "
        "output directory, and the run would write over them — use another --output directory, "
        "or move them away"]


@case("format xlsx in TOML")
def _(c: Ctx) -> tuple[list[str], list[str]]:
    c.good_csv()
    return c.job(GOOD_JOB + 'format = "xlsx"\n'), ["[output] format", "'xlsx'"]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every directory (None) and file (its bytes and mode) under ``root``."""
    snap: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            snap[os.path.join(dirpath, d)] = None
        for f in filenames:
            p = Path(dirpath, f)
            snap[str(p)] = p.read_bytes() + f"\0{p.stat().st_mode:o}".encode()
    return snap


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, needles: list[str]) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
    line = err.rstrip("\n")
    assert "\r" not in line
    assert line.startswith("batchrunner: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_sends_nothing(
    name: str, sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, needles = CASES[name](Ctx(tmp_path, sim.base_url, monkeypatch))
    before = _snapshot(tmp_path)
    sim.reset_stats()
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, out, err)
    assert_one_line_error(err, needles)
    assert out == ""
    assert sim.stats()["requests"] == 0
    assert _snapshot(tmp_path) == before, "a refused job wrote or changed files"


def test_there_are_at_least_30_cases() -> None:
    assert len(CASES) >= 30


def test_messages_name_options_that_exist() -> None:
    """config.option_name (used in messages) must spell every override as `run` accepts it."""
    import argparse

    from batchrunner.cli import build_parser
    from batchrunner.config import OVERRIDES, option_name

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    by_dest = {a.dest: a.option_strings for a in run._actions}
    for name in OVERRIDES:
        assert option_name(name) in by_dest.get(name, []), (name, by_dest.get(name))


# -- argparse errors: one line naming the option -------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--format", "xlsx"], "--format"),
        (["--bogus"], "--bogus"),
        (["--temperature", "hot"], "--temperature"),
        (["--max-tokens", "1.5"], "--max-tokens"),
        (["--concurrency", "many"], "--concurrency"),
        (["--from-column", "user"], "--from-column"),
    ],
)
def test_argparse_errors_exit_2_naming_the_option(
    extra: list[str], needle: str, sim: SimulatorThread, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    argv = c.args(c.good_csv(), *extra)
    sim.reset_stats()
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("batchrunner: error: ") and needle in line, line
    assert sim.stats()["requests"] == 0
    assert not c.out.exists()


# -- the real entry point, as a scheduler runs it -------------------------------------------------


def test_subprocess_exit_2_and_one_line(sim: SimulatorThread, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    env["OPENAI_API_KEY"] = KEY
    (tmp_path / "job.toml").write_text("[input\n")
    (tmp_path / "latin.csv").write_bytes("id,text\na,café\n".encode("latin-1"))
    sim.reset_stats()
    for argv, needle in [
        (["run", "job.toml"], "not valid TOML"),
        (["run", "--input", "latin.csv", "--prompt", "{text}", "--model", "m",
          "--base-url", sim.base_url, "--output", "out"], "not valid UTF-8"),
    ]:
        done = subprocess.run([sys.executable, "-m", "batchrunner", *argv], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert_one_line_error(done.stderr, [needle])
        assert done.stdout == ""
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "out").exists()


PASTED = "sk-proj-Zq8RkT2mWx4vNc7LbP9sHd3Jf6Ga1Ye5"  # a key as OpenAI prints it


@pytest.mark.parametrize("line", [
    f"[endpoint]\napi_key = {PASTED}", f"OPENAI_API_KEY = {PASTED}", f"[request]\nmodel = {PASTED}",
], ids=["api_key", "variable", "where-the-model-goes"])
def test_a_key_pasted_into_a_job_file_without_quotes_is_not_shown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str) -> None:
    """A key written in a job file without quotes: the TOML error's fix wrote the line back
    with the key quoted in it, into the terminal or a cron log. It says where a key goes."""
    (tmp_path / "job.toml").write_text(line + "\n")
    code, out, err = run_cli(["run", str(tmp_path / "job.toml")], capsys)
    assert (code, out) == (2, "")
    assert_one_line_error(err, ["not valid TOML: Invalid value", " — text goes in quotes; a key "
                                "goes in no job file, but in the environment or a .env file"])
    assert PASTED not in err and PASTED[8:] not in err


@pytest.mark.parametrize(("line", "shown"), [
    (f"[endpoint]\nbase_url = https://gw.example.com/u/{PASTED}/v1",
     'base_url = "https://gw.example.com/u/[redacted]/v1"'),
    (f"[endpoint]\nbase_url = https://gw.example.com/v1?key={PASTED}",
     'base_url = "https://gw.example.com/v1?key=[redacted]"'),
], ids=["in-the-path", "in-the-query"])
def test_a_url_holding_a_key_written_without_quotes_is_shown_without_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, shown: str) -> None:
    """A gateway's URL with the key in its path or query, written without quotes: the fix
    wrote it back quoted, the key in it, as the URL's "/" exempted it from the key check."""
    (tmp_path / "job.toml").write_text(line + "\n")
    code, out, err = run_cli(["run", str(tmp_path / "job.toml")], capsys)
    assert (code, out) == (2, "")
    assert_one_line_error(err, ["not valid TOML: Invalid value",
                                f" — text goes in quotes: {shown}"])
    assert PASTED not in err and PASTED[8:] not in err


# -- bad input that is not a refusal ----------------------------------------------------------


def test_utf8_bom_is_not_part_of_the_first_column(
    sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    inp = c.write("bom.csv", b"\xef\xbb\xbfid,text\na,hello\nb,world\n")
    sim.reset_stats()
    code, _, err = run_cli(c.args(inp, "--id-column", "id"), capsys)
    assert code == 0, err
    df = pd.read_parquet(c.out / "results.parquet")
    assert list(df.columns[:2]) == ["id", "text"]
    assert list(df["id"]) == ["a", "b"] and set(df["status"]) == {"ok"}
    assert sim.stats()["requests"] == 2


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_null_prompts_are_recorded_as_invalid_rows_and_never_sent(
    kind: str, sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Designed behaviour: a row whose prompt field is null (or, in CSV, empty) is not a bad
    input file; it is recorded as failed ``invalid_row`` without a request, the others are sent,
    and the run exits 3 (finished with failed rows). ``None`` is never sent as text."""
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    ids = [f"r{i}" for i in range(6)]
    texts: list[str | None] = [None, "one", None, "three", None, None]
    frame = pd.DataFrame({"id": ids, "text": texts})
    inp = tmp_path / f"in.{kind}"
    if kind == "parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), inp)
    elif kind == "jsonl":
        frame.to_json(inp, orient="records", lines=True)
    else:
        frame.to_csv(inp, index=False)  # a null is an empty cell
    sim.reset_stats()
    code, out, err = run_cli(c.args(inp, "--id-column", "id"), capsys)
    assert code == 3, (out, err)
    assert "invalid_row 4" in out
    stats = sim.stats(per_prompt=True)
    assert stats["requests"] == 2
    sent = stats["requests_by_prompt"]
    assert set(sent) == {prompt_key("Say one"), prompt_key("Say three")}
    for text in ("Say None", "Say nan", "Say ", "Say"):
        assert prompt_key(text) not in sent
    df = pd.read_parquet(c.out / "results.parquet").set_index("id")
    nulls = df.loc[["r0", "r2", "r4", "r5"]]
    assert set(nulls["status"]) == {"failed"} and set(nulls["error_type"]) == {"invalid_row"}
    assert nulls["error_message"].str.startswith("not sent: ").all()
    assert (nulls["attempts"].fillna(0) == 0).all()
    assert set(df.loc[["r1", "r3"], "status"]) == {"ok"}


def test_an_error_raised_mid_run_is_one_line_not_a_traceback(
    sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Parquet file damaged in its second row group, in a column the row count never reads:
    the error surfaces inside the run's task groups; the CLI must still print one line."""
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    inp = _parquet_damaged_in_second_row_group(tmp_path / "damaged.parquet")
    monkeypatch.setattr(bio, "open_input", functools.partial(bio.open_input, batch_size=50))
    code, out, err = run_cli(c.args(inp, "--id-column", "id", "--concurrency", "4"), capsys)
    assert code == 2, (out, err)
    assert_one_line_error(err, ["damaged.parquet"])


def test_a_damaged_prompt_column_is_refused_before_sending(
    sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    inp = _parquet_damaged_in_second_row_group(tmp_path / "damaged.parquet")
    monkeypatch.setattr(bio, "open_input", functools.partial(bio.open_input, batch_size=50))
    sim.reset_stats()
    code, _, err = run_cli(c.args(inp, "--id-column", "id", "--concurrency", "4"), capsys)
    assert code == 2
    assert_one_line_error(err, ["damaged.parquet"])
    assert sim.stats()["requests"] == 0


def _parquet_damaged_in_second_row_group(path: Path) -> Path:
    n = 400
    table = pa.table({"id": [f"r{i}" for i in range(n)],
                      "text": [f"text-row-{i:05d}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=200, compression="NONE", use_dictionary=False)
    data = bytearray(path.read_bytes())
    at = data.find(b"text-row-00300")
    assert at > 4
    data[at - 4 : at] = (0x7FFFFFF0).to_bytes(4, "little")  # a PLAIN value length past the page
    path.write_bytes(bytes(data))
    assert pq.read_table(path, columns=["id"]).num_rows == n  # the id column still reads
    return path


def _parquet_damaged_in_column(path: Path, column: str, row: int) -> Path:
    """400 rows (id, text, note) in row groups of 200, ``column``'s page that holds ``row``
    (0-based) damaged."""
    n = 400
    table = pa.table({"id": [f"r{i}" for i in range(n)],
                      "text": [f"text-row-{i:05d}" for i in range(n)],
                      "note": [f"note-row-{i:05d}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=200, compression="NONE", use_dictionary=False)
    data = bytearray(path.read_bytes())
    at = data.find(f"{column}-row-{row:05d}".encode())
    assert at > 4
    data[at - 4 : at] = (0x7FFFFFF0).to_bytes(4, "little")  # a PLAIN value length past the page
    path.write_bytes(bytes(data))
    assert pq.read_table(path, columns=["id", "text"]).num_rows == n  # the others still read
    return path


@pytest.mark.parametrize(("where", "says"), [
    ("finish_reason ===", "SyntaxError: invalid syntax (the recorded outcome's columns"),
    ("finish_reason", "is not a condition on each row"),  # a column, not a test of it
    ("attempts + 1", "is not a condition on each row"),
    # An input column, or a misspelt one: named, with the columns it can filter on.
    ("priority == 'high'", "no column 'priority'; it filters on the recorded outcome's columns"),
])
def test_a_bad_rerun_where_expression_is_refused_on_the_first_run(
    sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], where: str, says: str,
) -> None:
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    sim.reset_stats()
    code, _, err = run_cli(c.args(c.good_csv(), "--rerun-where", where), capsys)
    assert code == 2
    assert_one_line_error(err, ["--rerun-where", says])
    assert sim.stats()["requests"] == 0


def test_status_of_a_damaged_output_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "job.json").write_text("{not json")
    code, _, err = run_cli(["status", str(tmp_path / "out")], capsys)
    assert code == 2
    assert_one_line_error(err, ["job.json"])


@pytest.mark.parametrize(("field", "value"), [
    ("input_path", None), ("id_column", ["id"]), ("request", "gpt-4o-mini"),
    ("total_rows", "two"), ("total_rows", -1),
])
def test_a_hand_edited_job_json_is_one_line_for_every_command(
    sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], field: str, value: object,
) -> None:
    """A field of job.json edited into another type ended status, report or a run with a
    traceback (TypeError, ValueError, AttributeError): now each says job.json is damaged."""
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    argv = c.args(c.good_csv(), "--id-column", "id")
    assert run_cli(argv, capsys)[0] == 0
    meta_path = c.out / "job.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta["request_fingerprint"] = "edited"  # the run compares the request settings
    meta_path.write_text(json.dumps(meta))
    sim.reset_stats()
    for command in (["status", str(c.out)], ["report", str(c.out)], argv):
        code, _, err = run_cli(command, capsys)
        assert code == 2, (command, err)
        assert_one_line_error(err, ["job.json", "damaged", field])
    assert sim.stats()["requests"] == 0


def test_output_directory_of_another_job_is_refused_and_left_alone(
    sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    first = c.args(c.good_csv(), "--name", "first")
    code, _, err = run_cli(first, capsys)
    assert code == 0, err
    other = c.write("other.csv", "id,text\nx,1\ny,2\n")
    before = _snapshot(tmp_path)
    sim.reset_stats()
    code, out, err = run_cli(c.args(other, "--name", "second"), capsys)
    assert code == 2, (out, err)
    assert_one_line_error(err, [str(c.out), "'first'", "another --output"])
    assert sim.stats()["requests"] == 0
    assert _snapshot(tmp_path) == before


def test_a_prompt_over_the_context_window_is_warned_about_before_sending(
    sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not a refusal: the row is named in a warning on stderr before it is sent."""
    c = Ctx(tmp_path, sim.base_url, monkeypatch)
    huge = "word " * 160_000  # about 200k tokens; gpt-4o-mini holds 128k
    inp = c.write("huge.csv", f"id,text\nsmall,hello\nbig,{huge}\n")
    code, _, err = run_cli(c.args(inp, "--id-column", "id"), capsys)
    warnings = [line for line in err.splitlines() if line.startswith("batchrunner: warning:")]
    assert any("context" in w and "big" in w for w in warnings), err
    assert code in (0, 3)
