"""Rows → chat request bodies.

A prompt template is ``str.format`` syntax over the row's columns: ``"Summarise: {text}"``.
``{{`` and ``}}`` are literal braces. Only plain column names are allowed in fields (no
attributes, indexes or format specs; a column whose own name holds ``.``, ``[``, ``:`` or ``!``
is named as it is: ``{Price: USD}``), so a template is checked against the input's columns
before anything is sent.
"""

from __future__ import annotations

import base64
import functools
import math
import mimetypes
import re
import string
import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from batchrunner.config import (
    BODY_FIELDS,
    BOOLEAN_FIELDS,
    INTEGER_FIELDS,
    JSON_FIELDS,
    JSON_OR_TEXT_FIELDS,
    NUMBER_FIELDS,
    OVERRIDES,
    TEXT_FIELDS,
    RequestConfig,
    openai_reasoning,
    option_name,
)
from batchrunner.errors import ConfigError
from batchrunner.io import delimiter_hint

__all__ = ["RequestBuilder", "Template", "column_list", "estimate_tokens", "request_warnings",
           "system_warnings"]

_FORMATTER = string.Formatter()
# "{name}" in a template's literal text: what "{{name}}" or "{{ name }}" renders as.
_LITERAL_FIELD = re.compile(r"\{([^{}]+)\}")


def estimate_tokens(text: str) -> int:
    """About four characters a token, the rule the built-in simulator bills with, for ASCII
    text; other text, four bytes of its UTF-8 a token: a Chinese, Japanese or Korean
    character (three bytes) about three quarters of one, as tokenizers count them (0.6 to 1),
    where four characters a token took 3,900 characters of Chinese for some 1,000 tokens and
    a budget was passed threefold before the replies told."""
    if not text:
        return 0
    n = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return (n + 3) // 4


class Template:
    """A parsed prompt template: literal text and the column names between it."""

    __slots__ = ("_specs", "fields", "parts", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        parts: list[tuple[str, str | None]] = []
        specs: list[str] = []  # fields read with a format spec or conversion: {Price: USD}
        try:
            parsed = list(_FORMATTER.parse(source))
        except ValueError as e:
            # "Single '}' encountered": the closing one is doubled, not the opening one.
            brace = "}}" if str(e).startswith("Single '}'") else "{{"
            raise ConfigError(
                f"prompt template {source[:60]!r}: {e} (write {brace} for a literal "
                f"{brace[0]})") from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (spec or conversion):
                # A column's own name may hold ':' or '!' (a spreadsheet's "Price: USD"):
                # ``check`` takes the field whole when the input has such a column.
                name = f"{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}"
                specs.append(name)
            if name is not None and not name:
                raise _not_plain(name)
            parts.append((literal, name))
        self.parts = parts
        self.fields = tuple(dict.fromkeys(n for _, n in parts if n is not None))
        self._specs = frozenset(specs)

    def check(self, columns: Iterable[str], where: str, *, rows_vary: bool = False) -> None:
        """Refuse fields the input lacks, and (unless the rows vary otherwise, ``rows_vary``:
        an image, a model or body fields of their own) a template that names none."""
        cols = list(columns)
        have = set(cols)
        if not self.fields and not rows_vary:
            raise ConfigError(
                f"the prompt template {self.source!r} names no column, so every row would be "
                "sent the same prompt: put a column in braces, e.g. 'Classify: {text}' (in "
                "single quotes on a command line, which leave $ and braces alone), or use "
                "--prompt-column (prompt_column) for a column holding whole prompts "
                f"({column_list(cols, '')})"
            )
        for name in self.fields:
            if name not in have and name in self._specs:
                raise _not_plain(name)
            if name not in have and not _plain(name):  # not a column's own name: {meta.lang}
                raise ConfigError(f"prompt template: {_picked_part(name, have)} "
                                  f"({column_list(cols, name)})")
            if name not in have:
                braces = (" — write {{ and }} for literal braces" if any(c in name for c in "\"' ")
                          else "")
                raise ConfigError(
                    f"prompt template names column {{{name}}}, which {where} does not have "
                    f"({column_list(cols, name)}){delimiter_hint(cols) or braces}"
                )

    def warnings(self, columns: Iterable[str]) -> list[str]:
        """Literal text that looks like a column meant to be filled in: ``{{text}}`` (a Jinja
        or Mustache habit) sends ``{text}`` as it is, beside other columns' values."""
        have = set(columns)
        out: list[str] = []
        text = ""  # the literal text up to the next field ("{{" splits it in parts)
        for literal, name in [*self.parts, ("", None)]:
            text += literal
            if name is None and literal:
                continue
            for found in _LITERAL_FIELD.findall(text):
                if found.strip() in have:
                    out.append(f"the prompt template sends {{{found}}} as it is, not the value of "
                               f"column {found.strip()!r}: write {{{found.strip()}}} for that "
                               "({{ and }} are literal braces)")
            text = ""
        return list(dict.fromkeys(out))

    def render(self, row: dict[str, Any]) -> str | None:
        """The prompt for one row, or ``None`` when a field's value is null."""
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                v = row[name]
                if v is None or (isinstance(v, float) and math.isnan(v)):  # _is_null, inlined
                    return None
                out.append(v if isinstance(v, str) else str(v))
        return "".join(out)


def _picked_part(field: str, columns: set[str]) -> str:
    """What to say of ``field``, which is no column's own name: where it picks part of a
    column's value (``{meta.lang}``), how to give that part a column of its own (the pandas
    line that does it, for JSON text), for the template to name."""
    head = re.match(r"[^.\[]*", field)
    assert head is not None
    steps = re.findall(r"\.([^.\[]+)|\[([^\]]*)\]", field[head.end():])
    # A key in brackets as Python writes it, quoted (meta['lang']), is the key inside.
    keys: list[str | int] = [
        a or (int(b) if b.isdigit() else b[1:-1] if len(b) > 1 and b[0] == b[-1] and b[0] in
              "'\"" else b) for a, b in steps]
    if head.group() not in columns or not keys:
        return (f"field {{{field}}} must be a column name like {{text}}; parts of a value "
                "({a.b}, {a[0]}) cannot be picked")
    column = head.group()
    last = keys[-1]
    name = last if isinstance(last, str) and last.isidentifier() else "_".join(
        map(str, [column, *keys]))
    if name in columns:  # not over a column the input has
        name = "_".join(map(str, [column, *keys]))
        while name in columns:
            name += "_"
    picks = "".join(f".str[{key!r}]" for key in keys)
    return (f"{{{field}}} picks part of column {column}'s values, which a template cannot: "
            f"flatten it into a column of its own first (with pandas, for JSON text: "
            f"df[{name!r}] = df[{column!r}].map(json.loads){picks}) and write {{{name}}}")


def _not_plain(field: str) -> ConfigError:
    return ConfigError(
        f"prompt template: field {{{field}}} must be a plain column name like {{text}} "
        "(write {{ and }} for literal braces, as around JSON in a prompt)")


def system_warnings(system: str | None, columns: Iterable[str]) -> list[str]:
    """The system message is sent as it is, not filled in: a column named in it in braces is
    most likely meant to be."""
    have = set(columns)
    named = [n for n in dict.fromkeys(_LITERAL_FIELD.findall(system or "")) if n.strip() in have]
    return [f"the system message is sent as it is, not as a template: {{{n}}} in it is not the "
            f"value of column {n.strip()!r} (put the column in the prompt)" for n in named]


def json_mode_warnings(req: RequestConfig, template: Template | None) -> list[str]:
    """OpenAI answers 400 to every ``json_object`` request whose messages do not say "JSON"
    ("'messages' must contain the word 'json' in some form"): said before the run when
    neither the system message nor the prompt template's own words do (a row's values may;
    a prompt column's prompts are not looked at)."""
    fmt = req.response_format or req.extra.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_object" or template is None:
        return []
    words = "".join(literal for literal, _ in template.parts) + (req.system or "")
    if "json" in words.lower():
        return []
    return ["response_format is json_object, but neither the prompt template nor the system "
            "message says \"JSON\", and OpenAI refuses every such request (400: 'messages' "
            "must contain the word 'json') unless the row's own text says it — add it (\"Answer "
            "in JSON: ...\")"]


def request_warnings(req: RequestConfig, *, by_options: bool = False,
                     options: Collection[str] = ()) -> list[str]:
    """Settings of a job that a gateway drops or ignores with no error, said before the run.
    ``by_options``: the job is given by command-line options alone, which its fields are named
    as (``--max-tokens``), not a job file's tables; ``options``: those of a job file's job
    that the command line sets (names of ``OVERRIDES``), named so too."""
    # As the body has them: [request.extra] is sent over the job's own fields.
    own = {"model": req.model, "max_tokens": req.max_tokens, "temperature": req.temperature,
           "top_p": req.top_p}
    fields = {**{k: v for k, v in own.items() if v is not None}, **req.extra}
    return _warnings(fields, req.streams, *_job_names(req, by_options, options))


def _job_names(req: RequestConfig, by_options: bool, options: Collection[str] = ()
               ) -> tuple[Callable[[str], str], str, str]:
    """``_warnings``'s names for a job's settings: its fields, how to stream, and where its
    body's top-level fields are set (a job file's [request.extra]: no option sets them)."""
    if by_options:
        return (lambda name: _job_field(req, name, by_options=True), "pass --stream",
                "a job file's [request.extra] itself")

    def named(name: str) -> str:
        # A field the command line sets over the job file is named by its option.
        cli = name in options or (name in req.from_columns and "from_columns" in options)
        return _job_field(req, name, by_options=cli)
    return named, "set [request] stream = true or pass --stream", "[request.extra] itself"


def _job_field(req: RequestConfig, name: str, *, by_options: bool = False) -> str:
    """A body field as a job sets it, for messages: by its option (``by_options``) or in the
    job file."""
    if name in req.from_columns:
        return (f"--from-column {name}={req.from_columns[name]}" if by_options
                else f"from_columns {name} = {req.from_columns[name]!r}")
    if name == "model" and req.model_column:
        return f"model (column {req.model_column!r})"
    if name in _REQUEST_FIELDS and name not in req.extra:
        return option_name(name) if by_options else f"[request] {name}"
    if by_options and OVERRIDES.get(name, ("", ""))[0] == "request.extra":
        return option_name(name)  # --max-completion-tokens, set into [request.extra]
    return f"[request.extra] {name}"


def body_warnings(body: dict[str, Any]) -> list[str]:
    """The same for a batch row's body."""
    return _warnings(body, body.get("stream") is True, lambda name: f"the body's {name}",
                     'set "stream": true in the body', "the body's top level")


_REQUEST_FIELDS = frozenset({"model", "max_tokens", "temperature", "top_p"})
# Gemini through a gateway that names its thinking variants by suffix (-thinking, -thinking-8192,
# -thinking-low), its image model's too (nano-banana-pro-thinking).
_GEMINI_THINKING = re.compile(r"(?:gemini|nano-banana).*-thinking(?:-[a-z0-9]+)?$", re.IGNORECASE)
# Qwen's settings that gateways taking a ``parameters`` object read only there.
_QWEN_PARAMETERS = ("temperature", "top_p", "enable_search", "search_options")


# The body fields the job's checks know (BODY_FIELDS), and those of the servers and gateways
# beside them (vLLM's sampling and guided decoding, Hugging Face TGI's, OpenRouter's routing,
# Qwen's, Groq's, Mistral's): a field near one of the first and none of these is a typo
# (temprature), sent as written, and OpenAI answers every row 400 for it.
_KNOWN_FIELDS = BODY_FIELDS | frozenset({
    "model", "messages", "stream", "stream_options", "functions", "function_call",
    "prompt_cache_retention", "extra_headers", "top_k", "min_p", "top_a", "repetition_penalty",
    "length_penalty", "min_tokens", "best_of", "use_beam_search", "stop_token_ids",
    "ignore_eos", "skip_special_tokens", "include_stop_str_in_output", "truncate_prompt_tokens",
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs",
    "chat_template_kwargs", "provider", "models", "route", "transforms", "reasoning",
    "include_reasoning", "usage", "search_options", "thinking_budget", "incremental_output",
    "result_format", "reasoning_format", "safe_prompt", "random_seed", "prompt_mode",
    "deferred", "documents", "priority", "max_new_tokens", "top_n", "do_sample",
    "typical_p", "return_full_text", "watermark", "truncate",
})
_TYPO_OF = sorted(BODY_FIELDS | {"model", "messages", "stream", "stream_options"})


@functools.lru_cache(maxsize=1024)  # a batch file's every row: its fields repeat
def _near_field(name: str) -> str | None:
    """The Chat Completions field ``name`` looks like a typo of, if any."""
    import difflib

    near = difflib.get_close_matches(name.replace("-", "_"), _TYPO_OF, n=1, cutoff=0.8)
    return near[0] if near else None


def _warnings(fields: dict[str, Any], stream: bool, where: Callable[[str], str],
              set_stream: str, top_level: str) -> list[str]:
    """What a request's ``fields`` (a body, or a job's settings in its shape) ask for that a
    gateway leaves out without an error. ``where`` names a field as the user set it,
    ``top_level`` the place of the body's top-level fields."""
    out: list[str] = []
    extra_body = fields.get("extra_body")
    if isinstance(extra_body, dict) and (unread := [k for k in extra_body if k != "google"]):
        # The OpenAI SDK's extra_body={...} (as the gateways' Python examples pass Grok's
        # search_parameters) sends its fields at the body's top level; a body's own extra_body
        # is read for Gemini's settings only.
        it = "it" if len(unread) == 1 else "them"
        out.append(f"{where('extra_body')} holds {' and '.join(unread)}, sent inside "
                   "extra_body, where gateways read Gemini's google settings only (the OpenAI "
                   f"SDK's extra_body= sends its fields at the body's top level): move {it} to "
                   f"{top_level}")
    for name in fields:
        if name not in _KNOWN_FIELDS and (near := _near_field(name)):
            out.append(f"{where(name)} looks like a typo of {near} (sent as written: OpenAI "
                       "refuses every row so, other servers ignore it)")
    model = fields.get("model")
    model = model if isinstance(model, str) else ""
    if not stream:
        out.extend(f"{where(name)} works only with streaming (gateways drop it otherwise, with "
                   f"no error): {set_stream}" for name in _needs_stream(fields))
    gemini_thinking = "-thinking" in model.lower() and _GEMINI_THINKING.search(model) is not None
    if gemini_thinking and not stream:
        out.append(f"{where('model')} {model} gives its reasoning (reasoning_content) only in a "
                   f"stream, though its thinking is billed: {set_stream} to record it")
    if gemini_thinking and fields.get("reasoning_effort") is not None and fields.get(
            "max_tokens") is not None:
        out.append(f"{where('reasoning_effort')} works with a -thinking model only without "
                   f"max_tokens (gateways ignore it otherwise): leave {where('max_tokens')} out "
                   "to use it")
    if fields.get("max_tokens") is not None and openai_reasoning(model):
        out.append(f"{where('max_tokens')} is refused by OpenAI for {model}, a reasoning model "
                   "(\"Unsupported parameter: 'max_tokens' ... Use 'max_completion_tokens' "
                   "instead\"), every row answered 400 unless a gateway renames it: "
                   + ("pass --max-completion-tokens instead"
                      if where("max_tokens") == "--max-tokens"
                      else f"set max_completion_tokens in {top_level.removesuffix(' itself')} "
                      "instead"))
    temperature = fields.get("temperature")
    if (temperature is not None and temperature != 1 and openai_reasoning(model)
            and fields.get("reasoning_effort") != "none"):
        out.append(f"{where('temperature')} {temperature} is refused by OpenAI for {model}, a "
                   "reasoning model (\"Unsupported value: 'temperature' does not support "
                   f"{temperature} with this model. Only the default (1) value is supported.\"), "
                   "every row answered 400 unless reasoning_effort is \"none\": leave it out")
    if model.lower().startswith("qwen") and isinstance(fields.get("parameters"), dict):
        top = [name for name in _QWEN_PARAMETERS if fields.get(name) is not None]
        if top:
            it = "it" if len(top) == 1 else "them"
            out.append(f"{', '.join(map(where, top))} {'is' if len(top) == 1 else 'are'} sent "
                       "at the body's top level, where gateways that take Qwen's settings in a "
                       f"parameters object ignore {it}: move {it} into {where('parameters')}")
    return out


def ask_for_usage(body: dict[str, Any]) -> None:
    """Make a streaming request ask for the usage chunk (``stream_options.include_usage``),
    unless its ``stream_options`` say otherwise: a stream reports no tokens without it, and
    the cost is then unknown. ``stream_options`` that only say ``include_usage: false`` are
    left out, which says the same to the API, for endpoints that refuse the field."""
    options = body.get("stream_options")
    if options is None or (isinstance(options, dict) and "include_usage" not in options):
        body["stream_options"] = {**(options or {}), "include_usage": True}
    elif options == {"include_usage": False}:
        del body["stream_options"]


def _needs_stream(fields: dict[str, Any]) -> list[str]:
    """Which of a request's fields work only with streaming."""
    needs = []
    if fields.get("enable_thinking") is True:  # Qwen: turned off, not refused, without stream
        needs.append("enable_thinking")
    # Gemini through a gateway: in the body's extra_body, or at its top level (where the
    # OpenAI SDK's extra_body={"google": ...} puts it).
    extra_body = fields.get("extra_body")
    for name, google in (("extra_body.google", extra_body.get("google")
                          if isinstance(extra_body, dict) else None),
                         ("google", fields.get("google"))):
        if isinstance(google, dict) and "thinking_config" in google:
            needs.append(f"{name}.thinking_config")
    return needs


def _is_null(v: Any) -> bool:
    """A value a prompt cannot be made from: null, or NaN (a null number read by pandas)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def column_list(columns: Sequence[str], wanted: str) -> str:
    """``columns: a, b, c`` for a message about a missing column ``wanted``: names with
    surrounding spaces quoted, and the one ``wanted`` misses only by them pointed out."""
    if not columns:
        return "columns: none"
    shown = ", ".join(repr(c) if c != c.strip() or not c or "\t" in c else c for c in columns)
    near = next((c for c in columns if c != wanted and c.strip() == wanted.strip()), None)
    if near is not None:
        return f"columns: {shown}; {near!r} has spaces around its name"
    if not wanted or (len(columns) == 1 and any(sep in columns[0] for sep in ";\t|")):
        return f"columns: {shown}"  # a header not split (delimiter_hint says why): no name
    import difflib  # a message's only
    import unicodedata

    # The same name to the eye, its letters spelt with other code points (é as e and a
    # combining accent, as macOS writes file and column names): named so, as the two print alike.
    same = unicodedata.normalize("NFC", wanted)
    if (twin := next((c for c in columns if unicodedata.normalize("NFC", c) == same), None)):
        return (f"columns: {shown}; {twin!r} is that name with its accents written as other "
                "Unicode characters (a letter and a combining accent): copy the name from the "
                "input into the job, or save the input's header in the usual form (NFC)")

    # The one meant: the same name in another case (SKU for sku), else a near miss, else the
    # one column the name is a word of (id for ticket_id, name for Product Name).
    meant = next((c for c in columns if c.lower() == wanted.lower()), None) or next(
        iter(difflib.get_close_matches(wanted, columns, n=1, cutoff=0.75)), None)
    if meant is None:
        word = wanted.lower()
        having = [c for c in columns if word in re.split(r"[^0-9a-z]+", c.lower())]
        meant = having[0] if len(having) == 1 else None
    return f"columns: {shown}" + (f"; did you mean {meant!r}?" if meant is not None else "")


_BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False}


class _NotA(ValueError):
    """A column's value that is not what its body field takes (``kind``: "an integer", ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _field_value(name: str, v: Any) -> Any:
    """``v`` (a row's value, not null) as body field ``name`` takes it; _NotA if it cannot."""
    if name in INTEGER_FIELDS:
        if isinstance(v, str):
            try:
                v = float(v.strip()) if "." in v or "e" in v.lower() else int(v.strip())
            except ValueError:
                raise _NotA("an integer") from None
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise _NotA("an integer")
        return v
    if name in NUMBER_FIELDS:
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise _NotA("a number") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _NotA("a number")
        return v
    if name in TEXT_FIELDS:
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # 123.0: an integer id read as a decimal
        return v if isinstance(v, str) else str(v)
    if name in BOOLEAN_FIELDS:
        if isinstance(v, str):
            v = _BOOLEAN_WORDS.get(v.strip().lower(), v)
        elif isinstance(v, int) and v in (0, 1):
            v = bool(v)
        if not isinstance(v, bool):
            raise _NotA("true or false")
    if isinstance(v, str) and name in JSON_FIELDS:
        try:
            v = orjson.loads(v)
        except orjson.JSONDecodeError:
            raise _NotA("a JSON object or array") from None
    if name in JSON_FIELDS and not isinstance(v, dict | list):
        raise _NotA("a JSON object or array")
    if isinstance(v, str) and name in JSON_OR_TEXT_FIELDS and v.lstrip()[:1] in ("{", "["):
        # JSON when it reads as what the field takes (a list of stop strings, a tool_choice
        # object), else the text as it is: "[END]" is a stop string.
        try:
            parsed = orjson.loads(v)
        except orjson.JSONDecodeError:
            parsed = None
        if (isinstance(parsed, list) and name == "stop"
                and all(isinstance(x, str) for x in parsed)) or (
                isinstance(parsed, dict) and name == "tool_choice"):
            v = parsed
    return v


def _plain(name: str) -> bool:
    return not any(c in name for c in ".[]")


class RequestBuilder:
    """Turns a row (a dict of column → value) into a chat completion request body."""

    def __init__(self, request: RequestConfig, columns: Sequence[str], where: str,
                 base_dir: Path | None = None, *, by_options: bool = False,
                 options: Collection[str] = ()) -> None:
        self.request = request
        self.by_options = by_options  # the job is given by options alone: named so in warnings
        self.options = options  # those of a job file's settings the command line gives
        self.base_dir = base_dir or Path.cwd()
        self.template: Template | None = None
        if request.prompt is not None:
            self.template = Template(request.prompt)
            self.template.check(columns, where, rows_vary=bool(
                request.image_column or request.model_column or request.from_columns))
        elif request.prompt_column is not None:
            if request.prompt_column not in columns:
                raise ConfigError(
                    f"prompt_column {request.prompt_column!r} is not a column of {where} "
                    f"({column_list(columns, request.prompt_column)}){delimiter_hint(columns)}"
                )
        else:
            raise ConfigError("no prompt: pass --prompt TEMPLATE or --prompt-column COL (or "
                              "set [request] prompt or prompt_column in the job file)")
        if request.model_column is not None and request.model_column not in columns:
            raise ConfigError(
                f"model_column {request.model_column!r} is not a column of {where} "
                f"({column_list(columns, request.model_column)})"
            )
        if request.image_column is not None and request.image_column not in columns:
            raise ConfigError(
                f"image_column {request.image_column!r} is not a column of {where} "
                f"({column_list(columns, request.image_column)})"
            )
        for name, column in request.from_columns.items():
            if column not in columns:
                raise ConfigError(
                    f"from_columns {name} = {column!r}: not a column of {where} "
                    f"({column_list(columns, column)})"
                )
        self._from_columns = tuple(request.from_columns.items())
        if request.model is None and request.model_column is None:
            raise ConfigError("no model: pass --model NAME (or set [request] model in the job "
                              "file)")
        base: dict[str, Any] = {}
        for key in ("temperature", "max_tokens", "top_p", "stop", "response_format"):
            value = getattr(request, key)
            if value is not None:
                base[key] = value
        if request.stream:
            base["stream"] = True
        base.update(request.extra)
        if request.streams:
            ask_for_usage(base)
        self._base = base
        # The job's tools and response_format, billed as prompt tokens on every row; counted
        # from each row's body where the rows set them (from_columns).
        self._definition_tokens = estimate_tokens(_definitions_text(base))
        self._row_definitions = any(name in request.from_columns for name in _DEFINITIONS)
        self._system = request.system
        self._job_warnings: frozenset[str] | None = None  # request_warnings, for row_warnings
        # The columns whose values are the prompt's text (see ``arrow.prompt_text``).
        self.text_columns: tuple[str, ...] = tuple(
            dict.fromkeys(self.template.fields if self.template else [request.prompt_column or ""]))
        self.needed_columns: tuple[str, ...] = tuple(
            dict.fromkeys(
                [
                    *self.text_columns,
                    *([request.model_column] if request.model_column else []),
                    *([request.image_column] if request.image_column else []),
                    *request.from_columns.values(),
                ]
            )
        )

    @property
    def rows_vary(self) -> bool:
        """Whether rows have settings of their own (a model, body fields from columns)."""
        return bool(self.request.model_column or self.request.from_columns)

    def row_warnings(self, body: dict[str, Any]) -> list[str]:
        """``request_warnings`` for one row's body, when the rows' own settings (``rows_vary``)
        ask for what a gateway drops: those the job's settings alone do not already."""
        req = self.request
        if self._job_warnings is None:
            self._job_warnings = frozenset(request_warnings(
                req, by_options=self.by_options, options=self.options))
        return [w for w in _warnings(body, body.get("stream") is True,
                                     *_job_names(req, self.by_options, self.options))
                if w not in self._job_warnings]

    def prompt_tokens(self, body: dict[str, Any], prompt: str) -> int:
        """The prompt tokens of a row's ``body`` built from ``prompt``, estimated as
        ``body_prompt_tokens`` does a batch row's: its text, tools, response_format, and
        its image if the job has an image column."""
        tokens = estimate_tokens(prompt + (self._system or ""))
        tokens += (estimate_tokens(_definitions_text(body)) if self._row_definitions
                   else self._definition_tokens)
        if self.request.image_column:
            tokens += body_image_tokens(body)  # the row's image, if it has one
        return tokens

    def prompt(self, row: dict[str, Any]) -> str | None:
        if self.template is not None:
            return self.template.render(row)
        v = row[self.request.prompt_column or ""]
        if _is_null(v):
            return None
        return v if isinstance(v, str) else str(v)

    def _null_column(self, row: dict[str, Any]) -> str:
        """The first column the prompt needs whose value in ``row`` is null."""
        names = self.template.fields if self.template is not None else (
            self.request.prompt_column or "",)
        return next((n for n in names if _is_null(row[n])), names[0])

    def build(self, row: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The body for ``row`` and its prompt, or ``(None, reason)`` if the row cannot be sent."""
        prompt = self.prompt(row)
        if prompt is None:
            return None, f"column {self._null_column(row)!r} is null, and the prompt needs it"
        if not prompt.strip():
            return None, "the prompt is empty"
        t = self.template
        if t is not None and t.fields:
            # A loop, not all() over a generator, which cost some 6,300 instructions a row more
            # (the generator made, and closed at the first column that has text).
            for name in t.fields:
                if str(row[name]).strip():
                    break
            else:
                return None, f"the prompt's columns are empty ({', '.join(t.fields)})"
        model = self.request.model
        if self.request.model_column is not None:
            m = row[self.request.model_column]
            if m is not None and str(m).strip():
                model = str(m).strip()  # a cell's stray spaces are not the model's name
        if not model:
            return None, f"column {self.request.model_column!r} has no model for this row"
        content: str | list[dict[str, Any]] = prompt
        if self.request.image_column is not None:
            ref = row[self.request.image_column]
            if ref is not None and str(ref).strip():
                try:
                    url = image_url(str(ref).strip(), self.base_dir)
                except OSError as e:
                    # The path read, and why not: a relative one is the input's folder's.
                    return None, (f"image {str(ref)[:80]!r} cannot be read "
                                  f"({e.strerror or type(e).__name__}: {e.filename}; a "
                                  "relative path is read from the input file's folder)")
                content = [{"type": "text", "text": prompt},
                           {"type": "image_url", "image_url": {"url": url}}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if self._system:
            messages.insert(0, {"role": "system", "content": self._system})
        body = {"model": model, "messages": messages, **self._base}
        for name, column in self._from_columns:
            v = row[column]
            if _is_null(v) or (isinstance(v, str) and not v.strip()):
                continue  # the job's own setting, if any
            try:
                body[name] = _field_value(name, v)
            except _NotA as e:
                return None, f"column {column!r} holds {str(v)[:40]!r}, not {e.kind} for {name}"
        return body, prompt


def image_url(ref: str, base_dir: Path) -> str:
    """An ``http(s)``/``data:`` URL as it is; a file path (relative: to ``base_dir``) as a
    base64 ``data:`` URL. OSError: the file cannot be read."""
    if ref.startswith(("http://", "https://", "data:")):
        return ref
    path = Path(ref)
    if not path.is_absolute():
        path = base_dir / path
    data = path.read_bytes()
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: The prompt tokens an image is billed at the least: OpenAI's at low detail, and the base of one
#: at high detail, which adds ``TILE_TOKENS`` for each 512-pixel tile of its size (the built-in
#: simulator bills every image this least). GPT-4o's, GPT-4.1's and most gateways' rates.
IMAGE_TOKENS = 85
TILE_TOKENS = 170
#: The models OpenAI bills images otherwise, by the start of their name (after a gateway's
#: ``provider/`` prefix; longer names first): a tile model's base and tile tokens, or a patch
#: model's multiplier of the 32-pixel patches that cover the image (at most ``MAX_PATCHES``).
_TILE_RATES: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 2833, 5667), ("computer-use-preview", 65, 129),
    ("gpt-5", 70, 140), ("o1", 75, 150), ("o3", 75, 150))
_PATCH_RATES: tuple[tuple[str, float], ...] = (
    ("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46), ("o4-mini", 1.72))
MAX_PATCHES = 1536


def body_prompt_tokens(body: dict[str, Any]) -> int:
    """A body's prompt tokens, estimated: its text (``body_prompt_text``) at four characters a
    token, and its images (``body_image_tokens``)."""
    return estimate_tokens(body_prompt_text(body)) + body_image_tokens(body)


def body_image_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens of the images (``image_url`` parts) of a body's messages: by OpenAI's
    rule for its model and detail (``image_tokens``)."""
    tokens = 0
    model = body.get("model")
    for m in _messages(body):
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list):
            tokens += sum(image_tokens(p.get("image_url"), model) for p in c
                          if isinstance(p, dict) and p.get("type") == "image_url")
    return tokens


def image_tokens(image: Any, model: Any = None) -> int:
    """The prompt tokens of an ``image_url`` part's image (``{"url", "detail"}``) sent to
    ``model``, by OpenAI's rule. A tile model's base (``IMAGE_TOKENS`` for most) at low detail;
    at high or auto detail (the default), that and its tile tokens (``TILE_TOKENS``) a 512-pixel
    tile of the image scaled to fit 2048 × 2048 and then down to 768 pixels on its shorter side.
    A patch model (``_PATCH_RATES``) at any detail: its multiplier of the 32-pixel patches that
    cover the image, scaled down to ``MAX_PATCHES`` of them. The size is read from a ``data:``
    URL's first bytes (PNG, JPEG, GIF, WebP); an image by ``http(s)`` URL, whose size is not
    known here, counts the base, or a patch model's one patch, a lower bound."""
    base, tile, multiplier = _image_rates(model if isinstance(model, str) else "")
    url = image.get("url") if isinstance(image, dict) else None
    if multiplier is None and (not isinstance(image, dict) or image.get("detail") == "low"):
        return base
    size = _data_url_size(url) if isinstance(url, str) and url.startswith("data:") else None
    if multiplier is not None:
        return math.ceil(multiplier * (1 if size is None else _patches(*size)))
    if size is None:
        return base
    width, height = size
    scale = min(1.0, 2048 / max(width, height))
    scale *= min(1.0, 768 / (min(width, height) * scale))
    tiles = math.ceil(int(width * scale) / 512) * math.ceil(int(height * scale) / 512)
    return base + tile * tiles


@functools.lru_cache(maxsize=64)
def _image_rates(model: str) -> tuple[int, int, float | None]:
    """A model's image rates: (base, tile, None) for a tile model, (0, 0, multiplier) for a
    patch model."""
    name = model.rpartition("/")[2].lower()
    for start, multiplier in _PATCH_RATES:
        if name.startswith(start):
            return 0, 0, multiplier
    for start, base, tile in _TILE_RATES:
        if name.startswith(start):
            return base, tile, None
    return IMAGE_TOKENS, TILE_TOKENS, None


def _patches(width: int, height: int) -> int:
    """The 32-pixel patches that cover an image, scaled down (to whole patches across) when
    more than ``MAX_PATCHES`` would."""
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= MAX_PATCHES:
        return patches
    shrink = math.sqrt(MAX_PATCHES * 32 * 32 / (width * height))
    shrink *= min(math.floor(width * shrink / 32) / (width * shrink / 32),
                  math.floor(height * shrink / 32) / (height * shrink / 32))
    across, down = math.ceil(int(width * shrink) / 32), math.ceil(int(height * shrink) / 32)
    return min(MAX_PATCHES, across * down)


def _data_url_size(url: str) -> tuple[int, int] | None:
    """The width and height of a base64 ``data:`` URL's image, from its header: the first
    bytes, decoded alone (a JPEG's, segment by segment up to its frame header). None when the
    URL is not base64, the image not one of PNG, JPEG, GIF, WebP, or its header damaged."""
    comma = url.find(",", 0, 256)
    if comma < 0 or not url[:comma].endswith(";base64"):
        return None
    at = comma + 1  # where the base64 text starts: it is not copied

    def read(start: int, n: int) -> bytes:  # bytes [start, start + n) of the image
        first = start // 3
        try:
            raw = base64.b64decode(url[at + 4 * first:at + 4 * -(-(start + n) // 3)])
        except ValueError:  # not base64 there (spaces in it, or cut short)
            return b""
        return raw[start - 3 * first:start - 3 * first + n]

    head = read(0, 30)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            w, h = struct.unpack(">II", head[16:24])
        elif head[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", head[6:10])
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            w, h = _webp_size(head)
        elif head[:2] == b"\xff\xd8":
            w, h = _jpeg_size(read)
        else:
            return None
    except (struct.error, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _webp_size(head: bytes) -> tuple[int, int]:
    """A WebP image's size from its first 30 bytes (lossy, lossless or extended)."""
    kind = head[12:16]
    if kind == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    raise ValueError(kind)


# JPEG's start-of-frame markers (baseline, progressive, ...), whose segment holds the size.
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF})


def _jpeg_size(read: Callable[[int, int], bytes]) -> tuple[int, int]:
    """A JPEG's size from its frame header, reached by skipping the segments before it (EXIF
    data, thumbnails): 9 bytes read a segment, 64 segments at most."""
    at = 2
    for _ in range(64):
        segment = read(at, 9)
        if len(segment) < 4 or segment[0] != 0xFF:
            break
        if segment[1] == 0xFF:  # fill byte
            at += 1
            continue
        if segment[1] in _JPEG_FRAMES:
            h, w = struct.unpack(">HH", segment[5:9])
            return w, h
        at += 2 + struct.unpack(">H", segment[2:4])[0]
    raise ValueError("no frame header")


def _messages(body: dict[str, Any]) -> list[Any]:
    """A body's messages; none when they are not a list (the endpoint refuses the row)."""
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def body_prompt_text(body: dict[str, Any]) -> str:
    """All the text of a body an API bills as prompt tokens, for token estimates (OpenAI batch
    rows come as bodies): its messages' text, the earlier turns' tool calls, and the
    definitions of its tools and of its response_format's schema, as JSON."""
    texts: list[str] = []
    billed: list[Any] = [body.get(name) for name in _DEFINITIONS]
    for m in _messages(body):
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            texts.append(c)
        elif isinstance(c, list):  # parts: text, and images whose tokens are not told here
            texts.extend(t for p in c
                         if isinstance(p, dict) and isinstance(t := p.get("text"), str))
        if "tool_calls" in m:
            billed.append(m["tool_calls"])
    texts.extend(text for value in billed if value and (text := _as_json(value)))
    return "\n".join(texts)


# A body's fields whose definitions an API bills as prompt tokens, read as JSON.
_DEFINITIONS = ("tools", "response_format")


def _definitions_text(body: dict[str, Any]) -> str:
    """A body's ``_DEFINITIONS`` as JSON text, for token estimates."""
    return "\n".join(text for name in _DEFINITIONS
                     if (v := body.get(name)) and (text := _as_json(v)))


def _as_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits: the endpoint refuses the row
        return ""
