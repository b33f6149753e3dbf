"""Structured output: check replies against the job's ``response_format``, spread them into columns.

With ``{"type": "json_object"}`` a reply must parse as a JSON object. With ``{"type":
"json_schema", "json_schema": {"name": ..., "schema": {...}}}`` it must also validate against
the schema (jsonschema: Draft 2020-12, or the draft its ``$schema`` names); a schema whose
top-level ``type`` allows other JSON than an object (an array) takes that too. A reply that is
one Markdown code block holding the JSON is read as that JSON (``loads_reply``), words around
the block or not, as is one with no code block that holds one JSON object or array among words
("Here is the JSON: {...}"), and an ok row's content is that JSON, the block's fence or the
words dropped (``unfenced``). A reply that
fails is recorded as a failed row of type ``invalid_json`` or ``schema_mismatch`` — with its
content, usage and cost, since it was billed — and is not retried on its own:
``--retry-failed`` redoes it when the user chooses to pay again.

Without a ``response_format``, a job whose ``tool_choice`` forces one function (names it, or is
``"required"`` with one function among the ``tools``) asks for that function's arguments: the
reply's call to it is checked against its ``parameters`` schema the same way, and a reply that
does not call it is a failed row of type ``no_tool_call``. This is how structured output is
had from models and gateways without ``json_schema``. ``response_format = {"type": "text"}``
(the API's default) turns every check off.

A row of an OpenAI batch file carries its own settings in its body: ``structured_output(body,
body=True)`` reads them there, and its errors name the body's fields.

In the results file every top-level property of the schema becomes a typed column
``json_<property>`` (string, int64, float64 or bool; anything else as JSON text; an ``enum``
with no ``type`` has the type its values share). A type may be
nullable (``["integer", "null"]``, or an ``anyOf``/``oneOf`` of it and ``{"type": "null"}``) or
be a local ``$ref`` (``#/$defs/...``), as Pydantic writes its schemas; so may the top level
(``#/definitions/...``, as zod-to-json-schema writes a named one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import orjson
import pyarrow as pa

from batchrunner.arrow import typed_array
from batchrunner.errors import ConfigError

if TYPE_CHECKING:
    from jsonschema.exceptions import SchemaError
    from jsonschema.protocols import Validator

__all__ = ["COLUMN_PREFIX", "EMPTY_REPLY", "StructuredOutput", "api_name", "dangling_ref",
           "dangling_text", "loads_reply", "schema_error_text", "schema_name_error",
           "schema_name_warning", "strict_error", "strict_warnings", "structured_output",
           "unfenced", "validator_class"]

COLUMN_PREFIX = "json_"
# What a reply with no text (content null or "", or blanks) fails with: not a parser's words
# for an empty document.
EMPTY_REPLY = "the reply is empty (no content)"
_DECODER = json.JSONDecoder()
_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}


def validator_class(schema: Mapping[str, Any]) -> type[Validator]:
    """The validator of the JSON Schema draft ``schema``'s ``$schema`` names (draft-04, -06,
    -07, 2019-09: a tuple's ``items`` list and draft-04's boolean ``exclusiveMinimum`` are
    theirs); Draft 2020-12 when it names none, or one not known."""
    from jsonschema import Draft202012Validator  # only jobs with a schema pay for it
    from jsonschema.validators import validator_for

    if not isinstance(schema.get("$schema"), str):  # validator_for fails on a number
        return cast("type[Validator]", Draft202012Validator)
    return cast("type[Validator]", validator_for(schema, default=Draft202012Validator))


def loads_reply(text: str) -> Any:
    """The JSON value of a reply: its text, or, when that is one Markdown code block and
    nothing else (```json ... ```, as models asked for JSON through gateways that do not
    pass ``response_format`` on often answer), what the block holds, or, in a reply with no
    code block, the one JSON object or array among its words ("Here is the JSON: {...}").
    Raises ``orjson.JSONDecodeError`` when it is not JSON (the block's error, when it is
    one)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        inner = _fenced(text)
        if inner is None:
            inner = _among_words(text)
            if inner is None:
                raise
        return orjson.loads(inner)


def unfenced(text: str) -> str | None:
    """The JSON a reply read by ``loads_reply`` holds, when it is not the reply as it is:
    what its one Markdown code block holds, trimmed, or the one JSON object or array among
    its words; None otherwise. Cheap for a reply that is JSON: nothing is copied when it
    starts and ends as JSON does."""
    if text[:1] == "{" and text[-1:] == "}":  # the JSON object it is, as a rule
        return None
    head = text.lstrip()
    if head.startswith("```"):
        inner = _fenced(text)
        return None if inner is None else inner.strip()
    if head[:1] in ("{", "[") and text.rstrip()[-1:] in ("}", "]"):
        return None
    return _among_words(text)


# The places a JSON value embedded in words may begin at, and how many of them are tried (each
# try reads on as far as the value goes: a bound on the time a long reply of prose costs).
_OPENING = re.compile(r"[{\[]")
_MAX_OPENINGS = 64


def _among_words(text: str) -> str | None:
    """The one JSON object or array in a reply that holds words besides ("Here is the JSON:
    {...}", or words after it), as its text, or what its one Markdown code block of JSON holds
    ("Here it is:\n```json\n{...}\n```"); None when it holds none, more than one, or a block
    of another language. Brackets among the words that open no JSON ("[as asked]") are passed
    over."""
    if "```" in text:
        _, block, *after = text.split("```")
        inner = _fenced(f"```{block}```") if len(after) == 1 else None
        return None if inner is None else inner.strip()
    found = None
    at = 0
    for _ in range(_MAX_OPENINGS):
        opening = _OPENING.search(text, at)
        if opening is None:
            return found
        start = opening.start()
        try:
            _, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            at = start + 1
            continue
        if found is not None:
            return None  # a second one: which is the answer is not known
        found, at = text[start:end], end
    return None


def _fenced(text: str) -> str | None:
    """What a reply that is one fenced code block (its info string ``json`` or none) holds."""
    block = text.strip()
    if not (block.startswith("```") and block.endswith("```") and len(block) >= 6):
        return None
    first, newline, rest = block[3:-3].partition("\n")
    if not newline or first.strip().lower() not in ("", "json") or "```" in rest:
        return None
    return rest


def _column_type(schema: Any, root: Mapping[str, Any], depth: int = 0) -> pa.DataType:
    if isinstance(schema, Mapping) and depth < 8:
        ref = schema.get("$ref")
        if isinstance(ref, str) and schema.keys() <= _NOTES:  # Pydantic's nested types
            return _column_type(_local(ref, root), root, depth + 1)
        t = schema.get("type")
        if isinstance(t, list):  # ["string", "null"]
            rest = [x for x in t if x != "null"]
            t = rest[0] if len(rest) == 1 else None
        if isinstance(t, str) and t in _TYPES:
            return _TYPES[t]
        enum = schema.get("enum")
        if isinstance(enum, list) and t is None:
            return _enum_type(enum)
        for union in ("anyOf", "oneOf"):  # Pydantic's Optional[int]: anyOf int, null
            branches = schema.get(union)
            if t is None and isinstance(branches, list):
                rest = [b for b in branches if not (isinstance(b, Mapping) and b.get("type")
                                                    == "null" and len(b) == 1)]
                if len(rest) == 1 and len(rest) < len(branches):
                    return _column_type(rest[0], root, depth + 1)
    return pa.string()  # objects, arrays, unions: JSON text


def _enum_type(values: list[Any]) -> pa.DataType:
    """The column type of an ``enum`` with no ``type``: the one its values share (a null among
    them aside): boolean, integer (64-bit), number (integers and decimals); else text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int} and all(_INT64_MIN <= v <= _INT64_MAX for v in values if v is not None):
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    return pa.string()


_NOTES = frozenset({"$ref", "title", "description", "default", "examples"})  # beside a $ref


def _local(ref: str, root: Mapping[str, Any]) -> Any:
    """The part of the schema ``root`` a local ``$ref`` (``#/$defs/Name``) points to; None when
    it points elsewhere, or nowhere."""
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


# Keywords whose values are data, not schemas: a "$ref" key inside them is no reference.
_DATA_KEYWORDS = frozenset({"const", "default", "enum", "examples"})
_SCHEMA_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def dangling_ref(schema: Mapping[str, Any]) -> str | None:
    """The first ``$ref`` of ``schema`` that points to nothing in it, of those that can be told
    before a reply reaches them: a JSON pointer into the schema (``#/$defs/Label``), in a
    schema where no part sets an ``$id`` of its own (which would change what the pointers
    below it are read against); None when each of them points somewhere. A reply that reached
    such a ``$ref`` could not be checked (``schema_error``), whatever it held."""
    refs: list[str] = []
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if node is not schema and "$id" in node:
                return None
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                refs.append(ref)
            stack.extend(v for k, v in node.items() if k not in _DATA_KEYWORDS)
        elif isinstance(node, list):
            stack.extend(node)
    return next((ref for ref in refs if not _points_somewhere(ref, schema)), None)


def _points_somewhere(ref: str, root: Mapping[str, Any]) -> bool:
    """Whether the JSON pointer of ``ref`` (``#/$defs/Label``, percent-encoded or not) names a
    part of ``root``."""
    node: Any = root
    for part in unquote(ref[2:]).split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def dangling_text(ref: str) -> str:
    """The line that refuses a schema for its ``$ref`` that points nowhere (``dangling_ref``)."""
    return (f"its $ref {ref!r} points to nothing in the schema, so no reply that reaches it "
            "could be checked — point it at a part the schema has (as #/$defs/Name names "
            "Name in its $defs)")


def strict_error(schema: Any) -> str | None:
    """What OpenAI's strict mode (``"strict": true``) refuses every request for in ``schema``,
    of its two rules that every strict schema meets: each object sets ``additionalProperties``
    false and lists every property in ``required``; the first object that does not, and
    where; None when each does."""
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, at = stack.pop()
        if not isinstance(node, Mapping):
            continue
        where = f"at {at}" if at else "at the top level"
        props = node.get("properties")
        if node.get("type") == "object" or isinstance(props, Mapping):
            if node.get("additionalProperties") is not False:
                return f"the object {where} does not set additionalProperties to false"
            required = node.get("required")
            missing = [p for p in props if not isinstance(required, list) or p not in required
                       ] if isinstance(props, Mapping) else []
            if missing:
                return (f"the object {where} does not list {', '.join(map(repr, missing))} in "
                        "required")
        below = []
        for key in ("properties", "$defs", "definitions"):
            if isinstance(named := node.get(key), Mapping):
                below += [(v, f"{at}/{key}/{k}".lstrip("/")) for k, v in named.items()]
        for key in ("items", "additionalItems", "not"):
            if isinstance(node.get(key), Mapping):
                below.append((node[key], f"{at}/{key}".lstrip("/")))
        for key in ("anyOf", "oneOf", "allOf", "prefixItems", "items"):
            if isinstance(listed := node.get(key), list):
                below += [(v, f"{at}/{key}/{i}".lstrip("/")) for i, v in enumerate(listed)]
        stack.extend(reversed(below))
    return None


def strict_warnings(settings: Mapping[str, Any]) -> list[str]:
    """A job's json_schema name, strict json_schema or strict functions that OpenAI refuses
    every request for (``schema_name_warning``, ``strict_error``), said before the run (a
    server without those rules, vLLM say, takes them)."""
    extra = settings.get("extra")
    extra = extra if isinstance(extra, Mapping) else {}
    said = []
    out = []
    fmt = settings.get("response_format") or extra.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
    asked = ("[request] schema_file" if settings.get("schema_file")
             else "[request] response_format")
    if isinstance(spec, Mapping):
        if (named := schema_name_warning(spec.get("name"))) is not None:
            said.append(f"{asked}: {named}")
        if spec.get("strict") is True and (problem := strict_error(spec.get("schema"))
                                           ) is not None:
            out.append((asked, problem))
    for fn in _functions(extra.get("tools")):
        if fn.get("strict") is True and (problem := strict_error(fn.get("parameters"))
                                         ) is not None:
            out.append((f"the parameters of the function {fn['name']!r}", problem))
    return said + [
        f"{what} is strict, but {problem}, which OpenAI refuses every request for — set "
        "additionalProperties = false on each object and list each of its properties in "
        "required (an optional one's type a union with null), or leave strict out"
        for what, problem in out]


def schema_name_error(name: Any) -> str | None:
    """Why OpenAI and vLLM answer every request 400 for a json_schema's ``name``: none, or not
    text; None for a name they take. (One outside OpenAI's pattern vLLM takes:
    ``schema_name_warning``.)"""
    if isinstance(name, str) and name:
        return None
    if name is None:
        return "json_schema has no name, for which APIs refuse every request — give it one"
    return f"json_schema name {name!r} would have every request refused: give it a name (text)"


def schema_name_warning(name: Any) -> str | None:
    """A json_schema ``name`` OpenAI refuses every request for (1 to 64 ASCII letters, digits,
    _ and - it takes), said before the run: vLLM takes any."""
    if not isinstance(name, str) or not name or _NAME.fullmatch(name):
        return None
    fixed = api_name(name)
    return (f"json_schema name {name!r} is one OpenAI refuses every request for: a name there is "
            f"1 to 64 letters, digits, _ and - (as {fixed!r}); a server without that rule (vLLM) "
            "takes it")


def schema_error_text(error: SchemaError) -> str:
    """What JSON Schema refuses of a schema, in a line that says where in it (``at
    properties/label/type: ...``); a ``type`` that names no JSON Schema type lists those
    there are."""
    path = list(error.path)
    where = f"at {'/'.join(str(p) for p in path)}: " if path else ""
    value = error.instance
    # A property named "type" holds a schema, not a type: its own error is said as it is.
    if path and path[-1] == "type" and (len(path) < 2 or path[-2] not in _NAMED_SCHEMAS):
        named = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        unknown = [t for t in named if isinstance(t, str) and t not in _SCHEMA_TYPES]
        if unknown:
            return (f"{where}{', '.join(repr(t) for t in unknown)} "
                    f"{'is not a type' if len(unknown) == 1 else 'are not types'} JSON Schema "
                    f"has (its types: {', '.join(_SCHEMA_TYPES)})")
    return f"{where}{' '.join(error.message.split())}"


# Keywords that map names to schemas: their keys are names, not keywords.
_NAMED_SCHEMAS = frozenset({"$defs", "definitions", "dependentSchemas", "patternProperties",
                            "properties"})


def _referred(root: Mapping[str, Any]) -> Mapping[str, Any]:
    """The schema ``root``'s top level: the definition a top-level local ``$ref`` points to
    (``{"$ref": "#/definitions/Ticket", "definitions": {...}}``, as zod-to-json-schema writes
    a named schema), and so on; ``root`` itself when it has no such ``$ref``."""
    node = root
    for _ in range(8):
        ref = node.get("$ref")
        target = _local(ref, root) if isinstance(ref, str) and "type" not in node \
            and "properties" not in node else None
        if not isinstance(target, Mapping):
            break
        node = target
    return node


def _cell(value: Any, typ: pa.DataType) -> Any:
    """A property's value as its column holds it: JSON text in a string column when it is not
    text; None when a typed column cannot hold it (an integer beyond 64 bits, which the check
    fails, in a row recorded before it did)."""
    if typ == pa.string():
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if typ == pa.bool_() and isinstance(value, bool) else None
    if typ == pa.float64():
        return float(value)
    if typ == pa.int64() and (isinstance(value, int) or value.is_integer()):
        whole = int(value)
        return whole if _INT64_MIN <= whole <= _INT64_MAX else None
    return None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a json_schema's name, as OpenAI takes it


def api_name(text: str) -> str:
    """``text`` made a json_schema name OpenAI takes (``_NAME``, but for an empty one): its
    first 64 characters, each not an ASCII letter, digit, _ or - made _."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64]


def structured_output(settings: Mapping[str, Any], *, body: bool = False
                      ) -> StructuredOutput | None:
    """What a job's request settings ask its replies to hold, or None: the JSON
    ``response_format`` asks for, else the arguments of the function ``tool_choice`` forces.
    With ``body``, the settings are a request body's own (a row of a batch file): errors name
    its fields rather than the job's. A job's ``response_format`` may be among the body fields
    of its ``extra`` (sent as it is there)."""
    extra = settings if body else settings.get("extra")
    fmt = settings.get("response_format")
    if fmt is None and isinstance(extra, Mapping):
        fmt = extra.get("response_format")
    if isinstance(fmt, Mapping):
        # "text", the API's default, asks for no check: a forced function's calls go unchecked
        if fmt.get("type") == "text":
            return None
        so = StructuredOutput(fmt, body=body)
        try:
            forced = (_forced_function(extra.get("tools"), extra.get("tool_choice"), body=body)
                      if isinstance(extra, Mapping) else None)
        except ConfigError:  # a function not among the tools: the API says so
            forced = None
        if forced is not None and so.warning is None:
            asked = "schema_file" if not body and settings.get("schema_file") else (
                "response_format")
            so.warning = (f"{_where(body, 'tool_choice')} forces a call to {forced['name']!r}, so "
                          f"every reply is that call, not the JSON {_where(body, asked)} asks "
                          "for: no reply would be checked nor fill the json_ columns — give one "
                          "of them (a forced function's arguments fill the columns as a "
                          "schema's would)")
        return so
    if not isinstance(extra, Mapping):
        return None
    function = _forced_function(extra.get("tools"), extra.get("tool_choice"), body=body)
    if function is None:
        return None
    return StructuredOutput.for_function(str(function["name"]), function.get("parameters"),
                                         body=body)


def _where(body: bool, field: str) -> str:
    """How an error names a request field: the job's ``[request]`` table, or a row's body."""
    if body:
        return f"the body's {field}"
    return f"[request.extra] {field}" if field in ("tools", "tool_choice") else f"[request] {field}"


def _functions(tools: Any) -> list[Mapping[str, Any]]:
    """The function tools (name, parameters), in Chat Completions' shape (``{"type":
    "function", "function": {...}}``) or the flat one (``{"type": "function", "name": ...}``)."""
    out: list[Mapping[str, Any]] = []
    for t in tools if isinstance(tools, list) else ():
        if not isinstance(t, Mapping) or t.get("type", "function") != "function":
            continue
        fn = t.get("function", t)
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str) and fn["name"]:
            out.append(fn)
    return out


def _forced_function(tools: Any, choice: Any, *, body: bool = False
                     ) -> Mapping[str, Any] | None:
    """The function that ``tool_choice`` makes every reply call: the one it names (``{"type":
    "function", "function": {"name": ...}}``, or flat), with ``"required"`` the only one, or
    the only one ``allowed_tools`` lists with mode ``"required"``."""
    functions = _functions(tools)
    if choice == "required":
        return functions[0] if len(functions) == 1 else None
    if isinstance(choice, str) and any(fn["name"] == choice for fn in functions):
        # A function's name alone is no tool_choice the API takes (it answers every row 400,
        # "Invalid value"), nor would the replies be checked as the function's.
        shape = (f'"tool_choice": {{"type": "function", "function": {{"name": "{choice}"}}}}'
                 if body else
                 f'tool_choice = {{ type = "function", function = {{ name = "{choice}" }} }}')
        raise ConfigError(f"{_where(body, 'tool_choice')} is the name {choice!r} alone, which "
                          f"APIs refuse (they take \"none\", \"auto\" or \"required\"): to make "
                          f"every reply call it, write {shape}")
    if isinstance(choice, Mapping) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, Mapping) or allowed.get("mode") != "required":
            return None
        entries = allowed.get("tools")
        listed = _functions(entries)
        if not isinstance(entries, list) or len(entries) != 1 or not listed:
            return None  # one of several tools, or not a function: no one function's arguments
        name = listed[0]["name"]
    elif not isinstance(choice, Mapping) or choice.get("type") != "function":
        return None
    else:
        wanted = choice.get("function", choice)
        name = wanted.get("name") if isinstance(wanted, Mapping) else None
    if not isinstance(name, str) or not name:
        shape = ('"tool_choice": {"type": "function", "function": {"name": "..."}}' if body
                 else 'tool_choice = { type = "function", function = { name = "..." } }')
        raise ConfigError(f"{_where(body, 'tool_choice')} names no function: write {shape}")
    for fn in functions:
        if fn["name"] == name:
            return fn
    raise ConfigError(
        f"{_where(body, 'tool_choice')} names the function {name!r}, which is not among the "
        f"tools ({', '.join(repr(f['name']) for f in functions) or 'no function tools'})"
    )


class StructuredOutput:
    """The checks and columns one job's ``response_format`` asks for; with ``tool``, the same
    for the arguments of the reply's call to that function."""

    def __init__(self, response_format: Mapping[str, Any], *, tool: str | None = None,
                 body: bool = False) -> None:
        kind = response_format.get("type")
        self.tool = tool
        # Request settings that ask for these checks, as ``structured_output(settings,
        # body=True)`` reads them (``for_function`` gives its own).
        self.settings: dict[str, Any] = {"response_format": dict(response_format)}
        self.warning: str | None = None  # said before the run, when a check is left out
        self.validator: Validator | None = None
        self.columns: list[tuple[str, str, pa.DataType]] = []  # (property, column, type)
        self._schema: Mapping[str, Any] | None = None  # the one checked against, if any
        self._top: Mapping[str, Any] = {}  # its top level, past a $ref there
        self._what, self._is = ("the reply", "is") if tool is None else (
            f"the arguments of {tool}", "are")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if not isinstance(schema, Mapping):
                shape = ('"json_schema": {"name": ..., "schema": {...}}' if body
                         else "a table json_schema = { name = ..., schema = { ... } }")
                raise ConfigError(f"{_where(body, 'response_format')}: json_schema needs {shape}")
            name = spec.get("name") if isinstance(spec, Mapping) else None
            if tool is None and (said := schema_name_error(name)) is not None:
                where = _where(body, "response_format")
                if name is None:
                    shape = ('"json_schema": {"name": "answer", "schema": {...}}' if body
                             else 'json_schema = { name = "answer", schema = { ... } }')
                    said = f"{said}: {shape}"
                raise ConfigError(f"{where}: {said}")
            from jsonschema.exceptions import SchemaError

            validator = validator_class(schema)
            try:
                validator.check_schema(schema)
            except SchemaError as e:
                if tool is None:
                    raise ConfigError(f"{_where(body, 'response_format')}: the JSON schema is "
                                      f"not valid: {schema_error_text(e)}") from None
                # The schema is the model's to read: a provider may take what JSON Schema
                # does not (Gemini's upper-case types). Only "a JSON object" is checked.
                self.warning = (f"the parameters of the function {tool!r} are not a JSON schema "
                                f"batchrunner can check ({schema_error_text(e)}); its arguments "
                                "are only checked to be a JSON object")
                return
            if (ref := dangling_ref(schema)) is not None:
                what = (_where(body, "response_format") if tool is None
                        else f"{_where(body, 'tools')}: the parameters of the function {tool!r}")
                raise ConfigError(f"{what}: {dangling_text(ref)}")
            self.validator = validator(schema)
            self._schema = schema
            self._top = _referred(schema)
            props = self._top.get("properties")
            if isinstance(props, Mapping):
                self.columns = [(p, COLUMN_PREFIX + p, _column_type(s, schema))
                                for p, s in props.items()]
        elif kind != "json_object":
            raise ConfigError(
                f"{_where(body, 'response_format')} type must be text, json_object or "
                f"json_schema, got {kind!r}"
            )

    @classmethod
    def for_function(cls, name: str, parameters: Any, *, body: bool = False
                     ) -> StructuredOutput:
        """The checks for the arguments of calls to the function ``name``."""
        if parameters is None or parameters == {}:
            so = cls({"type": "json_object"}, tool=name, body=body)
        elif not isinstance(parameters, Mapping):
            kind = "an object" if body else "a table"
            raise ConfigError(f"{_where(body, 'tools')}: the parameters of the function "
                              f"{name!r} must be a JSON schema ({kind})")
        else:
            so = cls({"type": "json_schema",
                      "json_schema": {"name": name, "schema": parameters}}, tool=name, body=body)
        function = {"name": name} if parameters is None else {"name": name,
                                                              "parameters": parameters}
        so.settings = {"tools": [{"type": "function", "function": function}],
                       "tool_choice": "required"}
        return so

    @cached_property
    def _wants_object(self) -> bool:
        """Whether only a JSON object will do: with ``json_object``, for a function's
        arguments, and with a schema unless its top-level ``type`` allows another (an array,
        as servers that constrain their output to any schema give): then the schema decides."""
        kind = None if self._schema is None or self.tool is not None else self._top.get("type")
        kinds = [kind] if isinstance(kind, str) else kind
        return not isinstance(kinds, list) or set(kinds) <= {"object"}

    @cached_property
    def key(self) -> bytes:
        """Equal for the same checks and columns: the same function (or none) and schema (or
        none), whatever else the settings say (a json_schema's name, strict, ...)."""
        return orjson.dumps([self.tool, self._schema], option=orjson.OPT_SORT_KEYS)

    @property
    def column(self) -> str:
        """The outcome column that holds what is checked: ``content``, or ``tool_calls``."""
        return "content" if self.tool is None else "tool_calls"

    def check_reply(self, content: str | None, tool_calls: str | None) -> tuple[str, str] | None:
        """``(error_type, message)`` when a reply (its content, its tool calls as JSON text) is
        not what was asked for, else None. A reply that calls tools is not the answer a
        ``response_format`` asks for: its content, if any, is what it said before the calls
        (``""``, or "I'll search for that."), not checked."""
        if self.tool is None:
            return None if tool_calls is not None else self.check(content)
        args = self.arguments(tool_calls)
        if args is None:
            return "no_tool_call", f"the reply did not call {self.tool}"
        if not args.strip():
            if self.validator is None:
                return None  # no parameters, none given ("" or no field, as some send it)
            return "invalid_json", f"the call to {self.tool} has no arguments"
        return self.check(args)

    def check_choices(self, choices: str) -> tuple[Any, Any, tuple[str, str]] | None:
        """With ``n`` > 1: ``check_reply`` of each choice but choice 0 (whose content and
        tool calls the row's are, checked apart) in ``choices`` (every choice as JSON text, as
        the results hold it): the first that is not what was asked for, as its ``index``, its
        ``finish_reason`` and its error (``refusal`` for one the model refused, with no
        answer); None when every one is."""
        try:
            entries = orjson.loads(choices)
        except orjson.JSONDecodeError:
            return None
        for at, c in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(c, dict):
                continue
            index = c.get("index", at)
            if index == 0:
                continue
            content = c.get("content")
            calls = c.get("tool_calls")
            refusal = c.get("refusal")
            if isinstance(refusal, str) and refusal and not content and not calls:
                # no answer, but why: as the row's own refusal is said (choice 0's)
                return index, c.get("finish_reason"), ("refusal", f"the model refused: {refusal}")
            error = self.check_reply(content if isinstance(content, str) else None,
                                     orjson.dumps(calls).decode() if calls else None)
            if error is not None:
                return index, c.get("finish_reason"), error
        return None

    def unfenced_choices(self, choices: str) -> str:
        """``choices`` (every choice as JSON text) with each choice's content that is JSON in a
        code block or among words (``unfenced``) as that JSON, as the row's content is: the
        choices of an ok row are then JSON a reader can load; ``choices`` itself when none
        is."""
        try:
            entries = orjson.loads(choices)
        except orjson.JSONDecodeError:
            return choices
        changed = False
        for c in entries if isinstance(entries, list) else ():
            content = c.get("content") if isinstance(c, dict) else None
            if isinstance(content, str) and not c.get("tool_calls") and (
                    bare := unfenced(content)) is not None:
                c["content"], changed = bare, True
        return orjson.dumps(entries).decode() if changed else choices

    def arguments(self, tool_calls: str | None) -> str | None:
        """The arguments (JSON text; empty when the call has none) of the reply's first call
        to ``tool`` in ``tool_calls``; None when it does not call it."""
        try:
            calls = orjson.loads(tool_calls or "[]")
        except orjson.JSONDecodeError:
            return None
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and fn.get("name") == self.tool:
                args = fn.get("arguments")
                if args is None:
                    return ""
                return args if isinstance(args, str) else orjson.dumps(args).decode()
        return None

    def check(self, text: str | None) -> tuple[str, str] | None:
        """``(error_type, message)`` when ``text`` is not the JSON asked for, else None."""
        if not text or text.isspace():
            return "invalid_json", EMPTY_REPLY if self.tool is None else (
                f"{self._what} {self._is} empty")
        try:
            value = loads_reply(text or "")
        except orjson.JSONDecodeError as e:
            return "invalid_json", f"{self._what} {self._is} not JSON ({e})"[:300]
        if not isinstance(value, dict) and self._wants_object:
            return "invalid_json", f"{self._what} {self._is} JSON but not an object"
        if self.validator is not None:
            from jsonschema.exceptions import best_match
            from referencing.exceptions import Unresolvable

            try:
                error = best_match(self.validator.iter_errors(value))
            except Unresolvable as e:  # a $ref that points nowhere, found when reached
                return "schema_error", (f"the schema cannot be checked: its $ref "
                                        f"{getattr(e, 'ref', '?')!r} points nowhere")[:300]
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or self._what
                return "schema_mismatch", f"{where}: {error.message}"[:300]
        for prop, col, typ in self.columns if isinstance(value, dict) else ():
            v = value.get(prop)
            if typ == pa.int64() and isinstance(v, int | float) and _cell(v, typ) is None:
                # JSON Schema's integer has no bounds; the column's has
                return "schema_mismatch", (f"{prop}: an integer beyond 64 bits, which {col}, "
                                           "a 64-bit integer column, cannot hold")[:300]
        return None

    def spread(self, values: Sequence[str | None], ok: Sequence[bool]) -> dict[str, pa.Array]:
        """One typed column per schema property, filled from the ``ok`` rows' JSON (``values``:
        the rows' ``column``)."""
        out_values: dict[str, list[Any]] = {col: [] for _, col, _ in self.columns}
        for text, good in zip(values, ok, strict=True):
            obj = None
            if good and text and self.tool is not None:
                text = self.arguments(text)
            if good and text:
                try:
                    obj = loads_reply(text)
                except orjson.JSONDecodeError:
                    obj = None
            for prop, col, typ in self.columns:
                v = obj.get(prop) if isinstance(obj, dict) else None
                out_values[col].append(None if v is None else _cell(v, typ))
        out: dict[str, pa.Array] = {}
        for _, col, typ in self.columns:
            # Every value is of the column's type: its type is the same in every batch of rows
            typed = typed_array(out_values[col], typ)
            out[col] = pa.array(out_values[col], type=typ) if typed is None else typed
        return out
