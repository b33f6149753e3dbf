"""Structured output: check replies against the job's ``response_format``, spread them into columns.

With ``{"type": "json_object"}`` a reply must parse as a JSON object. With ``{"type":
"json_schema", "json_schema": {"name": ..., "schema": {...}}}`` it must also validate against
the schema (jsonschema, Draft 2020-12). A reply that fails is recorded as a failed row of type
``invalid_json`` or ``schema_mismatch`` — with its content, usage and cost, since it was billed —
and is not retried on its own: ``--retry-failed`` redoes it when the user chooses to pay again.

In the results file every top-level property of the schema becomes a typed column
``json_<property>`` (string, int64, float64 or bool; anything else as JSON text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from batchrunner.arrow import string_array, typed_array
from batchrunner.errors import ConfigError

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

__all__ = ["COLUMN_PREFIX", "StructuredOutput"]

COLUMN_PREFIX = "json_"
_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}


def _column_type(schema: Any) -> pa.DataType:
    if isinstance(schema, Mapping):
        t = schema.get("type")
        if isinstance(t, list):  # ["string", "null"]
            rest = [x for x in t if x != "null"]
            t = rest[0] if len(rest) == 1 else None
        if isinstance(t, str) and t in _TYPES:
            return _TYPES[t]
        if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
            return pa.string()
    return pa.string()  # objects, arrays, unions: JSON text


class StructuredOutput:
    """The checks and columns one job's ``response_format`` asks for."""

    def __init__(self, response_format: Mapping[str, Any]) -> None:
        kind = response_format.get("type")
        self.validator: Draft202012Validator | None = None
        self.columns: list[tuple[str, str, pa.DataType]] = []  # (property, column, type)
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if not isinstance(schema, Mapping):
                raise ConfigError(
                    "[request] response_format: json_schema needs a table "
                    "json_schema = { name = ..., schema = { ... } }"
                )
            from jsonschema import Draft202012Validator  # only jobs with a schema pay for it
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as e:
                raise ConfigError(
                    f"[request] response_format: the JSON schema is not valid: {e.message}"
                ) from None
            self.validator = Draft202012Validator(schema)
            props = schema.get("properties")
            if isinstance(props, Mapping):
                self.columns = [(p, COLUMN_PREFIX + p, _column_type(s)) for p, s in props.items()]
        elif kind != "json_object":
            raise ConfigError(
                f"[request] response_format type must be json_object or json_schema, got {kind!r}"
            )

    def check(self, content: str | None) -> tuple[str, str] | None:
        """``(error_type, message)`` when the reply is not what was asked for, else None."""
        try:
            value = orjson.loads(content or "")
        except orjson.JSONDecodeError as e:
            return "invalid_json", f"the reply is not JSON ({e})"[:300]
        if not isinstance(value, dict):
            return "invalid_json", "the reply is JSON but not an object"
        if self.validator is not None:
            from jsonschema.exceptions import best_match

            error = best_match(self.validator.iter_errors(value))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "the reply"
                return "schema_mismatch", f"{where}: {error.message}"[:300]
        return None

    def spread(self, contents: Sequence[str | None], ok: Sequence[bool]) -> dict[str, pa.Array]:
        """One typed column per schema property, filled from the ``ok`` rows' JSON replies."""
        values: dict[str, list[Any]] = {col: [] for _, col, _ in self.columns}
        for content, good in zip(contents, ok, strict=True):
            obj = None
            if good and content:
                try:
                    obj = orjson.loads(content)
                except orjson.JSONDecodeError:
                    obj = None
            for prop, col, typ in self.columns:
                v = obj.get(prop) if isinstance(obj, dict) else None
                if v is not None and typ == pa.string() and not isinstance(v, str):
                    v = orjson.dumps(v).decode()
                elif typ == pa.float64() and isinstance(v, int | float):
                    v = float(v)
                values[col].append(v)
        out: dict[str, pa.Array] = {}
        for _, col, typ in self.columns:
            typed = typed_array(values[col], typ)  # values of the column's type, as a rule
            if typed is not None:
                out[col] = typed
                continue
            try:
                out[col] = pa.array(values[col], type=typ)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # a value of another type: keep as text
                out[col] = string_array(
                    [None if v is None else orjson.dumps(v).decode() for v in values[col]]
                )
        return out
