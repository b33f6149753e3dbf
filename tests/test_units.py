"""Pure pieces tested directly: config loading, templates, retry policy, journal, limiter."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrunner.config import load_dotenv, load_job
from batchrunner.errors import ConfigError, JournalError
from batchrunner.journal import Journal, JournalWriter, latest, outcomes_table
from batchrunner.limiter import Limiter, TokenBucket
from batchrunner.records import Outcome
from batchrunner.retry import RetryPolicy, backoff, is_retryable_status
from batchrunner.template import RequestBuilder, Template


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BASE_JOB = """
[input]
path = "in.csv"
[request]
model = "gpt-4o-mini"
prompt = "Say {text}"
[output]
dir = "out"
"""


def test_job_paths_are_relative_to_the_job_file(tmp_path: Path) -> None:
    job = load_job(write(tmp_path / "j.toml", BASE_JOB), {})
    assert job.input.path == tmp_path / "in.csv"
    assert job.output.dir == tmp_path / "out"
    assert job.name == "j"


def test_a_tilde_in_job_paths_is_the_home_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``path = "~/data/in.csv"`` was read as a directory named ``~`` beside the job file (and
    ``dir = "~/out"`` made one there); a shell, and every other tool, reads it as home."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    (home / "data").mkdir(parents=True)
    write(home / "data" / "ticket.schema.json", '{"type": "object"}')
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    text = BASE_JOB.replace('"in.csv"', '"~/data/in.csv"').replace('"out"', '"~/out"')
    text = text.replace("[output]", 'schema_file = "~/data/ticket.schema.json"\n[output]')
    job = load_job(write(jobs / "j.toml", text), {})
    assert job.input.path == home / "data" / "in.csv"
    assert job.output.dir == home / "out"
    assert job.request.response_format is not None
    job = load_job(None, {"input": "~/a.csv", "output": "~/o", "prompt": "{t}", "model": "m"})
    assert (job.input.path, job.output.dir) == (home / "a.csv", home / "o")


def test_a_file_named_with_a_leading_tilde_is_a_file_as_in_a_shell(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``~data.csv``, where no user is called data.csv, is a file's name: a shell leaves it as
    it is. It was refused ('cannot tell which home directory ~data.csv stands for'), and so
    was ``./~data.csv`` ('which home directory . stands for')."""
    monkeypatch.chdir(tmp_path)
    text = BASE_JOB.replace('"in.csv"', '"~data.csv"').replace('"out"', '"~out"')
    job = load_job(write(tmp_path / "j.toml", text), {})
    assert (job.input.path, job.output.dir) == (tmp_path / "~data.csv", tmp_path / "~out")
    for typed in ("~data.csv", "./~data.csv"):
        job = load_job(None, {"input": typed, "output": "o", "prompt": "{t}", "model": "m"})
        assert job.input.path == tmp_path / "~data.csv"


def test_a_key_above_every_table_or_a_body_field_in_request_is_pointed_to_its_place(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'model' \(known: name, \[input\], .*"
                       r"\); it belongs in \[request\]: move it below that header$"):
        load_job(write(tmp_path / "j.toml", 'model = "gpt-4o"\n' + BASE_JOB), {})
    with pytest.raises(ConfigError, match=r"unknown key 'seed' in \[request\] \(known: extra, .*"
                       r"\); other request body fields go in \[request.extra\]$"):
        load_job(write(tmp_path / "j.toml", BASE_JOB.replace("[output]", "seed = 1\n[output]")),
                 {})


def test_command_line_overrides_win(tmp_path: Path) -> None:
    job = load_job(write(tmp_path / "j.toml", BASE_JOB),
                   {"model": "gpt-4o", "max_tokens": 5, "requests_per_minute": 60.0})
    assert job.request.model == "gpt-4o"
    assert job.request.max_tokens == 5
    assert job.limits.requests_per_minute == 60.0


def test_a_request_field_also_in_request_extra_is_sent_as_the_command_line_says(
        tmp_path: Path) -> None:
    """A body field written in [request.extra] (as a gateway's guide lists it among the
    body's) went over the job's own: --max-tokens 800, to rerun the rows cut at
    max_tokens, sent them again with the 300 in [request.extra], cut again and paid for
    twice. The option now wins; both in the job file is refused (which is meant?), as is a
    model there beside model_column, which it replaced for every row."""
    job_file = write(tmp_path / "j.toml", BASE_JOB.replace(
        "[output]", "[request.extra]\nmax_tokens = 300\nseed = 7\nmodel = \"gpt-4o-mini\"\n"
        "[output]"))
    job = load_job(job_file, {"max_tokens": 800, "model": "gpt-4o"})
    assert job.request.max_tokens == 800 and job.request.model == "gpt-4o"
    assert job.request.extra == {"seed": 7}
    body = RequestBuilder(job.request, ["text"], "input").build({"text": "hi"})[0]
    assert body is not None and body["max_tokens"] == 800 and body["model"] == "gpt-4o"
    # --stream over a [request.extra] stream = false: the body streams (asking for its usage)
    job = load_job(write(tmp_path / "j.toml", BASE_JOB.replace(
        "[output]", "[request.extra]\nstream = false\n[output]")), {"stream": True})
    body = RequestBuilder(job.request, ["text"], "input").build({"text": "hi"})[0]
    assert body is not None and body["stream"] is True and body["stream_options"]
    with pytest.raises(ConfigError, match=r"j\.toml: \[request\] max_tokens and "
                                          r"\[request\.extra\] max_tokens are both set"):
        load_job(write(tmp_path / "j.toml", BASE_JOB.replace(
            "[output]", "max_tokens = 20\n[request.extra]\nmax_tokens = 300\n[output]")), {})
    with pytest.raises(ConfigError, match=r"\[request\] model_column and \[request\.extra\] "
                                          r"model are both set"):
        load_job(write(tmp_path / "j.toml", BASE_JOB.replace('model = "gpt-4o-mini"', (
            'model_column = "m"')).replace("[output]", '[request.extra]\nmodel = "x"\n[output]')),
                 {})


def test_max_tokens_beside_max_completion_tokens_is_refused_before_anything_is_sent(
        tmp_path: Path) -> None:
    """OpenAI (and the gateways in front of it) answer a body with both 400 ("Setting
    'max_tokens' and 'max_completion_tokens' at the same time is not supported"): a job
    setting max_tokens in [request] and a reasoning model's max_completion_tokens in
    [request.extra], as a reader of the two APIs' pages would, had every row refused. Now
    it is refused at once, naming both; --max-tokens over the file's max_completion_tokens
    changes that limit, sent under the file's name."""
    for extra, needle in [
        ("max_tokens = 20\n[request.extra]\nmax_completion_tokens = 400\n",
         r"j\.toml: \[request\] max_tokens and \[request\.extra\] max_completion_tokens "
         r"are both set — APIs refuse a request with both"),
        ("[request.extra]\nmax_tokens = 20\nmax_completion_tokens = 400\n",
         r"\[request\.extra\] max_tokens and \[request\.extra\] max_completion_tokens"),
        ("max_tokens = 20\n[request.from_columns]\nmax_completion_tokens = \"budget\"\n",
         r"\[request\] max_tokens and job file .*j\.toml: \[request\.from_columns\] "
         r"max_completion_tokens are both set"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load_job(write(tmp_path / "j.toml", BASE_JOB.replace("[output]", extra + "[output]")),
                     {})
    job_file = write(tmp_path / "j.toml", BASE_JOB.replace(
        "[output]", "[request.extra]\nmax_completion_tokens = 400\n[output]"))
    with pytest.raises(ConfigError, match=r"--from-column max_tokens=budget and "
                                          r"\[request\.extra\] max_completion_tokens are both"):
        load_job(job_file, {"from_columns": {"max_tokens": "budget"}})
    job = load_job(job_file, {"max_tokens": 900})
    body = RequestBuilder(job.request, ["text"], "input").build({"text": "hi"})[0]
    assert body is not None and body["max_completion_tokens"] == 900
    assert "max_tokens" not in body
    body = RequestBuilder(load_job(job_file, {}).request, ["text"], "input").build(
        {"text": "hi"})[0]
    assert body is not None and body["max_completion_tokens"] == 400 and "max_tokens" not in body
    # --max-completion-tokens over the file's max_tokens (either table's): that limit, renamed.
    for limit in ("max_tokens = 20\n[request.extra]\n", "[request.extra]\nmax_tokens = 20\n"):
        job_file = write(tmp_path / "j.toml", BASE_JOB.replace("[output]", limit + "[output]"))
        job = load_job(job_file, {"max_completion_tokens": 300})
        body = RequestBuilder(job.request, ["text"], "input").build({"text": "hi"})[0]
        assert body is not None and body["max_completion_tokens"] == 300
        assert "max_tokens" not in body


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("[limits]\nrequests_per_minute = -1", "requests_per_minute must be greater than 0"),
        ("[limits]\nconcurrency = 0", "concurrency must be greater than 0"),
        ("[limits]\nmax_attempts = 2.5", "max_attempts must be an integer"),
        ("[limits]\ntimeout_s = \"10\"", "timeout_s must be a number"),
        ("[limits]\nbogus = 1", "unknown key 'bogus' in [limits]"),
        ("[endpoint]\nbase_url = \"api.openai.com\"", "must be an http(s) URL"),
        ("[request.extra]\nthinking = 1\n[output]\nformat = \"xlsx\"", None),
        ("[wat]\nx = 1", "unknown key 'wat'"),
        # A key below the wrong header (in TOML, every key below one is in its table): where
        # it goes is said, not only what the table it landed in knows.
        ("requests_per_minute = 5", "unknown key 'requests_per_minute' in [output] (known: "
         "dir, format); it belongs in [limits]: move it below that header"),
        ("[endpoint]\nname = 'x'", "name goes at the top of the file, above the first [table]"),
    ],
)
def test_bad_job_settings_name_the_field(tmp_path: Path, extra: str, needle: str | None) -> None:
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path / "j.toml", BASE_JOB + extra), {})
    msg = str(e.value)
    assert "\n" not in msg
    if needle:
        assert needle in msg


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(write(tmp_path / "j.toml", "[input\npath="), {})


def test_dotenv(tmp_path: Path) -> None:
    env = load_dotenv(write(tmp_path / ".env", "# c\nexport A=1\nB='two words'\nC=x # note\n"))
    assert env == {"A": "1", "B": "two words", "C": "x"}


def test_a_job_file_and_its_schema_file_saved_with_a_bom(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM: the job file was 'not valid TOML: Invalid
    statement (at line 1, column 1)', the schema file 'not a JSON file (Unexpected UTF-8
    BOM ...)'."""
    (tmp_path / "answer.schema.json").write_bytes(b'\xef\xbb\xbf{"type": "object"}\r\n')
    text = BASE_JOB.replace("[output]", 'schema_file = "answer.schema.json"\n[output]')
    (tmp_path / "j.toml").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    job = load_job(tmp_path / "j.toml", {})
    assert job.request.prompt == "Say {text}"
    assert job.request.response_format is not None
    assert job.request.response_format["json_schema"]["schema"] == {"type": "object"}


def test_dotenv_saved_by_notepad_with_a_bom_and_crlf(tmp_path: Path) -> None:
    """The BOM was read as part of the first name: "no API key: set OPENAI_API_KEY in the
    environment or in a .env file", with the key on the file's first line."""
    (tmp_path / ".env").write_bytes(b"\xef\xbb\xbfOPENAI_API_KEY=sk-x\r\nOTHER=y\r\n")
    assert load_dotenv(tmp_path / ".env") == {"OPENAI_API_KEY": "sk-x", "OTHER": "y"}


def test_dotenv_reads_quoted_values_as_docker_compose_and_python_dotenv_do(
        tmp_path: Path) -> None:
    lines = {
        'OPENAI_API_KEY="sk-right" # my key': "sk-right",  # a comment after the quotes
        "SINGLE='sk-right'   # c": "sk-right",
        "TAB=x\t# c": "x",
        "HASH=a#b": "a#b",  # no space before it: part of the value
        'ESCAPES="a\\"b\\nc"': 'a"b\nc',
        "LITERAL='a\\nb'": "a\\nb",  # single quotes keep what is written
        'EMPTY=""': "",
        'OPEN="no closing quote': '"no closing quote',
    }
    env = load_dotenv(write(tmp_path / ".env", "\n".join(lines) + "\n"))
    assert env == {line.split("=", 1)[0]: want for line, want in lines.items()}


def test_dotenv_expands_variables_as_python_dotenv_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway guide's .env keeps the key under its own name; a line giving batchrunner's
    names its value (OPENAI_API_KEY=${NBILITY_API_KEY}), as python-dotenv and docker compose
    read it, was read as the text '${NBILITY_API_KEY}': sent as the key (a 401 naming the
    .env that looked right), or refused as a base URL that 'is not a URL — is it the API
    key?'."""
    monkeypatch.setenv("GATEWAY_HOST", "gw.example.com")
    monkeypatch.delenv("UNSET_VARIABLE", raising=False)
    lines = {
        "NBILITY_API_KEY=sk-nb-0123456789": "sk-nb-0123456789",
        "OPENAI_API_KEY=${NBILITY_API_KEY}": "sk-nb-0123456789",  # a line above
        'OPENAI_BASE_URL="https://${GATEWAY_HOST}/v1"': "https://gw.example.com/v1",  # environ
        "WITH_DEFAULT=${UNSET_VARIABLE:-fallback}": "fallback",
        "UNSET=${UNSET_VARIABLE}": "",
        "LITERAL='${NBILITY_API_KEY}'": "${NBILITY_API_KEY}",  # single quotes: as written
        "PRICE=$5": "$5",  # no braces: as written
    }
    env = load_dotenv(write(tmp_path / ".env", "\n".join(lines) + "\n"))
    assert env == {line.split("=", 1)[0]: want for line, want in lines.items()}


def test_template_renders_and_checks_columns() -> None:
    t = Template("Hi {name}, {{literal}} {n}")
    assert t.fields == ("name", "n")
    assert t.render({"name": "Ann", "n": 3}) == "Hi Ann, {literal} 3"
    assert t.render({"name": None, "n": 3}) is None
    with pytest.raises(ConfigError, match=r"\{missing\}"):
        Template("{missing}").check(["a"], "input x.csv")
    for bad in ("{a", "{}"):
        with pytest.raises(ConfigError):
            Template(bad)
    with pytest.raises(ConfigError, match="plain column name"):
        Template("{a:>5}").check(["a"], "input x.csv")  # a format spec
    Template("{a:>5}").check(["a:>5"], "input x.csv")  # a column named so
    Template("{a.b}").check(["a.b"], "input x.csv")  # a column named so
    with pytest.raises(ConfigError, match="cannot be picked"):
        Template("{a.b}").check(["x"], "input x.csv")


@pytest.mark.parametrize(("field", "value"), [
    ("{meta.lang}", "en"), ("{meta[lang]}", "en"), ("{meta[tags][1]}", "b"),
    ("{meta.size.w}", 3), ("{meta['lang']}", "en"), ('{meta["lang"]}', "en")])
def test_a_field_picking_part_of_a_column_says_how_to_flatten_it(field: str, value: object
                                                                  ) -> None:
    """{meta.lang} was refused saying parts of a value cannot be picked, not what to do. It
    names the pandas line that makes the part a column of its own, and the field to write
    then: the line does so, and the field names that column."""
    import json

    import pandas as pd

    df = pd.DataFrame({"meta": ['{"lang": "en", "tags": ["a", "b"], "size": {"w": 3}}']})
    with pytest.raises(ConfigError) as caught:
        Template(f"Say it in {field}").check(["meta"], "input x.csv")
    said = str(caught.value)
    assert said.startswith(f"prompt template: {field} picks part of column meta's values, "
                           "which a template cannot: flatten it into a column of its own first "
                           "(with pandas, for JSON text: df[")
    line = said.partition("for JSON text: ")[2].partition(") and write {")[0]
    exec(line, {"df": df, "json": json})  # the line the message gives
    name = said.partition(") and write {")[2].partition("}")[0]
    assert df[name][0] == value
    Template(f"Say it in {{{name}}}").check(df.columns, "input x.csv")


def test_the_flatten_hint_names_no_column_the_input_has() -> None:
    """The column the pandas line makes is named for the part (lang), but where the input
    has a column of that name the line would write over it: another name is given."""
    import json

    import pandas as pd

    df = pd.DataFrame({"meta": ['{"lang": "en"}'], "lang": ["kept"]})
    with pytest.raises(ConfigError) as caught:
        Template("Say it in {meta.lang}").check(list(df.columns), "input x.csv")
    said = str(caught.value)
    exec(said.partition("for JSON text: ")[2].partition(") and write {")[0],
         {"df": df, "json": json})
    name = said.partition(") and write {")[2].partition("}")[0]
    assert name == "meta_lang" and df[name][0] == "en" and df["lang"][0] == "kept"


def test_request_builder_body() -> None:
    from batchrunner.config import RequestConfig

    req = RequestConfig(model="m", system="sys", prompt="Q: {q}", max_tokens=7,
                        extra={"thinking": {"type": "enabled"}}, model_column="mc")
    b = RequestBuilder(req, ["q", "mc"], "input")
    body, prompt = b.build({"q": "why", "mc": None})
    assert prompt == "Q: why"
    assert body == {"model": "m", "max_tokens": 7, "thinking": {"type": "enabled"},
                    "messages": [{"role": "system", "content": "sys"},
                                 {"role": "user", "content": "Q: why"}]}
    body, _ = b.build({"q": "why", "mc": " other "})
    assert body is not None and body["model"] == "other"  # a cell's stray spaces dropped
    assert b.build({"q": None, "mc": None})[0] is None
    assert b.build({"q": "  ", "mc": None})[0] is None
    assert "empty" in b.build({"q": "  ", "mc": None})[1]
    two = RequestBuilder(RequestConfig(model="m", prompt="Q: {q} {r}"), ["q", "r"], "input")
    assert two.build({"q": " ", "r": "why"})[1] == "Q:   why"  # one column with text will do
    assert two.build({"q": "why", "r": ""})[1] == "Q: why "
    assert two.build({"q": " ", "r": ""}) == (None, "the prompt's columns are empty (q, r)")


def test_a_prompt_naming_no_column_is_refused_unless_the_rows_vary_otherwise() -> None:
    """The same prompt for every row is a mistake (a shell ate $text) unless each row sends
    something of its own: an image, a model, a body field."""
    from batchrunner.config import RequestConfig

    with pytest.raises(ConfigError, match="names no column"):
        RequestBuilder(RequestConfig(model="m", prompt="Describe it."), ["photo"], "input")
    for vary in ({"image_column": "photo"}, {"model_column": "photo"},
                 {"from_columns": {"seed": "n"}}):
        b = RequestBuilder(RequestConfig(model="m", prompt="Describe it.", **vary),
                           ["photo", "n"], "input")
        assert b.build({"photo": "https://example.com/1.png", "n": "3"})[0] is not None


def test_body_fields_from_columns() -> None:
    """from_columns sets body fields from each row: text read as the number or true/false a
    field takes (every CSV value is text), a null or blank value leaving the job's setting."""
    from batchrunner.config import RequestConfig

    req = RequestConfig(model="m", prompt="{q}", max_tokens=50, from_columns={
        "user": "who", "max_tokens": "budget", "temperature": "t", "logprobs": "lp"})
    b = RequestBuilder(req, ["q", "who", "budget", "t", "lp"], "input")
    assert set(b.needed_columns) == {"q", "who", "budget", "t", "lp"}
    body, _ = b.build({"q": "x", "who": "00123", "budget": "200", "t": "0.5", "lp": "TRUE"})
    assert body is not None
    assert (body["user"], body["max_tokens"], body["temperature"], body["logprobs"]) == (
        "00123", 200, 0.5, True)
    body, _ = b.build({"q": "x", "who": " ", "budget": None, "t": 1, "lp": False})
    assert body is not None and "user" not in body and body["max_tokens"] == 50
    assert body["temperature"] == 1 and body["logprobs"] is False
    body, _ = b.build({"q": "x", "who": 7, "budget": 300.0, "t": None, "lp": None})
    assert body is not None and body["user"] == "7" and body["max_tokens"] == 300  # as text
    body, _ = b.build({"q": "x", "who": 12.0, "budget": None, "t": None, "lp": None})
    assert body is not None and body["user"] == "12"
    assert type(body["max_tokens"]) is int
    for row, said in (({"budget": "lots"}, "column 'budget' holds 'lots', not an integer for "
                       "max_tokens"),
                      ({"budget": 2.5}, "not an integer"), ({"budget": True}, "not an integer"),
                      ({"t": "warm"}, "not a number for temperature"),
                      ({"t": "nan"}, "not a number"), ({"lp": "maybe"}, "not true or false")):
        got = b.build({"q": "x", "who": None, "budget": None, "t": None, "lp": None, **row})
        assert got[0] is None and said in got[1]
    with pytest.raises(ConfigError, match=r"from_columns user = 'nope': not a column of input"):
        RequestBuilder(RequestConfig(model="m", prompt="{q}", from_columns={"user": "nope"}),
                       ["q"], "input")


def test_body_fields_taking_objects_read_a_columns_json() -> None:
    """A CSV cell holding {"type": "enabled"} for ``thinking`` (or search_parameters, tools,
    ...) is sent as the object it writes, not as a string; ``stop`` and ``tool_choice`` take
    text as it is, JSON when it reads as what they take (a list of stop strings, a
    tool_choice object); a struct value is sent as it is."""
    from batchrunner.config import RequestConfig

    req = RequestConfig(model="m", prompt="{q}", from_columns={
        "thinking": "th", "search_parameters": "sp", "stop": "st", "tool_choice": "tc"})
    b = RequestBuilder(req, ["q", "th", "sp", "st", "tc"], "input")
    body, _ = b.build({"q": "x", "th": '{"type": "enabled"}', "sp": {"mode": "on"},
                       "st": '["\\n\\n", "END"]', "tc": "auto"})
    assert body is not None
    assert (body["thinking"], body["search_parameters"], body["stop"], body["tool_choice"]) == (
        {"type": "enabled"}, {"mode": "on"}, ["\n\n", "END"], "auto")
    body, _ = b.build({"q": "x", "th": None, "sp": None, "st": "END", "tc": '{"type": "none"}'})
    assert body is not None and body["stop"] == "END" and body["tool_choice"] == {"type": "none"}
    for stop in ("[END]", "[/INST]", "{", "[1, 2]", '{"a": 1}'):  # stop strings, as they are
        body, _ = b.build({"q": "x", "th": None, "sp": None, "st": stop, "tc": None})
        assert body is not None and body["stop"] == stop
    for row, said in (({"th": "enabled"}, "column 'th' holds 'enabled', not a JSON object or "
                       "array for thinking"), ({"th": "7"}, "not a JSON object or array")):
        got = b.build({"q": "x", "th": None, "sp": None, "st": None, "tc": None, **row})
        assert got[0] is None and said in got[1]


def test_from_columns_is_checked_before_anything_is_sent(tmp_path: Path) -> None:
    base = {"input": str(tmp_path / "in.csv"), "prompt": "{q}", "model": "m",
            "output": str(tmp_path / "out")}
    job = load_job(None, {**base, "from_columns": {"user": "who"}})
    assert job.request.from_columns == {"user": "who"}
    assert job.request.settings()["from_columns"] == {"user": "who"}
    assert "from_columns" not in load_job(None, base).request.settings()  # fingerprints kept
    with pytest.raises(ConfigError, match=r"^--from-column: 'model' cannot come from a column: "
                                          r"use model_column"):
        load_job(None, {**base, "from_columns": {"model": "m"}})
    with pytest.raises(ConfigError, match=r"^--from-column: 'max_token' is not a request field; "
                                          r"did you mean 'max_tokens'\?"):
        load_job(None, {**base, "from_columns": {"max_token": "m"}})
    # A gateway's own field is taken as it is.
    assert load_job(None, {**base, "from_columns": {"x_tag": "t"}}).request.from_columns
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[output]\ndir = "out"\n[request]\nmodel = "m"\n'
        'prompt = "{q}"\n[request.from_columns]\nseed = 3\n')
    with pytest.raises(ConfigError, match=r"\[request\] from_columns must be a table of body "
                                          r'field = "column" pairs'):
        load_job(tmp_path / "job.toml", {})


def test_a_streaming_job_asks_for_the_usage_chunk_unless_it_says_otherwise() -> None:
    from batchrunner.config import RequestConfig

    def options(extra: dict[str, object]) -> object:
        req = RequestConfig(model="m", prompt="{q}", stream=True, extra=extra)
        body = RequestBuilder(req, ["q"], "input").build({"q": "why"})[0]
        assert body is not None and body["stream"] is True
        return body.get("stream_options")

    assert options({}) == {"include_usage": True}
    assert options({"stream_options": {"include_obfuscation": False}}) == {
        "include_obfuscation": False, "include_usage": True}
    assert options({"stream_options": {"include_obfuscation": False, "include_usage": False}}
                   ) == {"include_obfuscation": False, "include_usage": False}
    # Saying only that no usage is wanted sends none, for endpoints that refuse the field.
    assert options({"stream_options": {"include_usage": False}}) is None


def test_retryable_statuses() -> None:
    for s in (408, 409, 429, 500, 502, 503, 504, 529):
        assert is_retryable_status(s)
    for s in (400, 401, 403, 404, 422):
        assert not is_retryable_status(s)


@given(st.integers(1, 50), st.one_of(st.none(), st.floats(0, 500)))
def test_backoff_bounds(attempt: int, retry_after: float | None) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=30.0, max_retry_after_s=120.0)
    w = backoff(attempt, policy, retry_after, random.Random(attempt))
    assert 0 <= w <= max(30.0, min(retry_after or 0, 120.0))
    if retry_after is not None:
        assert w >= min(retry_after, 120.0)


def test_backoff_zeroed_for_tests() -> None:
    assert backoff(5, RetryPolicy(base_s=0)) == 0.0


def _o(key: str, status: str, t: float, content: str = "") -> Outcome:
    return Outcome(key=key, status=status, content=content, finished_at=t)


def test_latest_prefers_newest_ok_and_never_a_later_failure() -> None:
    table = outcomes_table([
        _o("a", "failed", 1), _o("a", "ok", 2, "first"), _o("a", "failed", 3),
        _o("b", "failed", 1), _o("b", "failed", 2, "second"),
        _o("c", "ok", 1, "old"), _o("c", "ok", 5, "new"),
    ])
    rows = {r["key"]: r for r in latest(table).to_pylist()}
    assert rows["a"]["status"] == "ok" and rows["a"]["content"] == "first"
    assert rows["b"]["content"] == "second"
    assert rows["c"]["content"] == "new"


def test_journal_segments_round_trip_and_compact(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    w = JournalWriter(j.directory, "run1")
    for i in range(5):
        w.add(_o(str(i), "ok", float(i)))
        w.flush()
    assert len(j.segments()) == 5
    (j.directory / ".seg-x.parquet.tmp-1").write_bytes(b"junk")
    assert len(j.remove_temp_files()) == 1
    j.compact("run1")
    assert len(j.segments()) == 1
    assert sorted(j.read()["key"].to_pylist()) == ["0", "1", "2", "3", "4"]
    mode = j.segments()[0].stat().st_mode & 0o777
    assert mode == 0o600


def test_the_journal_reserve_is_held_freed_and_tidied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import batchrunner.journal as journal_module

    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate here: no reserve is held")
    j = Journal(tmp_path)
    j.create()
    w = JournalWriter(j.directory, "run1")
    assert w.reserve(1 << 20)
    [held] = j.directory.glob(".reserve-*")
    assert held.stat().st_size == 1 << 20 and held.name == ".reserve-run1-w0"
    w.add(Outcome(key="a", status="ok", finished_at=1.0))
    w.flush()  # the last write frees it
    assert not held.exists() and len(j.read()) == 1
    # A disk without many times its size free holds none.
    monkeypatch.setattr(journal_module, "RESERVE_FREE_TIMES", 10**12)
    assert not JournalWriter(j.directory, "run2").reserve(1 << 20)
    assert not list(j.directory.glob(".reserve-*"))
    # A killed run's is removed by the next run's (or report's) tidying.
    (j.directory / ".reserve-run3-w0").write_bytes(b"x")
    j.remove_temp_files()
    assert not list(j.directory.glob(".reserve-*")) and len(j.segments()) == 1


def test_unreadable_segment_is_refused(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.create()
    (j.directory / "seg-bad-w0-000000.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(JournalError, match="cannot be read"):
        j.read()


@pytest.mark.anyio
async def test_token_bucket_goes_into_debt_for_big_requests() -> None:
    bucket = TokenBucket(rate=1000.0, capacity=100.0)
    await bucket.acquire(500)  # bigger than the bucket: let through, level goes negative
    assert bucket.level < 0
    bucket.adjust(450)
    assert bucket.level <= 100.0


@pytest.mark.anyio
async def test_limiter_pause_holds_new_requests() -> None:
    lim = Limiter(None, None)
    lim.pause(0.05)
    t = time.monotonic()
    await lim.acquire(1)
    assert time.monotonic() >= t  # returns after the pause; no wall-clock bound asserted
    with anyio.fail_after(5):
        await lim.acquire(1)


def test_runs_use_uvloop_unless_asked_for_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchrunner.cli import event_loop_options
    from batchrunner.eventloop import loop_factory

    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv("BATCHRUNNER_EVENT_LOOP", raising=False)
    assert loop_factory() is uvloop.new_event_loop
    assert event_loop_options() == {"loop_factory": uvloop.new_event_loop}
    monkeypatch.setenv("BATCHRUNNER_EVENT_LOOP", "asyncio")
    assert loop_factory() is None
    assert event_loop_options() == {}


def test_log_progress_keeps_a_line_every_period_while_no_row_finishes(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from batchrunner import progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(progress, "utc_timestamp", lambda: "2026-11-30T02:00:01Z")
    log = progress.LogProgress("nightly", every_s=30.0)
    log.start(20_000, 1_000)
    counts = progress.Counts(ok=1_500, tokens=12_345, cost_usd=0.25)
    now[0] += 10
    log.update(counts, 500)  # rows finish; no line before 30 s
    now[0] += 25
    log.update(counts, 0)  # the runner's once-a-second call: 35 s since the start
    now[0] += 31
    counts.in_flight = 64
    log.update(counts, 0)  # and nothing has finished for 56 s
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "2026-11-30T02:00:01Z nightly: started, 19,000 of 20,000 rows to do; a line every 30 s",
        "2026-11-30T02:00:01Z nightly: 1,500/20,000 (7 %) rows  ok=1,500 failed=0 retrying=0 "
        "tokens=12,345 cost=$0.2500",
        "2026-11-30T02:00:01Z nightly: 1,500/20,000 (7 %) rows  ok=1,500 failed=0 retrying=0 "
        "tokens=12,345 cost=$0.2500  (no row finished for 56 s; 64 requests in flight)",
    ]
    now[0] += 30
    counts.in_flight, counts.retrying = 0, 3  # rows waiting out their backoff: not hung
    log.update(counts, 0)
    assert capsys.readouterr().err.endswith(
        "(no row finished for 86 s; 0 requests in flight, 3 rows waiting to retry)\n")
    # A job held back by its own limits (--rpm 1, a minute a row) names them: the line said
    # only that nothing finished.
    now[0] += 30
    counts.retrying, counts.job_limits = 0, progress.job_limits(1, None)
    log.update(counts, 0)
    assert capsys.readouterr().err.endswith(
        "(no row finished for 116 s; 0 requests in flight; the job's limits: 1 request a "
        "minute)\n")
    assert progress.job_limits(0.5, 150_000) == "0.50 requests, 150,000 tokens a minute"
    assert progress.job_limits(None, None) == ""
    # A rerun with nothing to do promises no line every 30 s: its summary follows at once.
    progress.LogProgress("nightly", every_s=30.0).start(20_000, 20_000)
    assert capsys.readouterr().err == (
        "2026-11-30T02:00:01Z nightly: started, 0 of 20,000 rows to do\n")
    # While the endpoint is away, the outage says why no row finishes: the line said it
    # twice, "(no connection to the endpoint for 30 s; ...)  (no row finished for 116 s; ...)".
    now[0] += 30
    counts.unreachable_s, counts.outage_s, counts.connect_wait = 30.0, 300.0, True
    log.update(counts, 0)
    assert capsys.readouterr().err.endswith(
        "cost=$0.2500 (no connection to the endpoint for 30 s; the job waits 5 min for it to "
        "come back, then stops)\n")
    counts.unreachable_s = 0.0
    counts.retrying = 0
    monkeypatch.undo()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", progress.utc_timestamp())
    counts.resumed = True  # earlier runs' rows in ok=, this run's tokens and cost
    assert progress._postfix(counts).endswith(
        "retrying=0 this run: tokens=12,345 cost=$0.2500")


def test_a_run_ended_by_an_exception_says_how_in_job_json() -> None:
    from batchrunner.errors import OutputError
    from batchrunner.runner import _why

    assert _why(KeyboardInterrupt()) == "interrupted"
    assert _why(BaseExceptionGroup("tg", [asyncio.CancelledError()])) == "interrupted"
    assert _why(ExceptionGroup("tg", [OutputError("cannot write x\nmore")])) == (
        "ended by an error: cannot write x")
    assert _why(RuntimeError("internal detail")) == "ended by an error: RuntimeError"


def test_run_lock_is_skipped_where_flock_is_not_supported_and_fails_loudly_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    from batchrunner.errors import OutputError
    from batchrunner.io import RunLock

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with RunLock(tmp_path) as lock:  # NFS: the run goes on, unguarded
        assert not lock.held and lock.unsupported

    def denied(fd: int, op: int) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fcntl, "flock", denied)
    with pytest.raises(OutputError, match="cannot lock it"), RunLock(tmp_path):
        pass


@pytest.mark.parametrize(("extra", "stream", "named"), [
    ({"enable_thinking": True}, False, ["enable_thinking"]),
    ({"enable_thinking": True}, True, []),
    ({"enable_thinking": False}, False, []),
    ({"extra_body": {"google": {"thinking_config": {"thinking_budget": 6000}}}}, False,
     ["extra_body.google.thinking_config"]),
    ({"extra_body": "not a table"}, False, []),
    ({"thinking": {"type": "enabled"}}, False, []),  # Claude's works either way
    # The OpenAI SDK's extra_body={"google": ...} puts it at the body's top level.
    ({"google": {"thinking_config": {"include_thoughts": True}}}, False,
     ["google.thinking_config"]),
])
def test_thinking_settings_that_need_streaming_are_warned_about(
        extra: dict[str, object], stream: bool, named: list[str]) -> None:
    from batchrunner.config import RequestConfig
    from batchrunner.template import request_warnings

    warnings = request_warnings(RequestConfig(extra=extra, stream=stream))
    assert [w.split()[1] for w in warnings] == named
    assert all("stream = true" in w for w in warnings)
    # A batch row's body: the same fields, at its top level.
    from batchrunner.template import body_warnings

    in_body = body_warnings({**extra, **({"stream": True} if stream else {})})
    assert [w.split()[2] for w in in_body] == named
    assert all(w.endswith('set "stream": true in the body') for w in in_body)


@pytest.mark.parametrize(("settings", "said"), [
    # A -thinking Gemini variant gives its reasoning only in a stream.
    ({"model": "gemini-2.5-flash-thinking"}, ["gives its reasoning (reasoning_content) only"]),
    ({"model": "gemini-2.5-flash-thinking-8192", "stream": True}, []),
    ({"model": "gemini-3-pro-preview-thinking-low"}, ["gives its reasoning"]),
    ({"model": "gemini-2.5-flash-nothinking"}, []),
    ({"model": "gemini-2.5-flash"}, []),
    # reasoning_effort is ignored on a -thinking model with max_tokens set.
    ({"model": "gemini-2.5-flash-thinking", "stream": True, "max_tokens": 500,
      "reasoning_effort": "low"}, ["reasoning_effort works with a -thinking model only"]),
    ({"model": "gemini-2.5-flash-thinking", "stream": True, "reasoning_effort": "low"}, []),
    # Qwen's settings beside a parameters object go inside it on gateways that take one.
    ({"model": "qwen3-omni-flash", "temperature": 0, "parameters": {"enable_search": True}},
     ["temperature is sent at the body's top level"]),
    ({"model": "qwen3-omni-flash", "temperature": 0, "top_p": 0.5, "parameters": {}},
     ["temperature, ", "top_p are sent at the body's top level"]),
    ({"model": "qwen3-omni-flash", "temperature": 0}, []),  # no parameters: the usual shape
    ({"model": "gpt-4o", "temperature": 0, "parameters": {}}, []),
    # OpenAI's reasoning models refuse max_tokens: every row of such a job was answered 400
    ({"model": "o4-mini", "max_tokens": 300}, ["max_tokens is refused by OpenAI for o4-mini"]),
    ({"model": "gpt-5.2", "max_tokens": 300}, ["set max_completion_tokens in "]),
    ({"model": "openai/o3-mini-2025-01-31", "max_tokens": 300}, ["a reasoning model"]),
    ({"model": "gpt-5-chat-latest", "max_tokens": 300}, []),
    ({"model": "gpt-4o", "max_tokens": 300}, []),
    ({"model": "o4-mini"}, []),
    # ... and a temperature other than 1 (unless reasoning_effort is "none", as GPT-5.1 takes)
    ({"model": "o3", "temperature": 0.2}, ["temperature 0.2 is refused by OpenAI for o3",
                                           "Only the default (1) value is supported"]),
    ({"model": "gpt-5.2", "temperature": 0}, ["does not support 0 with this model"]),
    ({"model": "gpt-5.2", "temperature": 0, "reasoning_effort": "none"}, []),
    ({"model": "o3", "temperature": 1}, []),
    ({"model": "gpt-5-chat-latest", "temperature": 0.2}, []),
])
def test_settings_a_gateway_would_ignore_are_warned_about(settings: dict[str, object],
                                                          said: list[str]) -> None:
    from batchrunner.config import RequestConfig
    from batchrunner.template import body_warnings, request_warnings

    in_body = " | ".join(body_warnings(settings))
    assert all(part in in_body for part in said) and bool(in_body) == bool(said), in_body
    fields = {k: v for k, v in settings.items() if k not in ("reasoning_effort", "parameters")}
    extra = {k: v for k, v in settings.items() if k in ("reasoning_effort", "parameters")}
    job = " | ".join(request_warnings(RequestConfig(**fields, extra=extra)))
    assert all(part in job for part in said) and bool(job) == bool(said), job
    if "reasoning_effort works" in job:
        assert "[request.extra] reasoning_effort" in job and "[request] max_tokens" in job
    if "parameters" in extra and said:
        assert "move it into [request.extra] parameters" in job or "move them" in job


@pytest.mark.parametrize(("extra", "said"), [
    ({"temprature": 0.2}, ["[request.extra] temprature looks like a typo of temperature"]),
    ({"top-p": 0.5}, ["[request.extra] top-p looks like a typo of top_p"]),
    ({"resposne_format": {"type": "json_object"}}, ["typo of response_format"]),
    ({"enable_thinkng": True}, ["typo of enable_thinking"]),
    # Servers' own fields near one of OpenAI's are no typos: vLLM's, OpenRouter's, Groq's.
    ({"top_k": 20, "min_tokens": 5, "top_a": 0.1, "models": ["a", "b"],
      "reasoning_format": "parsed", "search_options": {"forced_search": True}}, []),
    ({"x_gateway_tag": "nightly"}, []),  # near no field: a gateway's own, sent as it is
])
def test_a_body_field_that_looks_like_a_typo_is_warned_about(
        extra: dict[str, object], said: list[str]) -> None:
    from batchrunner.config import RequestConfig
    from batchrunner.template import body_warnings, request_warnings

    job = request_warnings(RequestConfig(model="gpt-4o-mini", extra=extra))
    assert len(job) == len(said) and all(part in w for part, w in zip(said, job, strict=True))
    assert all(w.endswith("(sent as written: OpenAI refuses every row so, other servers "
                          "ignore it)") for w in job)
    in_body = body_warnings({"model": "gpt-4o-mini", "messages": [], **extra})
    assert len(in_body) == len(said)
    assert all(w.startswith("the body's ") for w in in_body)


@pytest.mark.parametrize(("extra_body", "named"), [
    # The ai-nebula reference's Grok search in Python, extra_body={"search_parameters": ...},
    # written into a job as it reads: the OpenAI SDK sends those fields at the top level
    ({"search_parameters": {"mode": "auto"}}, ["search_parameters"]),
    ({"google": {"thinking_config": {"thinking_budget": 6000}}}, []),  # Gemini's, read there
    ({"google": {}, "enable_thinking": True, "parameters": {"enable_search": True}},
     ["enable_thinking", "parameters"]),
    ({}, []),
])
def test_fields_inside_extra_body_a_gateway_does_not_read_are_warned_about(
        extra_body: dict[str, object], named: list[str]) -> None:
    # A reader of the seeds' Python examples writes extra_body = { search_parameters = ... }
    # in [request.extra]: the body then carried {"extra_body": {"search_parameters": ...}},
    # which a gateway reads nothing of but Gemini's google settings (Grok searched nothing,
    # with no error), and no warning said so
    from batchrunner.config import RequestConfig
    from batchrunner.template import body_warnings, request_warnings

    job = [w for w in request_warnings(RequestConfig(extra={"extra_body": extra_body},
                                                     stream=True)) if "extra_body" in w]
    body = [w for w in body_warnings({"extra_body": extra_body, "stream": True})
            if "extra_body" in w]
    if not named:
        assert job == body == []
        return
    assert len(job) == len(body) == 1, (job, body)
    assert job[0].startswith(f"[request.extra] extra_body holds {' and '.join(named)}, sent "
                             "inside extra_body, where gateways read Gemini's google settings "
                             "only"), job
    assert "move " in job[0] and "to [request.extra] itself" in job[0], job
    assert body[0].startswith(f"the body's extra_body holds {' and '.join(named)}"), body
    assert "to the body's top level" in body[0], body


def test_the_bar_and_its_counts_agree_on_every_redraw(
        capsys: pytest.CaptureFixture[str]) -> None:
    from batchrunner import progress

    bar = progress.TqdmProgress("job")
    bar.start(300, 0)
    counts = progress.Counts()
    for _ in range(300):  # every row ok: the bar's count and ok= must match
        counts.ok += 1
        bar.update(counts, 1)
        time.sleep(0.001)
    bar.close()
    drawn = re.findall(r"(\d+)/300 .*?ok=(\d+)", capsys.readouterr().err.replace("\r", "\n"))
    assert len(drawn) >= 2
    assert [done for done, ok in drawn if done != ok] == []


def test_a_number_refused_is_shown_as_given() -> None:
    """--rpm 0 is read as a float: the message says 0, not 0.0."""
    from batchrunner.config import load_job
    from batchrunner.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_job(None, {"input": "x.csv", "output": "out", "requests_per_minute": 0.0})
    assert str(e.value).endswith("--rpm must be greater than 0, got 0")
    with pytest.raises(ConfigError) as e:
        load_job(None, {"input": "x.csv", "output": "out", "temperature": 2.0000001})
    assert str(e.value).endswith("--temperature must be at most 2, got 2.0000001")


def test_the_bar_counts_are_short_and_leave_out_zeros() -> None:
    from batchrunner.progress import Counts, _postfix

    c = Counts(ok=1_065, tokens=35_944, cost_usd=0.0123, projected_usd=0.05)
    assert _postfix(c, compact=True) == "ok=1,065 tokens=35.9k cost=$0.0123 (~$0.05 job)"
    c.failed, c.retrying, c.rate_limited, c.tokens = 3, 2, 7, 2_500_000
    assert _postfix(c, compact=True) == ("ok=1,065 failed=3 retrying=2 429s=7 tokens=2.5M "
                                         "cost=$0.0123 (~$0.05 job)")



def test_the_progress_shows_a_cost_under_a_cent_as_the_reports_do() -> None:
    """Ten gpt-4o-mini rows cost $0.000144: the progress said cost=$0.0001, and $0.0000 for
    the first three, where the summary and the reports say $0.000144."""
    from batchrunner.progress import Counts, _postfix

    c = Counts(ok=10, tokens=240, cost_usd=0.000144)
    assert _postfix(c).endswith("cost=$0.000144")
    assert _postfix(c, compact=True).endswith("cost=$0.000144")
    c.cost_usd, c.cost_unknown = 0.0000432, 1
    assert _postfix(c, compact=True).endswith("cost=$0.0000432+?")
    c.cost_usd = 1234.56789
    assert _postfix(c).endswith("cost=$1,234.57+?")


@pytest.mark.anyio
async def test_lifting_a_pause_lets_its_waiters_go_at_once() -> None:
    from batchrunner.limiter import Limiter

    limiter = Limiter(None, None)
    limiter.pause(3600.0)
    let_go: list[int] = []

    async def wait(i: int) -> None:
        await limiter.acquire(1)
        let_go.append(i)

    with anyio.fail_after(5):  # an hour without lift_pause
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(wait, i)
            await anyio.sleep(0.05)
            assert let_go == [] and limiter.paused_s > 3000
            limiter.lift_pause()
    assert sorted(let_go) == [0, 1, 2] and limiter.paused_s == 0.0


def test_a_pause_by_a_429_is_shown_so_a_quiet_run_does_not_look_stuck() -> None:
    from batchrunner.limiter import Limiter
    from batchrunner.progress import Counts, _postfix

    limiter = Limiter(None, None)
    assert limiter.paused_s == 0.0
    limiter.pause(90.0)
    c = Counts(ok=5, rate_limited=4, paused_s=limiter.paused_s)
    assert 89.0 < c.paused_s < 100.0  # the pause, and a little jitter
    c.paused_s = 90.4
    assert _postfix(c, compact=True) == "ok=5 429s=4 paused=90s tokens=0 cost=$0.0000"
    assert _postfix(c).endswith("429s=4 (new requests held 90 s more by a 429's retry-after)")
    limiter.pause(1.0, "a 503's retry-after")  # ends before the 429's: the 429's it stays
    assert limiter.paused_by == "a 429's retry-after"
    limiter.pause(200.0, "a 503's retry-after")  # a gateway's, the server behind it away
    c.paused_by = limiter.paused_by
    assert _postfix(c).endswith("429s=4 (new requests held 90 s more by a 503's retry-after)")
    limiter.lift_pause()
    limiter.observe({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0"})
    assert limiter.paused_s > 0.5 and limiter.paused_by == "an x-ratelimit-remaining-* header of 0"
    c.paused_s = 0.5  # under a second: not worth a word
    assert "paused" not in _postfix(c, compact=True) and "held" not in _postfix(c)


@pytest.mark.parametrize(("value", "shown"), [
    (0, "0"), (950, "950"), (35_944, "35.9k"), (999_499, "999k"), (999_950, "1M"),
    (2_500_000, "2.5M"), (0.25, "0.25"), (12.0, "12"), (-1_500, "-1.5k"), (4.2e12, "4200B"),
])
def test_compact_numbers_carry_into_the_next_unit(value: float, shown: str) -> None:
    from batchrunner.progress import short_number

    assert short_number(value) == shown


def test_body_fields_in_request_extra_are_warned_about_as_sent() -> None:
    """[request.extra] is sent over the job's own fields, so a temperature or max_tokens
    written there (as a gateway's guide lists them among the body's fields) is what the
    gateway ignores, and is named where it was written; it was left out of the checks."""
    from batchrunner.config import RequestConfig
    from batchrunner.template import request_warnings

    qwen = request_warnings(RequestConfig(model="qwen3-omni-flash", extra={
        "temperature": 0.7, "parameters": {"enable_search": True}}))
    assert len(qwen) == 1 and qwen[0].startswith(
        "[request.extra] temperature is sent at the body's top level"), qwen
    gemini = request_warnings(RequestConfig(model="gemini-2.5-flash-thinking", stream=True,
                                            extra={"max_tokens": 500,
                                                   "reasoning_effort": "low"}))
    assert len(gemini) == 1 and "leave [request.extra] max_tokens out" in gemini[0], gemini
    # and the job's own field, where [request.extra] has none
    assert request_warnings(RequestConfig(model="qwen3-omni-flash", temperature=0.7,
                                          extra={"parameters": {}}))[0].startswith(
        "[request] temperature is sent")


def test_paths_are_shown_whole_from_the_root_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From / (a systemd timer's, a container's working directory), every path is below it:
    the summary said "results: tmp/.../results.parquet", which a log read later shows as a
    path relative to some other directory. Below any other directory, relative as before."""
    from batchrunner.runner import _show

    out = tmp_path / "out" / "results.parquet"
    monkeypatch.chdir("/")
    assert _show(out) == str(out)
    monkeypatch.chdir(tmp_path)
    assert _show(out) == str(Path("out") / "results.parquet")


def test_an_image_that_cannot_be_read_names_the_path_read_and_why(tmp_path: Path) -> None:
    """The row's failure said only "image 'sub/pic 1.png' cannot be read": not which path was
    tried (a relative one is the input's folder's, which the README does not say) nor why."""
    from batchrunner.config import RequestConfig

    builder = RequestBuilder(RequestConfig(model="m", prompt="Say {text}", image_column="img"),
                             ["text", "img"], "input", base_dir=tmp_path)
    body, reason = builder.build({"text": "hi", "img": "sub/pic 1.png"})
    assert body is None
    assert reason == (f"image 'sub/pic 1.png' cannot be read (No such file or directory: "
                      f"{tmp_path / 'sub' / 'pic 1.png'}; a relative path is read from the "
                      "input file's folder)")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pic 1.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    body, _ = builder.build({"text": "hi", "img": "sub/pic 1.png"})
    assert body is not None
    assert body["messages"][0]["content"][1]["image_url"]["url"].startswith(
        "data:image/png;base64,")


def test_text_other_than_ascii_is_estimated_by_its_utf8_bytes() -> None:
    """Chinese text at four characters a token: 3,900 characters were some 1,000 tokens where
    tokenizers count about 0.6 to 1 a character, and a budget was passed threefold before the
    replies told. Four bytes of UTF-8 a token: three quarters of one a character."""
    from batchrunner.template import estimate_tokens

    assert estimate_tokens("") == 0
    assert estimate_tokens("word " * 100) == 125  # ASCII: four characters a token, as ever
    assert estimate_tokens("中文" * 1000) == 1500  # 6,000 bytes
    assert estimate_tokens("café") == 2  # five bytes
    assert estimate_tokens("\udcff") == 1  # a lone surrogate (bytes not UTF-8 in a name)
