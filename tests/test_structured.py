"""Structured output: replies validated against the job's JSON schema, spread into columns."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from batchrunner.cli import main
from batchrunner.config import load_job
from batchrunner.errors import ConfigError
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, RunSummary, format_summary, run_job
from batchrunner.simulator import Simulator, SimulatorConfig
from batchrunner.status import format_status
from batchrunner.structured import (
    StructuredOutput,
    dangling_ref,
    strict_warnings,
    structured_output,
    unfenced,
)
from tests.servers import run_job_file
from tests.test_batch_file import _toml

FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=4), progress="none",
                  handle_signals=False)
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number"},
        "spam": {"type": "boolean"},
        "label": {"enum": ["billing", "bug", "other"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["summary", "score", "confidence", "spam", "label", "tags"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA}}


def test_check_names_the_failure() -> None:
    so = StructuredOutput(FORMAT)
    assert so.check("not json")[0] == "invalid_json"  # type: ignore[index]
    assert so.check("[1]")[0] == "invalid_json"  # type: ignore[index]
    bad = so.check(json.dumps({"summary": "x", "score": 9, "confidence": 0.5, "spam": False,
                               "label": "bug", "tags": []}))
    assert bad is not None and bad[0] == "schema_mismatch" and "score" in bad[1]
    assert StructuredOutput({"type": "json_object"}).check('{"a": 1}') is None
    assert so.check('{"summary": "x"}')[1].startswith("the reply: ")  # type: ignore[index]
    with pytest.raises(ConfigError, match="not valid"):
        StructuredOutput({"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": 5}}})


def test_a_reply_that_is_one_json_code_block_is_read_as_its_json() -> None:
    """Claude, Gemini and others asked for JSON through a gateway that drops response_format
    answer in a Markdown block: that is the JSON asked for (it was failed and paid for again)."""
    so = StructuredOutput(FORMAT)
    good = json.loads(GOOD)
    for reply in (f"```json\n{GOOD}\n```", f"\n  ```JSON\n{GOOD}```\n", f"```\n{GOOD}\n```",
                  f"```json\r\n{json.dumps(good, indent=2)}\r\n```",
                  # One block among words, as Claude answers through such a gateway.
                  f"Here it is:\n```json\n{GOOD}\n```", f"```json\n{GOOD}\n```\nAnything else?",
                  f"Sure! Here is the review as JSON:\n\n```\n{GOOD}\n```\n\nHope it helps."):
        assert so.check(reply) is None, reply
        assert so.spread([reply], [True])["json_score"].to_pylist() == [3], reply
    # Not one block of JSON: another language, two blocks, no block's end.
    for reply in (f"Here it is:\n```python\n{GOOD}\n```", f"```python\n{GOOD}\n```",
                  f"```json\n{GOOD}\n```\n```json\n{GOOD}\n```", f"```json\n{GOOD}",
                  f"```json {GOOD}```", "```json\n{\"summary\": \n```"):
        assert so.check(reply)[0] == "invalid_json", reply  # type: ignore[index]
    # A block of JSON that breaks the schema is still checked against it.
    bad = so.check("```json\n" + GOOD.replace('"score": 3', '"score": 9') + "\n```")
    assert bad is not None and bad[0] == "schema_mismatch"
    assert StructuredOutput({"type": "json_object"}).check('```json\n{"a": 1}\n```') is None


@pytest.mark.anyio
async def test_a_json_code_block_reply_is_an_ok_row_with_its_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fenced = f"```json\n{GOOD}\n```"

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.json_response({
            "id": "c1", "object": "chat.completion", "model": "claude-sonnet-4",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": fenced}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50}})

    (tmp_path / "ticket.schema.json").write_text(json.dumps(SCHEMA))
    pd.DataFrame({"id": [1, 2], "text": ["a", "b"]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "claude-sonnet-4"\nprompt = "Classify: {text}"\n'
        'schema_file = "ticket.schema.json"\n[output]\ndir = "out"\n')
    s = await run_job_file(handler, tmp_path / "job.toml", FAST)
    assert (s.ok, s.failed) == (2, 0), s.error_examples
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["json_score"].tolist() == [3, 3] and df["json_label"].tolist() == ["bug", "bug"]
    assert df["content"].tolist() == [GOOD, GOOD]  # the JSON, the fence dropped
    assert unfenced("  ```json\n {\"a\": 1}\n```\n") == '{"a": 1}'
    assert unfenced('{"a": 1}') is None and unfenced("```python\n1\n```") is None


@pytest.mark.anyio
async def test_a_response_format_a_column_sets_is_checked_for_each_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[request.from_columns] response_format: each row's replies went unchecked (a reply
    that broke its schema was ok, a fenced one kept its fence). Each row is checked against
    its own now, as a batch row is; one that cannot be checked is not sent."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    replies = {"a": GOOD, "b": '{"summary": "x"}', "c": f"```json\n{GOOD}\n```", "d": "plain"}
    sent = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        sent.append(body)
        return web.json_response({
            "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": replies[body["messages"][-1]["content"]]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50}})

    pd.DataFrame({"id": [1, 2, 3, 4, 5], "text": ["a", "b", "c", "d", "a"],
                  "fmt": [json.dumps(FORMAT)] * 3 + ["", json.dumps(
                      {"type": "json_schema", "json_schema": {"schema": SCHEMA}})]}
                 ).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "{text}"\n'
        '[request.from_columns]\nresponse_format = "fmt"\n[output]\ndir = "out"\n')
    s = await run_job_file(handler, tmp_path / "job.toml", FAST)
    assert (s.ok, s.failed) == (3, 2), s.error_examples
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["status"].tolist() == ["ok", "failed", "ok", "ok", "failed"]
    assert df["error_type"].tolist()[1::3] == ["schema_mismatch", "invalid_row"]
    assert df["content"].tolist()[2:4] == [GOOD, "plain"]  # the fence dropped; no format
    assert df["error_message"][4].startswith("not sent: the body's response_format: json_schema "
                                             "has no name")
    assert len(sent) == 4  # the row that cannot be checked was not sent


@pytest.mark.parametrize(("system", "prompt", "warned"), [
    (None, "Classify: {text}", True),
    ("You are a classifier.", "Classify {text} as bug or billing", True),
    ("Answer in JSON.", "Classify: {text}", False),
    (None, "Classify {text}; give a Json object", False),
    (None, "Classify: {json}", True),  # a column's name is not what is sent
])
def test_json_object_without_the_word_json_in_the_messages_is_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], system: str | None, prompt: str,
        warned: bool) -> None:
    """OpenAI answers every json_object request whose messages do not say "JSON" 400 (the run
    stopped after its first rows; a simulator rehearsal passed): said before the run."""
    pd.DataFrame({"text": ["a"], "json": ["b"]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\n'
        f"prompt = {json.dumps(prompt)}\n"
        + (f"system = {json.dumps(system)}\n" if system else "")
        + '[request.extra]\nresponse_format = { type = "json_object" }\n'
        '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
    assert main(["estimate", str(tmp_path / "job.toml")]) == 0
    said = ("warning: response_format is json_object, but neither the prompt template nor the "
            "system message says \"JSON\", and OpenAI refuses every such request (400: "
            "'messages' must contain the word 'json') unless the row's own text says it — add "
            "it (\"Answer in JSON: ...\")")
    assert (said in capsys.readouterr().out) is warned


def test_a_strict_schema_openai_refuses_is_warned_about_naming_where(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OpenAI's strict mode refuses every request whose schema has an object without
    additionalProperties false, or a property not in required (as Pydantic writes them): the
    night's run stopped after its first rows while a rehearsal passed. Said before the run."""
    address = {"type": "object", "properties": {"city": {"type": "string"},
                                                "zip": {"type": ["string", "null"]}},
               "required": ["city"], "additionalProperties": False}
    loose = {**SCHEMA, "properties": {**SCHEMA["properties"], "address": address},
             "required": [*SCHEMA["required"], "address"]}

    def warned(fmt: dict[str, Any] | None, tools: list[dict[str, Any]] | None = None) -> list[str]:
        pd.DataFrame({"text": ["a"]}).to_csv(tmp_path / "in.csv", index=False)
        extra = {"response_format": fmt} if fmt else {}
        if tools:
            extra |= {"tools": tools, "tool_choice": "required"}
        (tmp_path / "job.toml").write_text(
            '[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\n'
            'prompt = "JSON for {text}"\n[request.extra]\n'
            + "".join(f"{k} = {_toml(v)}\n" for k, v in extra.items())
            + '[endpoint]\nsimulator = true\n[output]\ndir = "out"\n')
        assert main(["estimate", str(tmp_path / "job.toml")]) == 0
        return [line.removeprefix("  warning: ") for line in capsys.readouterr().out.splitlines()
                if "is strict" in line]

    rule = (", which OpenAI refuses every request for — set additionalProperties = false on "
            "each object and list each of its properties in required (an optional one's type a "
            "union with null), or leave strict out")
    strict = {"name": "t", "strict": True}
    assert warned({"type": "json_schema", "json_schema": {**strict, "schema": loose}}) == [
        "[request] response_format is strict, but the object at properties/address does not "
        "list 'zip' in required" + rule]
    assert warned({"type": "json_schema", "json_schema": {**strict, "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}}) == [
        "[request] response_format is strict, but the object at the top level does not set "
        "additionalProperties to false" + rule]
    assert warned(None, [{"type": "function", "function": {
        "name": "f", "strict": True, "parameters": {
            "type": "object", "properties": {"items": {"type": "array", "items": address}},
            "required": ["items"], "additionalProperties": False}}}]) == [
        "the parameters of the function 'f' is strict, but the object at "
        "properties/items/items does not list 'zip' in required" + rule]
    # Strict schemas OpenAI takes, and a loose one not asked to be strict: no warning.
    assert warned({"type": "json_schema", "json_schema": {**strict, "schema": SCHEMA}}) == []
    assert warned({"type": "json_schema", "json_schema": {"name": "t", "schema": loose}}) == []


def _tools(*names: str, parameters: object = SCHEMA) -> list[dict[str, object]]:
    return [{"type": "function", "function": {"name": n, "parameters": parameters}}
            for n in names]


def _calls(name: str, arguments: str) -> str:
    return json.dumps([{"id": "call_1", "type": "function",
                        "function": {"name": name, "arguments": arguments}}])


GOOD = json.dumps({"summary": "x", "score": 3, "confidence": 0.5, "spam": False,
                   "label": "bug", "tags": ["a"]})


def test_a_forced_function_has_its_arguments_checked() -> None:
    forced = {"type": "function", "function": {"name": "file_ticket"}}
    so = structured_output({"extra": {"tools": _tools("lookup", "file_ticket"),
                                      "tool_choice": forced}})
    assert so is not None and so.tool == "file_ticket" and so.column == "tool_calls"
    assert [c for _, c, _ in so.columns][:2] == ["json_summary", "json_score"]
    assert so.check_reply(None, _calls("file_ticket", GOOD)) is None
    bad = so.check_reply(None, _calls("file_ticket", GOOD.replace('"score": 3', '"score": 9')))
    assert bad is not None and bad[0] == "schema_mismatch" and bad[1].startswith("score:")
    error, message = so.check_reply(None, _calls("file_ticket", "{not json"))  # type: ignore[misc]
    assert error == "invalid_json"
    assert message.startswith("the arguments of file_ticket are not JSON (unexpected character")
    assert so.check_reply(None, _calls("file_ticket", "[]")) == (
        "invalid_json", "the arguments of file_ticket are JSON but not an object")
    assert so.check_reply(None, _calls("file_ticket", '{"summary": 1}'))[1].startswith(  # type: ignore[index]
        "the arguments of file_ticket: ")
    assert so.check_reply("plain text", None) == (
        "no_tool_call", "the reply did not call file_ticket")
    assert so.check_reply(None, _calls("lookup", GOOD))[0] == "no_tool_call"  # type: ignore[index]
    # spread into columns from the call's arguments, only for ok rows
    cols = so.spread([_calls("file_ticket", GOOD), _calls("file_ticket", GOOD), None],
                     [True, False, True])
    assert cols["json_score"].to_pylist() == [3, None, None]
    assert cols["json_tags"].to_pylist() == ['["a"]', None, None]


def test_which_tool_choices_force_a_function() -> None:
    one = {"tools": _tools("f")}
    assert structured_output({"extra": {**one, "tool_choice": "required"}}).tool == "f"  # type: ignore[union-attr]
    for choice in (None, "auto", "none"):
        assert structured_output({"extra": {**one, "tool_choice": choice}}) is None
    assert structured_output({"extra": {"tools": _tools("f", "g"),
                                        "tool_choice": "required"}}) is None
    # response_format wins: the content is checked, the calls are not
    fmt = structured_output({"response_format": FORMAT, "extra": {**one,
                                                                  "tool_choice": "required"}})
    assert fmt is not None and fmt.tool is None and fmt.column == "content"
    assert fmt.check_reply(None, _calls("f", "{}")) is None  # only a tool call: nothing to check
    # response_format text (the API's default) checks nothing, a forced function's calls included
    assert structured_output({"response_format": {"type": "text"},
                              "extra": {**one, "tool_choice": "required"}}) is None
    with pytest.raises(ConfigError, match="must be text, json_object or json_schema, got 'xml'"):
        structured_output({"response_format": {"type": "xml"}})
    # a function without parameters takes a JSON object
    bare = structured_output({"extra": {"tools": [{"type": "function",
                                                   "function": {"name": "ping"}}],
                                        "tool_choice": "required"}})
    assert bare is not None and bare.columns == []
    assert bare.check_reply(None, _calls("ping", "{}")) is None
    assert bare.check_reply(None, _calls("ping", "[]"))[0] == "invalid_json"  # type: ignore[index]


def test_a_response_format_beside_a_forced_function_is_warned_about() -> None:
    """Every reply to a forced function is its call, which a response_format does not check:
    such a job ran with every row ok, nothing checked and its json_ columns empty. Said
    before the run now (the checks are the response_format's, as before)."""
    forced = {"tools": _tools("f"), "tool_choice": {"type": "function", "function": {"name": "f"}}}
    so = structured_output({"response_format": FORMAT, "extra": forced})
    assert so is not None and so.tool is None and so.warning == (
        "[request.extra] tool_choice forces a call to 'f', so every reply is that call, not the "
        "JSON [request] response_format asks for: no reply would be checked nor fill the json_ "
        "columns — give one of them (a forced function's arguments fill the columns as a "
        "schema's would)")
    so = structured_output({"response_format": FORMAT, "schema_file": "t.json", "extra": forced})
    assert so is not None and "not the JSON [request] schema_file asks for" in str(so.warning)
    so = structured_output({"response_format": FORMAT, **forced}, body=True)
    assert so is not None and str(so.warning).startswith(
        "the body's tool_choice forces a call to 'f', so every reply is that call, not the JSON "
        "the body's response_format asks for")
    # A call left to the model, or one of several functions: no warning.
    for choice in ("auto", "required"):
        tools = _tools("f") if choice == "auto" else _tools("f", "g")
        so = structured_output({"response_format": FORMAT,
                                "extra": {"tools": tools, "tool_choice": choice}})
        assert so is not None and so.warning is None


def test_a_tool_choice_that_cannot_be_met_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tool_choice names the function 'nope', which is "
                                          r"not among the tools \('f'\)"):
        structured_output({"extra": {"tools": _tools("f"), "tool_choice": {
            "type": "function", "function": {"name": "nope"}}}})
    with pytest.raises(ConfigError, match="tool_choice names no function"):
        structured_output({"extra": {"tools": _tools("f"), "tool_choice": {"type": "function"}}})
    with pytest.raises(ConfigError, match="the parameters of the function 'f' must be a JSON"):
        structured_output({"extra": {"tools": _tools("f", parameters="x"),
                                     "tool_choice": "required"}})


def test_a_tool_choice_that_is_a_functions_name_alone_is_refused() -> None:
    """``tool_choice = "f"``: the API answers every row 400 ("Invalid value"), and the run
    would not have checked the calls as f's: refused, saying what to write."""
    with pytest.raises(ConfigError) as job_error:
        structured_output({"extra": {"tools": _tools("f", "g"), "tool_choice": "g"}})
    assert str(job_error.value) == (
        "[request.extra] tool_choice is the name 'g' alone, which APIs refuse (they take "
        "\"none\", \"auto\" or \"required\"): to make every reply call it, write "
        "tool_choice = { type = \"function\", function = { name = \"g\" } }")
    with pytest.raises(ConfigError, match=r"^the body's tool_choice is the name 'f' alone.*"
                                          r"write \"tool_choice\": \{\"type\": \"function\", "
                                          r"\"function\": \{\"name\": \"f\"\}\}$"):
        structured_output({"tools": _tools("f"), "tool_choice": "f"}, body=True)
    # A server's own word that names no function is sent as it is (Mistral's "any").
    assert structured_output({"extra": {"tools": _tools("f", "g"), "tool_choice": "any"}}) is None


def test_a_ref_found_to_point_nowhere_only_when_reached_fails_the_row_not_the_run() -> None:
    # Below a part with an $id of its own, what a pointer is read against is not told apart
    # before a reply reaches it.
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$id": "https://example.com/a.json",
                                               "$ref": "#/$defs/missing"}}}}})
    assert so.check('{"a": 1}') == (
        "schema_error", "the schema cannot be checked: its $ref '/$defs/missing' points "
                        "nowhere")
    assert so.check('{"b": 1}') is None  # not reached


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def test_a_ref_that_points_nowhere_is_refused_before_anything_is_sent() -> None:
    """Every reply that reaches it would fail schema_error, paid for: the job, a batch row and
    a forced function's parameters are refused instead, naming the $ref."""
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
              "definitions": {"A": {"type": "string"}}}
    said = "its $ref '#/$defs/A' points to nothing in the schema"
    with pytest.raises(ConfigError, match=rf"^\[request\] response_format: {re.escape(said)}"):
        structured_output({"response_format": _schema(schema)})
    with pytest.raises(ConfigError, match=rf"^the body's response_format: {re.escape(said)}"):
        structured_output({"response_format": _schema(schema)}, body=True)
    with pytest.raises(ConfigError, match=rf"parameters of the function 'f': {re.escape(said)}"):
        structured_output({"extra": {"tools": _tools("f", parameters=schema),
                                     "tool_choice": "required"}})


def test_refs_that_point_somewhere_are_taken() -> None:
    assert dangling_ref({"$ref": "#/definitions/T", "definitions": {"T": {
        "type": "object", "properties": {"a/b": {"type": "string"},
                                         "c": {"$ref": "#/definitions/T/properties/a~1b"},
                                         "d": {"$ref": "#/anyOf/1"},
                                         "e": {"$ref": "#/%24defs/E"}}}},
        "anyOf": [{"type": "string"}, {"type": "integer"}], "$defs": {"E": True}}) is None
    # a "$ref" in data (an enum's, a default's) refers to nothing; an anchor is not a pointer
    assert dangling_ref({"enum": [{"$ref": "#/nowhere"}], "default": {"$ref": "#/x"},
                         "properties": {"a": {"$ref": "#anchor"}}}) is None
    assert dangling_ref({"items": [{"$ref": "#/$defs/A"}], "$defs": {}}) == "#/$defs/A"


def test_a_schema_error_says_where_and_what() -> None:
    def said(schema: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as e:
            StructuredOutput(_schema(schema))
        return str(e.value).removeprefix("[request] response_format: the JSON schema is not "
                                         "valid: ")

    types = "(its types: array, boolean, integer, null, number, object, string)"
    assert said({"type": "obj"}) == f"at type: 'obj' is not a type JSON Schema has {types}"
    assert said({"properties": {"n": {"type": ["int", "null", "float"]}}}) == (
        f"at properties/n/type: 'int', 'float' are not types JSON Schema has {types}")
    # a property named "type" holds a schema
    assert said({"properties": {"type": 5}}) == (
        "at properties/type: 5 is not of type 'object', 'boolean'")
    assert said({"required": "name"}) == "at required: 'name' is not of type 'array'"


def test_checks_asked_for_alike_have_one_key() -> None:
    named = {**FORMAT, "json_schema": {**FORMAT["json_schema"], "name": "other", "strict": True}}
    assert StructuredOutput(FORMAT).key == StructuredOutput(named).key
    assert StructuredOutput(FORMAT).key != StructuredOutput.for_function("f", SCHEMA).key
    assert (StructuredOutput.for_function("f", None).key
            == StructuredOutput.for_function("f", {}).key
            != StructuredOutput({"type": "json_object"}).key)


def test_a_batch_rows_settings_are_named_as_its_bodys_fields() -> None:
    """A batch row's body carries its own settings: an error names the body's field, in JSON,
    where a job's names its [request] table, in TOML."""
    body = {"tools": _tools("f"), "tool_choice": {"type": "function"}}
    with pytest.raises(ConfigError) as job_error:
        structured_output({"extra": body})
    with pytest.raises(ConfigError) as row_error:
        structured_output(body, body=True)
    assert str(job_error.value).startswith("[request.extra] tool_choice names no function")
    assert str(row_error.value) == (
        "the body's tool_choice names no function: write \"tool_choice\": {\"type\": "
        "\"function\", \"function\": {\"name\": \"...\"}}")
    with pytest.raises(ConfigError, match=r"^the body's response_format type must be text"):
        structured_output({"response_format": {"type": "xml"}}, body=True)
    with pytest.raises(ConfigError, match=r"^the body's response_format: the JSON schema is"):
        structured_output({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": 5}}}}, body=True)
    so = structured_output({"tools": _tools("f"), "tool_choice": "required"}, body=True)
    assert so is not None and so.tool == "f"
    assert structured_output({"extra": {"tools": _tools("f"), "tool_choice": "required"}},
                             body=True) is None  # a body's tools are at its top level


def test_a_tool_choice_with_tools_from_a_column_is_taken(tmp_path: Path) -> None:
    """A call asked for with no tools is refused (test_bad_input); a column's tools are the
    row's own, so a job that sets them so is not."""
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\nprompt = "{text}"\n'
        '[request.extra]\ntool_choice = "required"\n[request.from_columns]\ntools = "own"\n'
        '[output]\ndir = "out"\n')
    assert load_job(tmp_path / "job.toml", {}).request.extra == {"tool_choice": "required"}
    with pytest.raises(ConfigError, match=r"tool_choice asks for a tool call, but the job has "
                                          r"no tools"):
        load_job(tmp_path / "job.toml", {"from_columns": {}})


def test_a_json_schema_with_no_name_is_refused_and_one_openai_refuses_warned_about() -> None:
    """OpenAI and vLLM answer every request 400 for a json_schema with no name: a job, and a
    batch row, are refused before they are sent. One with a space OpenAI refuses, and vLLM
    takes: warned about before the run, as a strict schema OpenAI refuses is."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    with pytest.raises(ConfigError, match=r"^\[request\] response_format: json_schema has no "
                                          r"name, for which APIs refuse every request"):
        structured_output({"response_format": {"type": "json_schema",
                                               "json_schema": {"schema": schema}}})
    with pytest.raises(ConfigError, match=r"^the body's response_format: json_schema has no "
                                          r"name.*\"json_schema\": \{\"name\": \"answer\""):
        structured_output({"response_format": {"type": "json_schema",
                                               "json_schema": {"schema": schema}}}, body=True)
    for name in ("", 5):
        with pytest.raises(ConfigError, match=rf"json_schema name {re.escape(repr(name))} would "
                                              r"have every request refused: give it a name"):
            structured_output({"response_format": {"type": "json_schema", "json_schema": {
                "name": name, "schema": schema}}})
    for name, fixed in (("support ticket", "support_ticket"), ("x" * 65, "x" * 64)):
        settings = {"response_format": {"type": "json_schema", "json_schema": {
            "name": name, "schema": schema}}}
        assert structured_output(settings) is not None  # sent: vLLM takes it
        assert strict_warnings(settings) == [
            f"[request] response_format: json_schema name {name!r} is one OpenAI refuses every "
            f"request for: a name there is 1 to 64 letters, digits, _ and - (as {fixed!r}); a "
            "server without that rule (vLLM) takes it"]
    for name in ("ticket", "Ticket_v2-1", "x" * 64):
        settings = {"response_format": {"type": "json_schema", "json_schema": {
            "name": name, "schema": schema}}}
        assert structured_output(settings) is not None and strict_warnings(settings) == []
    # A function's checks take its name as theirs, whatever it is.
    assert StructuredOutput.for_function("lookup.v2", schema).tool == "lookup.v2"


def test_a_schema_files_name_is_one_apis_take(tmp_path: Path) -> None:
    """The name a schema file gives its json_schema: its file's, made of what a name may hold
    (a letter such as é is not, which OpenAI refused every request for); a wrapper's own
    name that OpenAI refuses is warned about, naming the file setting."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    (tmp_path / "étiquette de ticket.schema.json").write_text(json.dumps(schema))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\nprompt = "{text}"\n'
        'schema_file = "étiquette de ticket.schema.json"\n[output]\ndir = "out"\n')
    fmt = load_job(tmp_path / "job.toml", {}).request.response_format
    assert fmt is not None and fmt["json_schema"]["name"] == "_tiquette_de_ticket"
    (tmp_path / "étiquette de ticket.schema.json").write_text(json.dumps(
        {"name": "Support Ticket", "strict": True, "schema": schema}))
    fmt = load_job(tmp_path / "job.toml", {}).request.response_format
    assert fmt is not None and fmt["json_schema"]["name"] == "Support Ticket"
    warning, strict = strict_warnings({"schema_file": "étiquette de ticket.schema.json",
                                        "response_format": fmt})
    assert "is strict, but" in strict  # its schema lacks additionalProperties = false
    assert warning.startswith("[request] schema_file: json_schema name 'Support Ticket' is one "
                              "OpenAI refuses every request for"), warning
    assert "(as 'Support_Ticket')" in warning


def test_parameters_json_schema_cannot_check_are_a_warning_and_an_object_check() -> None:
    """A provider may take a schema JSON Schema does not (Gemini's upper-case types): the run
    goes on, checking only that the arguments are an object."""
    so = structured_output({"extra": {"tools": _tools("f", parameters={"type": "OBJECT"}),
                                      "tool_choice": "required"}})
    assert so is not None and so.warning is not None and so.columns == []
    assert "'f' are not a JSON schema batchrunner can check" in so.warning
    assert so.check_reply(None, _calls("f", '{"a": 1}')) is None
    assert so.check_reply(None, _calls("f", "[1]"))[0] == "invalid_json"  # type: ignore[index]


def test_flat_tools_and_a_flat_tool_choice_are_read_too() -> None:
    flat = [{"type": "function", "name": "file_ticket", "parameters": SCHEMA}]
    for choice in ({"type": "function", "name": "file_ticket"}, "required",
                   {"type": "function", "function": {"name": "file_ticket"}}):
        so = structured_output({"extra": {"tools": flat, "tool_choice": choice}})
        assert so is not None and so.tool == "file_ticket" and len(so.columns) == 6


def test_allowed_tools_required_with_one_function_forces_it() -> None:
    """OpenAI's allowed_tools: mode required over one listed function forces that function
    (its parameters come from tools); over several, or mode auto, none is forced."""
    def choice(mode: str, *names: str) -> dict[str, object]:
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": [
            {"type": "function", "function": {"name": n}} for n in names]}}

    tools = _tools("lookup", "file_ticket")
    so = structured_output({"extra": {"tools": tools, "tool_choice": choice("required",
                                                                             "file_ticket")}})
    assert so is not None and so.tool == "file_ticket" and len(so.columns) == 6
    with_search = choice("required", "file_ticket")
    with_search["allowed_tools"]["tools"].append({"type": "web_search"})  # type: ignore[index]
    for other in (choice("required", "lookup", "file_ticket"), choice("auto", "file_ticket"),
                  {"type": "allowed_tools"}, with_search):
        assert structured_output({"extra": {"tools": tools, "tool_choice": other}}) is None
    with pytest.raises(ConfigError, match="names the function 'nope', which is not among"):
        structured_output({"extra": {"tools": tools, "tool_choice": choice("required", "nope")}})


def test_a_call_without_arguments() -> None:
    bare = StructuredOutput.for_function("ping", None)
    calls = json.dumps([{"type": "function", "function": {"name": "ping"}}])
    assert bare.check_reply(None, calls) is None
    assert bare.check_reply(None, _calls("ping", "")) is None
    with_params = StructuredOutput.for_function("file_ticket", SCHEMA)
    assert with_params.check_reply(None, _calls("file_ticket", "")) == (
        "invalid_json", "the call to file_ticket has no arguments")
    # arguments sent as an object are read as its JSON
    obj = json.dumps([{"type": "function", "function": {"name": "file_ticket",
                                                        "arguments": json.loads(GOOD)}}])
    assert with_params.check_reply(None, obj) is None


def ticket_job(tmp_path: Path, texts: list[str], schema: object = SCHEMA) -> Path:
    """A job file classifying ``texts`` (ids 0, 1, ...) with ``schema`` as its schema_file,
    its results in out/."""
    (tmp_path / "ticket.schema.json").write_text(json.dumps(schema))
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(tmp_path / "in.csv",
                                                                  index=False)
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Classify: {text}"\n'
        'schema_file = "ticket.schema.json"\n[output]\ndir = "out"\n')
    return tmp_path / "job.toml"


@pytest.mark.anyio
async def test_schema_job_spreads_typed_columns(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    texts = [f"ticket {i}: the app crashes" for i in range(12)]
    texts[4] += " [[sim:corrupt*1]]"
    ticket_job(tmp_path, texts)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url})
        s = await run_job(job, FAST)
    assert s.ok == 12, s
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert str(df["json_score"].dtype) == "int64"
    assert str(df["json_confidence"].dtype) == "float64"
    assert str(df["json_spam"].dtype) == "bool"
    assert df["json_label"].isin(["billing", "bug", "other"]).all()
    assert df["json_tags"].map(lambda t: isinstance(json.loads(t), list)).all()
    assert df["json_score"].between(1, 5).all()


@pytest.mark.anyio
async def test_json_object_reply_that_is_not_json_fails_without_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The simulator only answers in JSON when asked; without response_format in the body the
    # reply is prose, which a job asking for JSON must record as invalid_json, billed, once.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": range(3), "text": ["a", "b", "c"]}).to_csv(inp, index=False)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model": "gpt-4o-mini", "base_url": sim.base_url,
                              "output": str(tmp_path / "out")})
        from dataclasses import replace

        job = replace(job, request=replace(job.request,
                                           extra={"response_format": {"type": "text"}},
                                           response_format={"type": "json_object"}))
        s = await run_job(job, FAST)
        assert sim.stats()["requests"] == 3
    assert s.failed == 3 and s.error_types == {"invalid_json": 3}
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (df["attempts"] == 1).all() and df["cost_usd"].notna().all()
    assert df["content"].str.startswith("Echo").all()


def test_report_shows_cost_billed_for_failed_rows(tmp_path: Path) -> None:
    import json as _json

    from batchrunner.journal import outcomes_table
    from batchrunner.pricing import PriceBook
    from batchrunner.records import Outcome
    from batchrunner.report import build_report

    table = outcomes_table([
        Outcome(key="a", status="ok", cost_usd=0.25, prompt_tokens=1, completion_tokens=1),
        Outcome(key="b", status="failed", error_type="schema_mismatch", cost_usd=0.5,
                prompt_tokens=1, completion_tokens=1),
    ])
    report = build_report(table, prices=PriceBook(), job={}, wall_s=1.0)
    assert report["cost_usd"] == 0.75 and report["cost_failed_usd"] == 0.5
    assert _json.dumps(report)


async def _echo(tmp_path: Path, replies: list[str], *, schema: object,
                fmt: str = "parquet", output: str = "out", stream: bool = False,
                max_tokens: int | None = None) -> tuple[RunSummary, pd.DataFrame]:
    """Run a job whose rows' prompts are the replies a server answers with, as its content (a
    prompt of JSON with a "message" key: that message, and its "finish_reason", "logprobs" and
    "reasoning_tokens"); streamed, the content comes in pieces of 4 characters, then the refusal, if
    any, with the logprobs. ``max_tokens``: the job's, where it sets one."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        said = body["messages"][-1]["content"]
        message: dict[str, object] = {"role": "assistant", "content": said}
        finish, logprobs = "stop", None
        if said.startswith("{\"message\""):
            spec = json.loads(said)
            message, finish = spec["message"], spec.get("finish_reason", "stop")
            logprobs = spec.get("logprobs")
        usage: dict[str, object] = {"prompt_tokens": 10, "completion_tokens": 5,
                                    "total_tokens": 15}
        if said.startswith("{\"message\"") and (reasoned := spec.get("reasoning_tokens")):
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoned}
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-1", "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish,
                             "logprobs": logprobs}],
                "usage": usage})
        text = str(message.get("content") or "")
        deltas: list[dict[str, object]] = [{"role": "assistant", "content": None,
                                            "refusal": None}]
        deltas += [{"content": text[i:i + 4]} for i in range(0, len(text), 4)]
        if message.get("refusal"):
            deltas.append({"content": None, "refusal": message["refusal"]})
        chunks = [{"id": "c", "model": body["model"], "choices": [
            {"index": 0, "delta": d, "finish_reason": None,
             "logprobs": logprobs if d.get("refusal") else None}]}
            for d in deltas]
        chunks.append({"id": "c", "model": body["model"], "choices": [
            {"index": 0, "delta": {}, "finish_reason": finish}]})
        chunks.append({"id": "c", "model": body["model"], "choices": [], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for c in chunks:
            await resp.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "reply": r}) + "\n"
                           for i, r in enumerate(replies)))
    (tmp_path / "s.schema.json").write_text(json.dumps(schema))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.jsonl"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "{reply}"\nschema_file = "s.schema.json"\n'
        f'stream = {str(stream).lower()}\n'
        + ("" if max_tokens is None else f"max_tokens = {max_tokens}\n")
        + f'[output]\ndir = "{output}"\nformat = "{fmt}"\n')
    s = await run_job_file(handler, tmp_path / "job.toml", FAST)
    out = tmp_path / output / f"results.{fmt}"
    df = (pd.read_parquet(out) if fmt == "parquet" else pd.read_json(out, lines=True)
          if fmt == "jsonl" else pd.read_csv(out))
    return s, df.set_index("id")


@pytest.mark.anyio
async def test_an_integer_beyond_64_bits_fails_its_row_and_leaves_the_column_typed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # JSON Schema's integer has no bounds, an int64 column has: such a reply once ended the
    # run's results with an OverflowError (or made the column text, then failed its write)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    s, df = await _echo(tmp_path, ['{"n": 1}', '{"n": 18446744073709551615}',
                                   '{"n": 99999999999999999999999}', '{"n": 3.0}'],
                        schema=schema)
    assert (s.ok, s.failed) == (2, 2)
    assert pq.read_schema(tmp_path / "out" / "results.parquet").field("json_n").type == "int64"
    assert df["json_n"].tolist()[::3] == [1, 3]
    assert df["error_type"].tolist()[1:3] == ["schema_mismatch"] * 2
    assert df["error_message"][1] == ("n: an integer beyond 64 bits, which json_n, a 64-bit "
                                      "integer column, cannot hold")
    assert df["cost_usd"].notna().all()


def test_a_recorded_integer_beyond_64_bits_is_a_null_of_its_column() -> None:
    # rows recorded ok before the check above: the column keeps its type in every batch
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}}}}})
    for big in ("18446744073709551615", "99999999999999999999999"):
        cols = so.spread(['{"n": 2, "x": 1}', f'{{"n": {big}, "x": {big}}}'], [True, True])
        assert cols["json_n"].type == pa.int64() and cols["json_n"].to_pylist() == [2, None]
        assert cols["json_x"].type == pa.float64()
        assert cols["json_x"].to_pylist() == [1.0, float(big)]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_refusal_is_a_failed_row_that_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    # A model that will not give the structured output answers message.refusal, content null:
    # that was an invalid_json row ("not JSON (Input is a zero-length ...)"), the why lost
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    # Its log probabilities (asked for) are the refusal's tokens, logprobs.refusal: they were
    # dropped, the logprobs column null.
    tokens = [{"token": t, "logprob": -0.25, "bytes": list(t.encode()), "top_logprobs": []}
              for t in ("I'm", " sorry")]
    refused = json.dumps({"message": {"role": "assistant", "content": None,
                                      "refusal": "I'm sorry, I can't help with that."},
                          "logprobs": {"content": None, "refusal": tokens}})
    s, df = await _echo(tmp_path, ['{"n": 1}', refused], stream=stream, schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert (s.ok, s.failed) == (1, 1) and s.error_types == {"refusal": 1}
    assert df["error_message"][1] == "the model refused: I'm sorry, I can't help with that."
    assert json.loads(df["logprobs"][1]) == tokens and pd.isna(df["logprobs"][0])
    assert df["cost_usd"][1] > 0 and df["attempts"][1] == 1 and pd.isna(df["json_n"][1])
    assert df["json_n"][0] == 1


@pytest.mark.anyio
async def test_a_reply_cut_at_max_tokens_says_so_in_its_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # JSON cut off by max_tokens failed as "the reply is not JSON (unexpected end of data
    # ...)": the row did not say why, and --retry-failed, which the summary offers, would cut
    # it again at the same limit
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cut = json.dumps({"message": {"role": "assistant", "content": '{"n": 1, "note": "a lo'},
                      "finish_reason": "length"})
    wrong = json.dumps({"message": {"role": "assistant", "content": '{"n": "x"}'},
                        "finish_reason": "length"})
    s, df = await _echo(tmp_path, ['{"n": 1}', cut, wrong, '{"n": "y"}'], schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert (s.ok, s.failed) == (1, 3)
    assert df["error_type"].tolist()[1:] == ["invalid_json", "schema_mismatch",
                                             "schema_mismatch"]
    for row in (1, 2):
        assert df["error_message"][row].startswith("the reply was cut at max_tokens "
                                                   "(finish_reason=length): "), df["error_message"]
        assert df["finish_reason"][row] == "length"
    assert df["error_message"][1].endswith(")") and "not JSON" in df["error_message"][1]
    assert not df["error_message"][3].startswith("the reply was cut")


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_empty_reply_says_it_is_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    # An empty reply failed as "the reply is not JSON (Input is a zero-length, empty document:
    # line 1 column 1 (char 0))", the parser's words; one cut at max_tokens before its answer
    # began (a thinking model whose reasoning used all of them: content null) said no more
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def reply(content: str | None, finish: str, reasoned: int = 0) -> str:
        return json.dumps({"message": {"role": "assistant", "content": content},
                           "finish_reason": finish, "reasoning_tokens": reasoned})

    s, df = await _echo(tmp_path, [
        reply(None, "length", 512), reply("", "length"), reply("", "stop"), reply(" \n", "stop"),
        reply(None, "stop")], stream=stream, schema={"type": "object"})
    assert s.failed == 5 and set(df["error_type"]) == {"invalid_json"}
    cut = ("the reply was cut at max_tokens before its answer began (finish_reason=length): it "
           "is empty, as a thinking model's is when its reasoning uses all of max_tokens")
    assert df["error_message"].tolist() == [
        f"{cut} (this one reasoned for 512 tokens)", cut,
        *["the reply is empty (no content)"] * 3]
    assert s.length_cut == 2


@pytest.mark.anyio
@pytest.mark.parametrize("others", [False, True], ids=["all_cut", "others_failed"])
async def test_status_says_of_rows_failed_for_a_cut_what_the_summary_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, others: bool) -> None:
    # Structured replies cut at max_tokens failed their rows: the run's summary named the
    # command that sends them with a larger max_tokens, but `batchrunner status` said only
    # "rerun with --retry-failed", which sends them at the same one: cut again, paid again
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def cut(content: str) -> str:
        return json.dumps({"message": {"role": "assistant", "content": content},
                           "finish_reason": "length"})

    replies = ['{"n": 1}', cut('{"n": 1, "note": "a lo'), cut('{"n": "x"}')]
    if others:
        replies.append('{"n": "y"}')  # failed, not cut: --retry-failed is what it needs
    s, _ = await _echo(tmp_path, replies, max_tokens=50, schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert (s.ok, s.failed, s.length_cut) == (1, len(replies) - 1, 2)
    assert "--max-tokens 100 --force --rerun-where" in s.cut_command
    summary = format_summary(s).splitlines()
    status = format_status(tmp_path / "out").splitlines()
    (warning,) = [line for line in summary if line.startswith("  warning: 2 rows cut at ")]
    assert warning in status and s.cut_command in warning, status
    assert s.cut_failed == 2
    advice = summary[-1].strip()
    assert advice.startswith("the 2 rows that failed for being cut at max_tokens need a larger "
                             "one, as the warning of the rows cut says (--retry-failed would "
                             "send them at the same max_tokens"), advice
    assert status[-1].strip().startswith(advice)
    retries = [line for line in status if line.endswith(" --retry-failed")]
    if others:
        assert advice.endswith("; once they are answered, rerun with --retry-failed to send the "
                               "other failed rows again")
        assert retries == [status[-1]]
    else:
        assert status[-1].strip() == advice and not retries


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_claudes_and_geminis_own_finish_reasons_through_a_gateway_read_as_openais(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    # Gateways that map Claude's stop_reason only in part (one-api's forks) pass on its
    # "max_tokens", "end_turn" and "tool_use", and some Gemini's "MAX_TOKENS" and "STOP": a
    # Claude reply cut at max_tokens failed as "not JSON" with no word of the cut (the summary
    # offering --retry-failed, which cuts it again), counted in no cut warning, and missed by
    # --rerun-where "finish_reason == 'length'"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def reply(content: str, finish: str) -> str:
        return json.dumps({"message": {"role": "assistant", "content": content},
                           "finish_reason": finish})

    s, df = await _echo(tmp_path, [
        reply('{"n": 1}', "end_turn"), reply('{"n": 1, "note": "a lo', "max_tokens"),
        reply('{"n": 2}', "STOP"), reply('{"n": 3, "no', "MAX_TOKENS"),
        reply('{"n": 4}', "stop_sequence")], stream=stream, schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert (s.ok, s.failed) == (3, 2)
    assert df["finish_reason"].tolist() == ["stop", "length", "stop", "length", "stop"]
    for row in (1, 3):
        assert df["error_message"][row].startswith("the reply was cut at max_tokens "
                                                   "(finish_reason=length): "), df["error_message"]
    assert s.length_cut == 2


@pytest.mark.parametrize("shape", ["json_schema", "response_format"])
def test_a_schema_file_in_openais_wrapper_is_read_as_the_schema_it_wraps(
        tmp_path: Path, shape: str) -> None:
    # Copied from OpenAI's documents, {"name", "strict": true, "schema"} (or the whole
    # response_format) was taken as the schema itself: every reply passed, no json_ columns
    # came, and the server was sent the wrapper as the schema
    spec = {"name": "ticket", "strict": True, "schema": SCHEMA}
    wrapped = spec if shape == "json_schema" else {"type": "json_schema", "json_schema": spec}
    (tmp_path / "t.schema.json").write_text(json.dumps(wrapped))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[request]\nmodel = "gpt-4o-mini"\nprompt = "{text}"\n'
        'schema_file = "t.schema.json"\n[output]\ndir = "out"\n')
    job = load_job(tmp_path / "job.toml", {})
    assert job.request.response_format == {"type": "json_schema", "json_schema": spec}
    so = structured_output({"response_format": job.request.response_format})
    assert so is not None and [c for _, c, _ in so.columns][:2] == ["json_summary", "json_score"]
    assert so.check('{"summary": "x"}')[0] == "schema_mismatch"  # type: ignore[index]
    (tmp_path / "t.schema.json").write_text(json.dumps({"type": "json_schema",
                                                        "json_schema": SCHEMA}))
    with pytest.raises(ConfigError, match=r"t\.schema\.json: a response_format needs"):
        load_job(tmp_path / "job.toml", {})


def test_a_schema_whose_top_level_is_an_array_takes_an_array() -> None:
    # vLLM, Ollama, llama.cpp constrain their output to any schema: every reply to one whose
    # top level is an array failed as "the reply is JSON but not an object", billed
    items = {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}}, "required": ["name"]}}
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "x", "schema": items}})
    assert so.check('[{"name": "a"}, {"name": "b"}]') is None
    assert so.check('[{"nom": "a"}]')[0] == "schema_mismatch"  # type: ignore[index]
    assert so.check('{"name": "a"}')[0] == "schema_mismatch"  # type: ignore[index]
    assert so.columns == [] and so.spread(['[{"name": "a"}]'], [True]) == {}
    nullable = {**items, "type": ["array", "null"]}
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "x", "schema": nullable}})
    assert so.check("null") is None and so.check("[]") is None
    either = {"type": ["object", "array"], "properties": {"n": {"type": "integer"}}}
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "x", "schema": either}})
    assert so.check("[1]") is None and so.check("{}") is None
    assert so.spread(["[1]", '{"n": 2}'], [True, True])["json_n"].to_pylist() == [None, 2]
    assert so.check('"a"')[0] == "schema_mismatch"  # type: ignore[index]
    # a schema that leaves the type out still wants an object, as one of type object does
    loose = {"properties": {"a": {"type": "string"}}}
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "x", "schema": loose}})
    assert so.check("[1]") == ("invalid_json", "the reply is JSON but not an object")


def test_pydantic_optional_and_nested_types_have_their_columns_type() -> None:
    # What Pydantic's model_json_schema() writes for Optional[int], a Literal or Enum in $defs
    # and a constrained float gave JSON text columns ("3", "null"-less text), not int64 etc.
    schema = {
        "type": "object", "title": "Ticket",
        "$defs": {"Level": {"enum": ["low", "high"], "title": "Level", "type": "string"},
                  "Price": {"type": "number", "minimum": 0}},
        "properties": {
            "count": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None,
                      "title": "Count"},
            "level": {"$ref": "#/$defs/Level", "description": "how urgent"},
            "price": {"anyOf": [{"$ref": "#/$defs/Price"}, {"type": "null"}]},
            "urgent": {"oneOf": [{"type": "boolean"}, {"type": "null"}]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
    }
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    assert [(c, t) for _, c, t in so.columns] == [
        ("json_count", pa.int64()), ("json_level", pa.string()), ("json_price", pa.float64()),
        ("json_urgent", pa.bool_()), ("json_either", pa.string())]
    replies = ['{"count": 3, "level": "low", "price": 2, "urgent": true, "either": 1}',
               '{"count": null, "price": null, "urgent": null, "either": "x"}']
    assert [so.check(r) for r in replies] == [None, None]
    assert {c: a.to_pylist() for c, a in so.spread(replies, [True, True]).items()} == {
        "json_count": [3, None], "json_level": ["low", None], "json_price": [2.0, None],
        "json_urgent": [True, None], "json_either": ["1", "x"]}


@pytest.mark.anyio
async def test_a_response_format_in_request_extra_is_checked_as_the_jobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway's guide shows response_format among the body fields, and its reader puts it
    in [request.extra], where it is sent as written: the replies are checked against it and
    spread into json_ columns as they are for [request] response_format (they were taken
    unchecked, with no json_ columns). Set in both places, it is refused before anything is
    sent: the body would carry one and the replies be checked against the other."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": range(3), "text": ["a", "b", "c"]}).to_csv(inp, index=False)
    (tmp_path / "ticket.schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\nid_column = "id"\n[request]\nmodel = "gpt-4o-mini"\n'
        'prompt = "Classify: {text}"\nschema_file = "ticket.schema.json"\n'
        '[request.extra]\nresponse_format = { type = "json_object" }\n[output]\ndir = "out"\n')
    with pytest.raises(ConfigError, match=r"\[request\] schema_file and \[request\.extra\] "
                                          r"response_format are both set"):
        load_job(tmp_path / "job.toml", {})
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model": "gpt-4o-mini", "base_url": sim.base_url,
                              "output": str(tmp_path / "out")})
        from dataclasses import replace

        job = replace(job, request=replace(job.request, extra={"response_format": FORMAT}))
        s = await run_job(job, FAST)
    assert s.ok == 3, s
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert str(df["json_score"].dtype) == "int64" and df["json_score"].between(1, 5).all()
    assert df["json_label"].isin(["billing", "bug", "other"]).all()


@pytest.mark.anyio
async def test_rerun_where_filters_on_the_json_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The morning after, a data team sends again the rows whose structured answer it doubts
    (a low score, a label of "other"): --rerun-where on a json_ column was refused as naming
    no column, though the results show it beside the outcome columns."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    ticket_job(tmp_path, [f"ticket {i}" for i in range(12)])
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url})
        assert (await run_job(job, FAST)).ok == 12
        df = pd.read_parquet(tmp_path / "out" / "results.parquet")
        low = df["id"][(df["json_score"] < 3) | (df["json_label"] == "other")].tolist()
        assert 0 < len(low) < 12, df[["json_score", "json_label"]]
        sent = sim.stats()["requests"]
        where = "json_score < 3 or `json_label` == 'other'"
        s = await run_job(job, RunOptions(rerun_where=where, retry=FAST.retry,
                                          progress="none", handle_signals=False))
        assert sim.stats()["requests"] - sent == len(low) and s.ok == 12
    again = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert again["id"][again["earlier_cost_usd"].notna()].tolist() == low


@pytest.mark.anyio
async def test_a_schema_whose_top_level_is_a_ref_has_its_objects_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """zod-to-json-schema given a name, and other generators, write the object as a
    definition the top level points to: its replies were checked, but no json_ column came,
    and nothing said why."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    schema = {"$ref": "#/definitions/Ticket", "definitions": {"Ticket": SCHEMA},
              "$schema": "http://json-schema.org/draft-07/schema#"}
    ticket_job(tmp_path, ["a", "b", "c"], schema)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(load_job(tmp_path / "job.toml", {"base_url": sim.base_url}), FAST)
    assert s.ok == 3, s.error_examples
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert str(df["json_score"].dtype) == "int64" and df["json_score"].between(1, 5).all()
    assert str(df["json_spam"].dtype) == "bool"
    assert df["json_label"].isin(["billing", "bug", "other"]).all()
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "t", "schema": {
        "$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {
            "type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}, "N": {
                "type": ["integer", "null"]}}}}})
    assert so.columns == [("n", "json_n", pa.int64())]
    assert so.check('{"n": "x"}')[0] == "schema_mismatch"  # type: ignore[index]
    assert so.check("[1]")[0] == "invalid_json"  # type: ignore[index]


@pytest.mark.anyio
async def test_a_schema_is_checked_by_the_draft_its_schema_keyword_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """zod-to-json-schema writes draft-07 (its "$schema" says so), where a tuple is "items": [...];
    older generators draft-04, where "exclusiveMinimum" is a boolean. Checked as 2020-12, such a
    schema was refused as not valid, and the night's job never ran."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "properties": {"size": {"type": "array", "minItems": 2, "maxItems": 2,
                                      "items": [{"type": "number"}, {"type": "string"}]}},
              "required": ["size"]}
    s, df = await _echo(tmp_path, ['{"size": [2.5, "cm"]}', '{"size": [2.5, 3]}'],
                        schema=schema)
    assert (s.ok, s.failed) == (1, 1), s.error_examples
    assert df["error_message"][1] == "size/1: 3 is not of type 'string'"
    assert json.loads(df["json_size"][0]) == [2.5, "cm"]
    old = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object", "properties": {
        "price": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}}
    so = StructuredOutput({"type": "json_schema", "json_schema": {"name": "p", "schema": old}})
    assert so.check('{"price": 0}')[0] == "schema_mismatch"  # type: ignore[index]
    assert so.check('{"price": 1}') is None
    assert so.columns == [("price", "json_price", pa.float64())]


@pytest.mark.anyio
async def test_an_enum_without_a_type_has_the_type_its_values_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``enum`` of numbers with no ``type`` beside it (``{"enum": [1, 2, 3]}``, as a
    priority or a rating is often written) had its json_ column as text ("1", "2"), which a
    ``--rerun-where "json_priority < 2"`` cannot compare with a number. Its column has the type
    its values share: integer, number or boolean (nullable with a null among them), text when
    they differ."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    schema = {"type": "object", "properties": {
        "priority": {"enum": [1, 2, 3]}, "weight": {"enum": [0.5, 1, 2]},
        "urgent": {"enum": [True, False]}, "stars": {"enum": [1, 2, None]},
        "mixed": {"enum": [1, "one"]}, "label": {"enum": ["a", "b"]}},
        "required": ["priority", "weight", "urgent", "stars", "mixed", "label"]}
    ticket_job(tmp_path, [f"ticket {i}" for i in range(6)], schema)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(load_job(tmp_path / "job.toml", {"base_url": sim.base_url}), FAST)
    assert s.ok == 6, s
    columns = pq.read_schema(tmp_path / "out" / "results.parquet")
    assert {f.name: f.type for f in columns if f.name.startswith("json_")} == {
        "json_priority": pa.int64(), "json_weight": pa.float64(), "json_urgent": pa.bool_(),
        "json_stars": pa.int64(), "json_mixed": pa.string(), "json_label": pa.string()}
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(df["json_priority"]) <= {1, 2, 3} and set(df["json_weight"]) <= {0.5, 1.0, 2.0}
    assert df["json_stars"].isna().any() and df["json_mixed"].isin(["1", "one"]).all()


@pytest.mark.anyio
async def test_one_json_object_among_words_is_read_and_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model asked for JSON through a gateway that does not hold it to the schema (Claude's
    json_schema through a gateway, whose guide only advises a lower temperature for
    consistency) may answer "Here is the JSON: {...}": the row failed as invalid_json, paid
    for, and only a --retry-failed, paid again, could give it an answer. The one JSON object
    or array among the words is read and checked against the schema (the row's content is
    that JSON), and so is the one JSON code block among words; a reply with two, or none, still
    fails, as does a block of another language among words."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    bad = GOOD.replace('"score": 3', '"score": 9')
    replies = {"0": f"Here is the JSON: {GOOD}",
               "1": f"Sure [as asked]!\n\n{json.dumps(json.loads(GOOD), indent=2)}\n\nAnything "
                    "else?",
               "2": f"Option one: {GOOD} or option two: {GOOD}",
               "3": f"Here it is: {bad}",
               "4": "I can't classify this ticket {sorry}.",
               "5": f"Here it is:\n```json\n{GOOD}\n```\nAnything else?",
               "6": f"Here it is:\n```python\n{GOOD}\n```"}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        row = body["messages"][-1]["content"].removeprefix("Classify: ")
        return web.json_response({
            "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": replies[row]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50}})

    s = await run_job_file(handler, ticket_job(tmp_path, list(replies)), FAST)
    assert (s.ok, s.failed) == (3, 4), s.error_examples
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("id")
    ok = df.loc[["0", "1", "5"]]
    assert list(df["status"]) == ["ok", "ok", "failed", "failed", "failed", "ok", "failed"]
    assert list(df.loc[["2", "3", "4", "6"], "error_type"]) == [
        "invalid_json", "schema_mismatch", "invalid_json", "invalid_json"]
    assert [json.loads(c) for c in ok["content"]] == [json.loads(GOOD)] * 3
    assert list(ok["json_score"]) == [3, 3, 3]
    assert list(ok["json_label"]) == ["bug", "bug", "bug"]
