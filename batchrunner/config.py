"""A job's settings: frozen keyword-only dataclasses, loaded from TOML and command-line overrides.

A job file has these tables (every key optional unless marked)::

    name = "nightly-descriptions"

    [input]
    path = "../sample_data/products.csv"   # required; relative paths are relative to the job file
    id_column = "sku"                      # else a row's position, tied to the input's fingerprint

    [request]
    model = "gpt-4o-mini"                  # required unless model_column or an OpenAI batch file
    system = "You write product copy."
    prompt = "Describe {name} in one sentence."   # or prompt_column = "prompt"
    temperature = 0.2
    max_tokens = 200
    top_p = 1.0
    stop = ["\\n\\n"]
    response_format = { type = "json_object" }
    schema_file = "answer.schema.json"     # a JSON Schema: replies are validated and spread
                                           # into json_<property> columns of the results
    model_column = "model"                 # per-row model override
    image_column = "photo"                 # image URL or file path (relative to the input
                                           # file), sent as an image_url part for vision models
    stream = false                         # read the reply as an SSE stream (records ttft_ms)
    [request.extra]                        # passed into the body unchanged (thinking, ...)
    [request.from_columns]                 # body fields set from each row's columns
    user = "customer_id"                   # (a blank value leaves the job's own setting)

    [endpoint]
    base_url = "https://api.openai.com/v1" # else $OPENAI_BASE_URL; or simulator = true
    base_url_env = "OPENAI_BASE_URL"       # which variable holds the URL when base_url is unset
    api_key_env = "OPENAI_API_KEY"
    simulator = false                      # run against the built-in simulator

    [limits]
    requests_per_minute = 500
    tokens_per_minute = 200000
    concurrency = 64                       # default: sized from the rate limit and latency
    timeout_s = 120
    max_attempts = 6
    max_cost_usd = 25.0                    # stop before the job's spend could pass this
    outage_wait_s = 300                    # an endpoint that answered before, then refuses
                                           # connections (or its gateway answers 502/503/504),
                                           # is waited for this long; 0: not at all

    [output]
    dir = "../out/nightly"                 # required
    format = "parquet"                     # or csv, jsonl

    [prices."my-model"]                    # USD per 1M tokens, overrides the price library
    input = 0.15
    output = 0.60
    cached_input = 0.075
    # cache_write = 0.1875                 # a prompt token written to the cache (Anthropic's)
    # cache_write_1h = 0.30                # one written to it for an hour
    # input_audio = 32                     # an audio token of the prompt (gpt-audio's input)
    # output_audio = 64                    # one of a spoken answer (modalities audio)
    # search_unit = 0.025                  # USD per search unit a reply's usage reports
    # search_request = 0.0275              # USD per request asking for search its usage omits

    [simulator]                            # options of the built-in simulator
    latency_ms = 200
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from batchrunner.errors import ConfigError

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_OUTAGE_WAIT_S",
    "DEFAULT_TIMEOUT_S",
    "LONG_SECRET",
    "EndpointConfig",
    "InputConfig",
    "JobConfig",
    "Limits",
    "NoOutputDir",
    "OutputConfig",
    "Proxy",
    "RequestConfig",
    "cache_dir",
    "is_loopback",
    "load_dotenv",
    "load_job",
    "openai_named",
    "openai_reasoning",
    "proxy_for",
    "secrets_known",
]


class NoOutputDir(ConfigError):
    """The job names no output directory (``estimate`` can do without one)."""


DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_PORTS = {"http": 80, "https": 443}
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_ATTEMPTS = 6
# An endpoint that answered (in this run, or an earlier one) and then cannot be reached is
# waited for this long before the job stops: a restart, or a reboot and a model's load.
DEFAULT_OUTAGE_WAIT_S = 300.0
OUTPUT_FORMATS = ("parquet", "csv", "jsonl")


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    path: Path
    id_column: str | None = None


@dataclass(frozen=True, kw_only=True)
class RequestConfig:
    model: str | None = None
    system: str | None = None
    prompt: str | None = None
    prompt_column: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    model_column: str | None = None
    stream: bool = False
    schema_file: str | None = None
    image_column: str | None = None
    from_columns: dict[str, str] = field(default_factory=dict)  # body field → input column

    @property
    def streams(self) -> bool:
        """Whether the requests stream: ``stream``, or ``"stream": true`` among the body fields
        of ``extra`` (as a gateway's guide writes it)."""
        return self.stream or self.extra.get("stream") is True

    def settings(self) -> dict[str, Any]:
        """What shapes the request bodies, for the job's fingerprint (unset fields left out,
        so adding a setting to batchrunner does not change the fingerprint of older jobs)."""
        return {f.name: v for f in fields(self)
                if (v := getattr(self, f.name)) is not None and v is not False and v != {}}


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    base_url: str | None = None
    base_url_env: str = DEFAULT_BASE_URL_ENV
    api_key_env: str = DEFAULT_API_KEY_ENV
    simulator: bool = False


@dataclass(frozen=True, kw_only=True)
class Limits:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    concurrency: int | None = None  # None: sized from the rate and the latency
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_cost_usd: float | None = None
    outage_wait_s: float = DEFAULT_OUTAGE_WAIT_S  # 0: an outage stops the job at once


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    dir: Path
    format: str = "parquet"


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    name: str
    input: InputConfig
    request: RequestConfig
    endpoint: EndpointConfig
    limits: Limits
    output: OutputConfig
    prices: dict[str, Any] = field(default_factory=dict)
    simulator: dict[str, Any] = field(default_factory=dict)
    source: str = "command line"
    # The command-line options given (names of OVERRIDES, as the CLI passed them), for the
    # command that resumes the job (job.json's ``command``).
    options: dict[str, Any] = field(default_factory=dict)


_TABLES = ("input", "request", "endpoint", "limits", "output", "prices", "simulator")

# Command-line option name → (table, key). The CLI passes overrides with these names.
OVERRIDES: dict[str, tuple[str, str]] = {
    "name": ("", "name"),
    "input": ("input", "path"),
    "id_column": ("input", "id_column"),
    "model": ("request", "model"),
    "system": ("request", "system"),
    "prompt": ("request", "prompt"),
    "prompt_column": ("request", "prompt_column"),
    "temperature": ("request", "temperature"),
    "max_tokens": ("request", "max_tokens"),
    # Set into [request.extra], where a job file sets it: a reasoning model's max_tokens.
    "max_completion_tokens": ("request.extra", "max_completion_tokens"),
    "top_p": ("request", "top_p"),
    "stop": ("request", "stop"),
    "model_column": ("request", "model_column"),
    "stream": ("request", "stream"),
    "schema_file": ("request", "schema_file"),
    "image_column": ("request", "image_column"),
    "from_columns": ("request", "from_columns"),
    "base_url": ("endpoint", "base_url"),
    "base_url_env": ("endpoint", "base_url_env"),
    "api_key_env": ("endpoint", "api_key_env"),
    "simulator": ("endpoint", "simulator"),
    "requests_per_minute": ("limits", "requests_per_minute"),
    "tokens_per_minute": ("limits", "tokens_per_minute"),
    "concurrency": ("limits", "concurrency"),
    "timeout_s": ("limits", "timeout_s"),
    "max_attempts": ("limits", "max_attempts"),
    "max_cost_usd": ("limits", "max_cost_usd"),
    "outage_wait_s": ("limits", "outage_wait_s"),
    "output": ("output", "dir"),
    "format": ("output", "format"),
}


# Command-line option spelled out for a name of OVERRIDES, where it is not ``--name-with-dashes``.
_OPTION_NAMES = {
    "requests_per_minute": "--rpm",
    "tokens_per_minute": "--tpm",
    "timeout_s": "--timeout",
    "max_cost_usd": "--max-cost",
    "outage_wait_s": "--outage-wait",
    "from_columns": "--from-column",
}


def option_name(override: str) -> str:
    """The command-line option that sets ``override`` (a key of ``OVERRIDES``): ``--rpm``."""
    return _OPTION_NAMES.get(override, "--" + override.replace("_", "-"))


_SHORT_SETTING = 40  # the longest value a changed setting is shown with (a model's name)
# A secret this long is taken out wherever it stands; a shorter one (a placeholder key such as
# "x" for a local server, a proxy password) only where it stands alone, not inside a longer
# word: redacting "x" everywhere would turn "proxy" into "pro[redacted]y".
LONG_SECRET = 16
# What job.json holds in place of a key written in the request settings.
_REDACTED = "[redacted]"


# OpenAI's reasoning models, which refuse max_tokens ("Unsupported parameter: 'max_tokens' is
# not supported with this model. Use 'max_completion_tokens' instead.") and a temperature other
# than 1, and bill reasoning tokens they return no text of: the o-series (o1, o3-mini, o4-mini,
# ...), GPT-5 (gpt-5, gpt-5-mini, gpt-5-nano, gpt-5.1, gpt-5.2-pro, gpt-5.1-codex-max, ...) and
# codex-mini; plain, dated or behind a gateway's provider prefix (openai/o4-mini). The chat
# models among those names (gpt-5-chat-latest, gpt-5.1-chat-latest) do not reason and take both.
_OPENAI_NAMES = re.compile(r"(?:^|/)(?:o[134]|gpt-5|codex-mini)(?:[-.][a-z0-9.-]*)?$",
                           re.IGNORECASE)


def openai_named(model: str) -> bool:
    """Whether ``model`` is one of the names :func:`openai_reasoning` decides on (o-series,
    GPT-5 and its chat models, codex-mini), reasoning or not."""
    return _OPENAI_NAMES.search(model) is not None


def openai_reasoning(model: str) -> bool:
    """Whether ``model`` names one of OpenAI's reasoning models (o-series, GPT-5 but its chat
    models, codex-mini)."""
    return _OPENAI_NAMES.search(model) is not None and "-chat" not in model.lower()


# Gemini models that think unless a request turns it off (a thinking budget of 0, reasoning_effort
# "none", a gateway's -nothinking name): Gemini 2.5 Pro and Flash (not Flash-Lite nor Flash
# Image) and Gemini 3, whose thinking_level defaults to HIGH, Gemini 3 Pro Image among them
# (nano-banana-pro, as ai-nebula lists it with Gemini's -thinking and -nothinking names).
_GEMINI_THINKS = re.compile(r"(?:gemini-(?:2\.5-(?:pro|flash(?!-lite|-image))|3)|nano-banana-pro)"
                            r"(?!.*nothinking)",
                            re.IGNORECASE)


def gemini_thinks(model: str) -> bool:
    """Whether ``model`` names a Gemini model that thinks unless the request turns it off."""
    return _GEMINI_THINKS.search(model) is not None


def gemini_thinking(body: Mapping[str, Any], stream: bool) -> tuple[str, bool | None, Any]:
    """Gemini's thinking as a request sets it, as a gateway reads it: ``thinking_config`` in
    ``extra_body.google`` (or ``google``, where the OpenAI SDK's ``extra_body=`` puts it), a
    stream's only (a gateway drops it from other requests), else Gemini's own
    ``generationConfig.thinkingConfig``. (where it is set, whether it turns thinking on or off,
    its budget): off with a budget of 0, on with another budget or a thinking level, None
    (as the model does) where nothing is set. The one rule of the simulator and the estimate."""
    extra = body.get("extra_body")
    found: list[tuple[str, Any, str]] = []
    if stream:
        found += [("extra_body.google.thinking_config", google.get("thinking_config"),
                   "thinking_budget")
                  for google in (extra.get("google") if isinstance(extra, Mapping) else None,
                                 body.get("google")) if isinstance(google, Mapping)]
    gen = body.get("generationConfig")
    if isinstance(gen, Mapping):
        found.append(("generationConfig.thinkingConfig", gen.get("thinkingConfig"),
                      "thinkingBudget"))
    for where, config, name in found:
        if isinstance(config, Mapping):
            budget = config.get(name)
            if budget == 0:
                return where, False, 0
            if budget is not None or config.get("thinkingLevel") or config.get("thinking_level"):
                return where, True, budget
    return "", None, None


# A thinking budget a gateway reads from a model's name ("gemini-2.5-flash-thinking-8192"): the
# estimate's bound on a row's thinking, and the simulator's.
THINKING_BUDGET_SUFFIX = re.compile(r"-thinking-(\d+)$", re.IGNORECASE)


def gemini_named(model: str) -> bool:
    """Whether ``model`` names a Gemini model: ``gemini-...``, or Gemini's image models by the
    name gateways give them (``nano-banana-pro``)."""
    name = model.lower()
    return "gemini" in name or "nano-banana" in name


# Other providers' models that reason before they answer whose names do not say so (OpenAI's
# follow openai_reasoning; names that say so, _NAMED_REASONING): the simulator's
# reasoning_models by default, and models the estimate warns of thinking for.
REASONING_MODELS: tuple[str, ...] = (
    "deepseek-r1",
    "grok-4",
    "grok-3-mini",
    "grok-code-fast",
    "qwq",
    "gpt-oss",  # vLLM and the gateways return its reasoning as reasoning_content
    # Zhipu's and Moonshot's, which think unless thinking = {"type": "disabled"} (ai-nebula
    # lists them among its domestic models).
    "glm-4.7",
    "kimi-k2.5",
)


def listed_reasoning(model: str, listed: Sequence[str] = REASONING_MODELS) -> bool:
    """Whether ``model`` is one of ``listed``: an entry matches the name itself or the name
    followed by ``-``, ``.`` or ``:`` and more (Ollama's ``deepseek-r1:7b``), behind a provider
    prefix too (``openai/gpt-oss-20b``), but not a name with ``non-reasoning`` (``grok-4`` is
    not ``grok-4-fast-non-reasoning``)."""
    name = model.rsplit("/", 1)[-1].lower()
    return "non-reasoning" not in name and any(
        name == r or name.startswith((r + "-", r + ".", r + ":")) for r in map(str.lower, listed))


# Names that say their model reasons: DeepSeek's deepseek-reasoner, xAI's -reasoning models
# (grok-4-fast-reasoning, grok-4-1-fast-reasoning), and the -thinking names of the providers
# and gateways (kimi-k2-thinking, a gateway's gemini-2.5-flash-thinking-8192); not those named
# as not reasoning (-non-reasoning, -nothinking, -no-thinking, -non-thinking).
_NAMED_REASONING = re.compile(r"reasoner|(?<!non)-reasoning|(?<!no)(?<!no-)(?<!non-)thinking",
                              re.IGNORECASE)


def reasoning_model(model: str, listed: Sequence[str] = REASONING_MODELS) -> bool:
    """Whether ``model`` reasons before it answers unless a request turns it off: the one rule
    of the simulator (which makes it reason, ``listed`` its ``reasoning_models``) and the
    estimate (which warns of its thinking). OpenAI's names by ``openai_reasoning``; other
    names that say so (``_NAMED_REASONING``), Gemini's that think unasked (``gemini_thinks``)
    and those ``listed`` (``listed_reasoning``); behind a provider prefix too."""
    name = model.rsplit("/", 1)[-1]
    if openai_named(name):  # OpenAI's names: its rule, whatever the list says
        return openai_reasoning(name)
    return (_NAMED_REASONING.search(name) is not None or gemini_thinks(name)
            or listed_reasoning(name, listed))


def reasoning_turned_off(body: Mapping[str, Any]) -> bool:
    """Whether a request turns off the reasoning its model does by default
    (``reasoning_model``): ``reasoning_effort = "none"`` (GPT-5.1's and later, a gateway's for
    Gemini) or ``thinking = {"type": "disabled"}`` (GLM's, Kimi's, DeepSeek's). The one rule
    of the simulator and the estimate; Gemini's thinking budget of 0 is read apart."""
    thinking = body.get("thinking")
    return body.get("reasoning_effort") == "none" or (
        isinstance(thinking, Mapping) and thinking.get("type") == "disabled")


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """What job.json's ``request_fingerprint`` holds of a job's request ``settings``: a rerun
    whose settings' differs from it is refused (the answers would mix)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def setting_change(name: str, was: Any, now: Any) -> str:
    """A request setting that changed, as a rerun's refusal names it: with its old and new
    values where both are short or unset (a model renamed in the job file between two nights:
    "model: 'gpt-4o-mini' → 'gpt-4.1-mini'"), else its name alone (a long prompt, a schema)."""
    shown = ["not set" if v is None else repr(v) for v in (was, now)
             if v is None or isinstance(v, bool | int | float) or (
                 isinstance(v, str) and len(v) <= _SHORT_SETTING)]
    return f"{name}: {shown[0]} → {shown[1]}" if len(shown) == 2 else name


def settings_changed(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The request settings that differ between job.json's ``before`` (those the rows done
    were sent with) and ``now``, each as ``setting_change`` names it. A text job.json holds
    with ``[redacted]`` for the key (written in ``[request.extra]``) is the same as one with a
    key of LONG_SECRET characters or more in its place: it is not a change."""
    before = _limit_renamed(before, now)
    return [setting_change(k, before.get(k), now.get(k)) for k in sorted(set(before) | set(now))
            if not _same_setting(before.get(k), now.get(k))]


def _limit_renamed(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``before`` without its ``max_tokens`` where it is the limit ``now`` sends under
    ``max_completion_tokens`` alone: a job begun with --max-tokens N over a job file's
    [request.extra] max_completion_tokens N, whose bodies carried both (N each), now carry the
    one (``_one_token_limit``), the same limit. With two limits that differ, the one a server
    took is not known: a change."""
    limit = before.get("max_tokens")
    extra, extra_now = before.get("extra"), now.get("extra")
    if (limit is not None and now.get("max_tokens") is None and isinstance(extra, dict)
            and isinstance(extra_now, dict)
            and extra.get("max_completion_tokens") == limit
            == extra_now.get("max_completion_tokens")):
        return {k: v for k, v in before.items() if k != "max_tokens"}
    return before


def _same_setting(was: Any, now: Any) -> bool:
    if isinstance(was, dict) and isinstance(now, dict):
        return was.keys() == now.keys() and all(_same_setting(was[k], now[k]) for k in was)
    if isinstance(was, list) and isinstance(now, list):
        return len(was) == len(now) and all(map(_same_setting, was, now))
    if isinstance(was, str) and isinstance(now, str) and _REDACTED in was and was != now:
        hidden = f".{{{LONG_SECRET},}}".join(map(re.escape, was.split(_REDACTED)))
        return re.fullmatch(hidden, now, re.DOTALL) is not None
    return bool(was == now)


class _Fields:
    """Names a job setting in messages: the option when it came from the command line
    (``--rpm``), else the job file, table and key (``job x.toml: [limits] requests_per_minute``).
    """

    def __init__(self, where: str, from_cli: Mapping[tuple[str, str], str]) -> None:
        self.where = where
        self.from_cli = from_cli

    @property
    def prefix(self) -> str:
        """``job file FILE: `` for a job file; nothing for a job given by options alone."""
        return "" if self.where == "command line" else f"job file {self.where}: "

    def __call__(self, table: str, key: str) -> str:
        option = self.from_cli.get((table, key))
        if option is not None:
            return option
        return f"{self.prefix}[{table}] {key}" if table else f"{self.prefix}{key}"


def load_job(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any]) -> JobConfig:
    """Read a job file (if given), apply command-line ``overrides`` and validate everything.

    Paths in the file are relative to the file's directory; paths on the command line are
    relative to the current directory; ``~`` is the home directory in both. Every problem is a
    one-line ``ConfigError`` naming the option (when the value came from the command line) or
    the job file and its table and key.
    """
    raw: dict[str, Any] = {}
    where = "command line"
    base = Path.cwd()
    files: list[tuple[str, str, str, Path]] = []  # the job file's paths: table, key, as written
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.exists():
            raise ConfigError(f"job file {p}: not found — check the path")
        if not p.is_file():
            raise ConfigError(f"job file {p}: is not a file — give a .toml job file")
        if p.suffix.lower() in (".csv", ".parquet", ".jsonl", ".json", ".tsv"):
            from batchrunner.progress import shell_quote  # as every command printed

            raise ConfigError(f"{p} looks like an input file, not a job file — pass it as "
                              f"--input {shell_quote(str(p))} (the job argument is a .toml file)")
        import tomllib  # a job file's only: a run given on the command line need not pay for it

        try:
            text = p.read_text(encoding="utf-8-sig")
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"job file {p}: not valid TOML: {_one_line(str(e))}"
                              f"{_toml_fix(text, str(e))}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"job file {p}: not UTF-8 text — save it as UTF-8") from None
        except OSError as e:
            raise ConfigError(
                f"job file {p}: cannot be read ({e.strerror or type(e).__name__})"
            ) from None
        base = p.resolve().parent
        for table, key in (("input", "path"), ("output", "dir"), ("request", "schema_file")):
            t = raw.get(table)
            if isinstance(t, dict) and isinstance(t.get(key), str) and t[key]:
                written, t[key] = t[key], str((base / _home(t[key])).resolve())
                if key != "dir":
                    files.append((table, key, written, Path(t[key])))
    unknown = sorted(set(raw) - set(_TABLES) - {"name"})
    if unknown:
        tables = ", ".join(f"[{t}]" for t in _TABLES)
        raise ConfigError(f"job file {where}: unknown key {unknown[0]!r} (known: name, {tables})"
                          f"{_misplaced(unknown[0], '', {'name', *_TABLES})}")
    from_cli: dict[tuple[str, str], str] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        table, key = OVERRIDES[name]
        if (table == "input" and key == "path") or (table == "output" and key == "dir"):
            value = str(_home(value).resolve()) if value else value
        from_cli[(table, key)] = option_name(name)
        if table:
            t = raw
            for part in table.split("."):  # request.extra: the table inside [request]
                t = t.setdefault(part, {})
                if not isinstance(t, dict):
                    raise ConfigError(f"job file {where}: [{table}] must be a table")
            t[key] = value
        else:
            raw[key] = value
    for table, key, written, resolved in files:
        if (table, key) not in from_cli:  # one the command line overrides is never read
            _beside_the_file(Path(where), f"[{table}] {key}", written, resolved, base)
    job = _build(raw, _Fields(where, from_cli), Path(path).stem if path is not None else None)
    return replace(job, options={k: v for k, v in overrides.items() if v is not None})


def _beside_the_file(job_file: Path, setting: str, written: str, resolved: Path,
                     base: Path) -> None:
    """Refuse a path the job file names that is not there, when the same words name a file
    from the current directory: written as a path on the command line is, not from the file,
    which is what the user must be told (its error, else, names a file they never meant)."""
    if resolved.exists() or written.startswith("~") or Path(written).is_absolute():
        return
    meant = Path.cwd() / written
    if meant.exists():
        key = setting.rpartition(" ")[2]
        raise ConfigError(
            f"job file {job_file}: {setting} {written!r} is not found beside the job file "
            f"(paths in a job file are relative to it); for {meant} write {key} = "
            f"\"{Path(os.path.relpath(meant, base)).as_posix()}\"")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _home(path: str) -> Path:
    """``path`` with a leading ``~`` (or ``~user``) made the home directory, as a shell would:
    in a job file it was a directory named ``~`` beside the file. As in a shell, ``~name``
    where no user is called name is a file's name (``~data.csv``), left as it is."""
    if not path.startswith("~"):
        return Path(path)
    expanded = os.path.expanduser(path)
    if not expanded.startswith("~"):
        return Path(expanded)
    first = path.split("/")[0]
    if first == "~":  # no HOME, and no home for this user: not a directory named "~"
        raise ConfigError(f"{path}: cannot tell which home directory ~ stands for — write "
                          "the whole path")
    return Path(path)


def _table(raw: Mapping[str, Any], name: str, f: _Fields, cls: type) -> dict[str, Any]:
    t = raw.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(f"{f.prefix}[{name}] must be a table")
    known = {fl.name for fl in fields(cls)}
    for key in t:
        if key not in known:
            raise ConfigError(
                f"{f.prefix}unknown key {key!r} in [{name}] (known: {', '.join(sorted(known))})"
                f"{_misplaced(key, name, known)}"
            )
    return dict(t)


def _toml_fix(text: str, error: str) -> str:
    """The fix for the TOML ``error`` (tomllib's message) in ``text``, for the cases newcomers
    meet: a key given a bare word (``model = gpt-4o-mini``: text is quoted in TOML), a string
    not closed on its line, a backslash in a ``"..."`` string (a Windows path), a comma after
    a value, a table declared twice. Else "". A value that may be a key is never shown."""
    if (twice := re.match(r"Cannot declare \((.*)\) twice", error)) is not None:
        parts = re.findall(r"'([^']*)'", twice.group(1))
        return (f" — [{'.'.join(parts)}] is declared twice: put all its keys under one "
                "header" if parts else "")
    if error.startswith("Cannot overwrite a value"):
        return " — a key is set twice in one table: keep one"
    at = re.search(r"\(at line (\d+), column (\d+)\)", error)
    lines = text.splitlines()
    if at is None or not 0 < int(at.group(1)) <= len(lines):
        return ""
    line = lines[int(at.group(1)) - 1]
    if error.startswith("Illegal character '\\n'") and '"' in line:
        return (' — a string is not closed on its line: end it with " (text of many lines goes '
                'in triple quotes, """...""")')
    pair = re.fullmatch(r"\s*([\w.-]+)\s*=\s*(.*?)\s*(#.*)?", line)
    if pair is None:
        return ""
    key, value = pair.group(1), pair.group(2)
    hidden = _SECRET_NAME.search(key) is not None or ("/" not in value and _secret_like(value))
    if (name := _variable_reference(value)) is not None and not hidden:
        # model = ${NBILITY_MODEL}: a shell's way to name a variable, which TOML does not read
        option = {"model": "--model", "base_url": "--base-url"}.get(key.rpartition(".")[2])
        return (f" — a job file does not expand ${name}: write the value itself, in quotes"
                + (f", or, from a shell where {name} is set, pass {option} \"${name}\""
                   if option else ""))
    if error.startswith("Unescaped '\\'"):
        literal = value[1:-1] if value[:1] == value[-1:] == '"' and len(value) > 1 else None
        fixed = (f": {key} = '{_unkeyed(literal)}'" if literal is not None
                 and "'" not in literal and not hidden else "")
        return (" — a backslash in \"...\" starts an escape (\\n, \\t): write \\\\ for one, "
                f"or put the text in single quotes, which keep it as it is{fixed}")
    if error.startswith("Expected newline or end of document after a statement") and (
            line[int(at.group(2)) - 1:].lstrip().startswith(",")):
        return " — no comma after a value: TOML puts one key on a line (commas go in [ ] and { })"
    if not re.fullmatch(r"[A-Za-z][^#]*", value) or value in ("true", "false", "inf", "nan"):
        return ""
    if value.lower() in ("true", "yes", "on", "false", "no", "off"):
        truth = "true" if value.lower() in ("true", "yes", "on") else "false"
        return f" — a yes or no is true or false, in lower case: {key} = {truth}"
    if hidden:  # an API key pasted in (not shown): read from the environment, never a job file
        return (" — text goes in quotes; a key goes in no job file, but in the environment or a "
                ".env file (OPENAI_API_KEY, or the variable [endpoint] api_key_env names)")
    if key.rpartition(".")[2] in _NUMBER_KEYS:
        return f" — {key} takes a number, not text ({key} = 10, say)"
    if pair.group(3) and not any(_secret_like(w) for w in pair.group(3).split()):
        value = line.partition("=")[2].strip()  # a "#" in the text: TOML's comment start
    quoted = _unkeyed(value).replace("\\", "\\\\").replace('"', '\\"')
    return f" — text goes in quotes: {key} = \"{quoted}\""


def _unkeyed(text: str) -> str:
    """``text`` with each part between ``/?&=#:@`` that reads as a key (``_secret_like``) shown
    as [redacted]: a gateway's URL may hold the key in its path or query."""
    return re.sub(r"[^/?&=#:@\s]+",
                  lambda m: _REDACTED if _secret_like(m.group()) else m.group(), text)


# The keys of the job file's tables whose values are numbers, not text.
_NUMBER_KEYS = frozenset(f.name for c in (RequestConfig, Limits) for f in fields(c)
                         if re.search(r"\b(?:int|float)\b", str(f.type)))


def _misplaced(key: str, table: str, known: set[str]) -> str:
    """Where a key the job file has in the wrong table goes (in TOML, every key below a table's
    header is in that table), or the key of ``known`` (the table's) it is a typo of, for the
    message; else ""."""
    if key == "name" and table:
        return "; name goes at the top of the file, above the first [table]"
    for home, cls in (("input", InputConfig), ("request", RequestConfig),
                      ("endpoint", EndpointConfig), ("limits", Limits), ("output", OutputConfig)):
        if home != table and key in {fl.name for fl in fields(cls)}:
            return f"; it belongs in [{home}]: move it below that header"
    if table == "request" and key in BODY_FIELDS:
        return "; other request body fields go in [request.extra]"
    if key in _SDK_NAMES:
        return _SDK_NAMES[key]
    # A command-line option's name (rpm for --rpm, max_cost for --max-cost) written as a key.
    for name, (home, own) in OVERRIDES.items():
        if option_name(name).removeprefix("--").replace("-", "_") == key and own != key:
            where = f"[{home}] {own}" if home else own
            return f"; --{key.replace('_', '-')} on the command line is {where} in a job file"
    import difflib

    near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
    if not near:
        return ""
    # At the top of the file, a table is named as its header is written
    return f"; did you mean [{near[0]}]?" if not table and near[0] in _TABLES else (
        f"; did you mean {near[0]!r}?")


# The OpenAI SDK's client settings, as the gateways' guides set them (OpenAI(api_key=...,
# timeout=60, max_retries=2)), written into a job file under their names: what they are here.
_SDK_NAMES = {
    "max_retries": "; the OpenAI SDK's max_retries = N is [limits] max_attempts = N + 1 here (its "
                   "first try and N retries)",
    "timeout": "; the OpenAI SDK's timeout (seconds) is [limits] timeout_s here",
    "api_key": "; the key is read from the environment or a .env file, never from the job file: "
               "OPENAI_API_KEY, or the variable [endpoint] api_key_env names",
}


def _number(t: dict[str, Any], key: str, f: _Fields, *, integer: bool, positive: bool,
            table: str, at_most: float | None = None) -> None:
    if key not in t or t[key] is None:
        return
    v = t[key]
    ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{f(table, key)} must be {kind}, got {v!r}")
    if not math.isfinite(v):
        raise ConfigError(f"{f(table, key)} must be a finite number, got {v!r}")
    # --rpm 0 is read as 0.0: shown as 0
    shown = repr(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
    if positive and v <= 0:
        raise ConfigError(f"{f(table, key)} must be greater than 0, got {shown}")
    if not positive and v < 0:
        raise ConfigError(f"{f(table, key)} must not be negative, got {shown}")
    if at_most is not None and v > at_most:
        raise ConfigError(f"{f(table, key)} must be at most {at_most:g}, got {shown}")


def _string(t: dict[str, Any], key: str, f: _Fields, table: str, *,
            secret: bool = False) -> None:
    """Refuse a value of ``key`` that is not a non-empty string; with ``secret`` (an endpoint's
    setting: a key or a URL holding one may be written there, in a list, say), without
    showing it."""
    v = t.get(key)
    if v is not None and (not isinstance(v, str) or not v):
        got = (f"a {type(v).__name__} (not shown: it may hold the key)"
               if secret and v != "" else repr(v))
        if v == "" and (table, key) in f.from_cli:
            # --model "$NBILITY_MODEL", the variable set only in a .env file, which
            # batchrunner reads and the shell does not
            got += (" (a shell variable that is empty or unset? a .env file's variables are "
                    "batchrunner's, not the shell's: export it, or give the value itself)")
        raise ConfigError(f"{f(table, key)} must be a non-empty string, got {got}")


def _variable_name(t: dict[str, Any], key: str, f: _Fields) -> None:
    """Refuse an ``api_key_env`` or ``base_url_env`` that is not an environment variable's
    name: most likely the key (or the URL) itself, written where its variable's name goes. It
    is not shown: a key would end up in the log."""
    v = t.get(key)
    if v is None or (v.isascii() and v.isidentifier() and not _secret_like(v)):
        return
    if (name := _variable_reference(v)) is not None:
        raise ConfigError(f"{f('endpoint', key)} takes the variable's name, without $ or "
                          f"braces: {name}")
    if key == "base_url_env" and "://" in v:
        raise ConfigError(f"{f('endpoint', key)} holds a URL, not the name of the environment "
                          "variable that holds it — set the URL as --base-url ([endpoint] "
                          "base_url in a job file)")
    raise ConfigError(
        f"{f('endpoint', key)} must be the name of the environment variable that holds the "
        f"{'key' if key == 'api_key_env' else 'URL'}, like "
        f"{DEFAULT_API_KEY_ENV if key == 'api_key_env' else DEFAULT_BASE_URL_ENV}; its value "
        f"({len(v)} characters, not shown) is not a variable name — is it the "
        f"{'key' if key == 'api_key_env' else 'URL'} itself?")


_WRITTEN_REFERENCE = re.compile(r"\$(\{)?([A-Za-z_][A-Za-z0-9_]*)(?(1)\})")


def _variable_reference(value: str) -> str | None:
    """The name in a ``$NAME`` or ``${NAME}`` written as a whole setting (a shell's or docker
    compose's way to name a variable, which a job file or an option does not expand), if it is
    one and reads as a name, not as a key."""
    m = _WRITTEN_REFERENCE.fullmatch(value.strip())
    return m[2] if m and not _secret_like(m[2]) else None


def _dotted_key(key: str, value: Any) -> str | None:
    """``gpt-4.1-mini`` for ``key`` ``gpt-4`` whose ``value`` is ``{"1-mini": {...}}``: a model's
    price table written with a bare dotted name, which TOML reads as tables in tables (a price
    table holds numbers only); else None."""
    if isinstance(value, dict):
        for inner, more in value.items():
            if isinstance(more, dict):
                return _dotted_key(f"{key}.{inner}", more) or f"{key}.{inner}"
    return None


def _check_output_dir(out: Path, what: str) -> None:
    """Refuse an output directory that is a file, or below one (it could never be created)."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{what} {out} is a file, not a directory — choose another directory")
        return
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{what} {out} cannot be created: {parent} is a file, not a directory — "
                    "choose another directory")
            return


def _build(raw: dict[str, Any], f: _Fields, default_name: str | None) -> JobConfig:
    inp = _table(raw, "input", f, InputConfig)
    req = _table(raw, "request", f, RequestConfig)
    end = _table(raw, "endpoint", f, EndpointConfig)
    lim = _table(raw, "limits", f, Limits)
    out = _table(raw, "output", f, OutputConfig)

    if inp.get("path") is None:
        if not f.prefix and not f.from_cli:  # `batchrunner run` alone
            raise ConfigError("no job given: name a job file (jobs/demo.toml, say), "
                              "or pass --input FILE, --prompt TEXT, --model NAME "
                              "and --output DIR (--help lists them all)")
        raise ConfigError(f"{f.prefix}no input: set [input] path or pass --input FILE")
    _string(inp, "path", f, "input")
    _string(inp, "id_column", f, "input")
    if out.get("dir") is None:
        raise NoOutputDir(
            f"{f.prefix}no output directory: set [output] dir or pass --output DIR" if f.prefix
            else "no output directory: pass --output DIR, a directory of its own for the job's "
            "results, journal and reports"
        )
    _string(out, "dir", f, "output")
    _check_output_dir(Path(out["dir"]), f("output", "dir"))
    fmt = out.get("format", "parquet")
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(
            f"{f('output', 'format')} must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}"
        )
    # Both paths are resolved (load_job): the results would be renamed over an input named as
    # they are, or land among a Parquet folder's parts as one more of them.
    if inp["path"] in (os.path.join(out["dir"], f"results.{fmt}"), out["dir"]):
        raise ConfigError(f"{f('output', 'dir')} {out['dir']} would have the results written "
                          f"over the input ({inp['path']}): choose another output directory")

    for key in ("model", "system", "prompt", "prompt_column", "model_column", "image_column",
                "schema_file"):
        _string(req, key, f, "request")
    if req.get("model") and (name := _variable_reference(req["model"])) is not None:
        # A model kept in an environment variable and written as ${NAME}: sent as it is,
        # every row would be answered "model does not exist".
        raise ConfigError(f"{f('request', 'model')} is {req['model'].strip()}, which is not "
                          "expanded: write the model's name, like gpt-4o-mini (or, from a "
                          f"shell where {name} is set, pass --model \"${name}\")")
    if req.get("prompt") and req.get("prompt_column"):
        by_cli = [("request", k) in f.from_cli for k in ("prompt", "prompt_column")]
        if by_cli == [True, False]:  # the command line's --prompt overrides the file's column
            del req["prompt_column"]
        elif by_cli == [False, True]:  # and its --prompt-column the file's template
            del req["prompt"]
    if req.get("prompt") and req.get("prompt_column"):
        column = f.from_cli.get(("request", "prompt_column"), "[request] prompt_column")
        raise ConfigError(
            f"{f('request', 'prompt')} and {column} are both set — give one of them")
    # The Chat Completions API's ranges: beyond them, every row would be answered 400.
    _number(req, "temperature", f, integer=False, positive=False, table="request", at_most=2)
    _number(req, "top_p", f, integer=False, positive=False, table="request", at_most=1)
    _number(req, "max_tokens", f, integer=True, positive=True, table="request")
    stop = req.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise ConfigError(f"{f('request', 'stop')} must be a string or a list of strings")
    if "stream" in req and not isinstance(req["stream"], bool):
        raise ConfigError(f"{f('request', 'stream')} must be true or false")
    for key in ("response_format", "extra"):
        if key in req and not isinstance(req[key], dict):
            raise ConfigError(f"{f('request', key)} must be a table")
    _request_fields_in_extra(req, f)
    _extra_values(req.get("extra"), f)
    _tool_settings(req, f)
    if "messages" in req.get("extra", {}):
        # It would replace the messages the prompt makes: every row sent the same conversation.
        raise ConfigError(
            f"{f.prefix}[request.extra] messages would replace every row's prompt, so every row "
            "would be sent the same messages — leave it out: the prompt makes the user message "
            "and [request] system the system message; for a conversation of its own per row "
            "(examples, earlier turns), give an OpenAI batch JSONL file")
    _from_columns(req.get("from_columns"), f("request", "from_columns"))
    _one_token_limit(req, f)
    extra = req.get("extra", {})
    if extra.get("stream_options") is not None and not (req.get("stream") is True
                                                        or extra.get("stream") is True):
        # OpenAI answers 400 "The 'stream_options' parameter is only allowed when 'stream' is
        # enabled" to every row; a stream asks for its usage without it (ask_for_usage).
        raise ConfigError(f"{f.prefix}[request.extra] stream_options is only for streamed "
                          "requests, and this job's are not (APIs refuse every row so) — set "
                          "stream = true in [request] (or --stream), or leave it out")
    if "response_format" in req.get("extra", {}) and (req.get("response_format")
                                                      or req.get("schema_file")):
        # The body would carry the one in [request.extra], the replies be checked against the other.
        mine = "schema_file" if req.get("schema_file") else "response_format"
        raise ConfigError(f"{f('request', mine)} and [request.extra] response_format "
                          "are both set — give one of them")
    if req.get("schema_file"):
        if req.get("response_format"):
            raise ConfigError(
                f"{f('request', 'response_format')} and {f('request', 'schema_file')} are both "
                "set — give one of them"
            )
        req["response_format"] = _schema_format(_home(req["schema_file"]),
                                                 f("request", "schema_file"))

    for key in ("requests_per_minute", "tokens_per_minute", "timeout_s", "max_cost_usd"):
        _number(lim, key, f, integer=False, positive=True, table="limits")
    for key in ("concurrency", "max_attempts"):
        _number(lim, key, f, integer=True, positive=True, table="limits")
    _number(lim, "outage_wait_s", f, integer=False, positive=False, table="limits")

    _string(end, "base_url", f, "endpoint", secret=True)
    for key in ("api_key_env", "base_url_env"):
        _string(end, key, f, "endpoint", secret=True)
        _variable_name(end, key, f)
    if "simulator" in end and not isinstance(end["simulator"], bool):
        raise ConfigError(f"{f('endpoint', 'simulator')} must be true or false")
    if end.get("simulator") and end.get("base_url"):
        by_cli = [("endpoint", k) in f.from_cli for k in ("simulator", "base_url")]
        if by_cli == [False, True]:  # the command line's --base-url overrides the file
            end["simulator"] = False
        elif by_cli == [True, False]:  # and its --simulator does too
            del end["base_url"]
        else:
            raise ConfigError(
                f"{f('endpoint', 'simulator')} and {f('endpoint', 'base_url')} are both set — "
                "keep one: the simulator rehearses the job, base_url sends real requests")
    if end.get("base_url"):
        end["base_url"] = check_base_url(end["base_url"], f("endpoint", "base_url"))

    for table in ("prices", "simulator"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{f.prefix}[{table}] must be a table")
    for model, entry in raw.get("prices", {}).items():
        if dotted := _dotted_key(model, entry):
            raise ConfigError(
                f"{f.prefix}[prices.{dotted}] is read as tables nested at each dot (TOML splits "
                f"a bare key there): quote the model's name, [prices.\"{dotted}\"]")

    name = raw.get("name") or default_name or Path(inp["path"]).stem
    if not isinstance(name, str):
        raise ConfigError(f"{f('', 'name')} must be a string, got {name!r}")
    return JobConfig(
        name=name,
        input=InputConfig(path=Path(inp.pop("path")), **inp),
        request=RequestConfig(**req),
        endpoint=EndpointConfig(**end),
        limits=Limits(**lim),
        output=OutputConfig(dir=Path(out.pop("dir")), **out),
        prices=dict(raw.get("prices", {})),
        simulator=dict(raw.get("simulator", {})),
        source=f.where,
    )


# Body fields a job sets in [request] that [request.extra], sent over them, may hold too (as a
# gateway's guide lists them among a body's fields).
_REQUEST_BODY_FIELDS = ("model", "temperature", "max_tokens", "top_p", "stop", "stream")


def _request_fields_in_extra(req: dict[str, Any], f: _Fields) -> None:
    """A body field set both in [request] and in [request.extra]: the command line's option
    wins (its copy in [request.extra] is dropped: it went over the option); both in the job
    file, with different values, is refused, as is a model there beside model_column (it
    replaced every row's model)."""
    extra = req.get("extra")
    if not isinstance(extra, dict):
        return
    for key in _REQUEST_BODY_FIELDS:
        if key not in extra:
            continue
        if key == "model" and req.get("model_column") is not None:
            raise ConfigError(f"{f('request', 'model_column')} and [request.extra] model are both "
                              "set — [request.extra] model would replace every row's model: "
                              "leave it out")
        if req.get(key) is None or req[key] == extra[key]:
            continue
        if ("request", key) in f.from_cli:
            del extra[key]  # the option overrides the job file, its [request.extra] too
        else:
            raise ConfigError(f"{f('request', key)} and [request.extra] {key} are both set — "
                              "give one of them")


def _one_token_limit(req: dict[str, Any], f: _Fields) -> None:
    """A body with both ``max_tokens`` and ``max_completion_tokens`` is refused by OpenAI
    ("Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported")
    and the gateways in front of it, so every row would be answered 400: refused here, where
    the job sets both ([request] or --max-tokens, [request.extra], from_columns). The
    command line's --max-tokens over a job file's [request.extra] max_completion_tokens is
    that limit changed: sent under the name the job file uses (a reasoning model takes no
    max_tokens)."""
    extra: dict[str, Any] = req["extra"] if isinstance(req.get("extra"), dict) else {}
    columns: dict[str, Any] = (req["from_columns"] if isinstance(req.get("from_columns"), dict)
                               else {})
    by_option = ("request", "max_tokens") in f.from_cli
    completion_by_option = ("request.extra", "max_completion_tokens") in f.from_cli
    if by_option != completion_by_option:  # one option, over the job file's other limit
        if by_option and extra.get("max_completion_tokens") is not None:
            extra["max_completion_tokens"] = req.pop("max_tokens")
            return
        if completion_by_option:  # --max-completion-tokens replaces the file's max_tokens
            req.pop("max_tokens", None)
            extra.pop("max_tokens", None)
    limit = None
    if req.get("max_tokens") is not None:
        limit = f("request", "max_tokens")
    elif extra.get("max_tokens") is not None:
        limit = f"{f.prefix}[request.extra] max_tokens"
    elif "max_tokens" in columns:
        limit = _from_column(f, "max_tokens", columns["max_tokens"])
    if limit is None:
        return
    if completion_by_option:
        other = "--max-completion-tokens"
    elif extra.get("max_completion_tokens") is not None:
        other = "[request.extra] max_completion_tokens"
    elif "max_completion_tokens" in columns:
        other = _from_column(f, "max_completion_tokens", columns["max_completion_tokens"])
    else:
        return
    raise ConfigError(f"{limit} and {other} are both set — APIs refuse a request with both "
                      "(OpenAI: \"Setting 'max_tokens' and 'max_completion_tokens' at the same "
                      "time is not supported\"): give one of them (max_completion_tokens for a "
                      "reasoning model: o-series, GPT-5)")


def _from_column(f: _Fields, field: str, column: Any) -> str:
    """A from_columns entry as the user gave it: ``--from-column max_tokens=budget`` or
    ``[request.from_columns] max_tokens``."""
    if ("request", "from_columns") in f.from_cli:
        return f"--from-column {field}={column}"
    return f"{f.prefix}[request.from_columns] {field}"


# [request.extra] values the API refuses whatever the model, checked as [request]'s are: the
# body is sent as it is, so each row would be answered 400 (integer fields: (positive, at most);
# number fields: at most, where the API's range starts at 0, else only the kind).
_EXTRA_INTEGERS = {"n": True, "max_tokens": True, "max_completion_tokens": True,
                   "top_logprobs": False}
_EXTRA_NUMBERS = {"temperature": 2.0, "top_p": 1.0}


def _extra_values(extra: Any, f: _Fields) -> None:
    """Refuse a sampling setting of [request.extra] (n, seed, logprobs, ...) of the wrong kind
    (``n = "3"``, ``seed = 4.2``, ``logprobs = "yes"``) or out of the API's range."""
    if not isinstance(extra, dict):
        return
    for key, v in extra.items():
        if key in INTEGER_FIELDS:
            if key in _EXTRA_INTEGERS:
                _number(extra, key, f, integer=True, positive=_EXTRA_INTEGERS[key],
                        table="request.extra")
            elif v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"{f('request.extra', key)} must be an integer, got {v!r}")
        elif key in NUMBER_FIELDS:
            if key in _EXTRA_NUMBERS:
                _number(extra, key, f, integer=False, positive=False, table="request.extra",
                        at_most=_EXTRA_NUMBERS[key])
            elif v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ConfigError(f"{f('request.extra', key)} must be a number, got {v!r}")
        elif key in BOOLEAN_FIELDS and v is not None and not isinstance(v, bool):
            raise ConfigError(f"{f('request.extra', key)} must be true or false, got {v!r}")
    for key in ("frequency_penalty", "presence_penalty"):  # the API's range: -2 to 2
        v = extra.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and not -2 <= v <= 2:
            raise ConfigError(f"{f('request.extra', key)} must be from -2 to 2, got {v!r}")
    if extra.get("top_logprobs") is not None and extra.get("logprobs") is not True:
        # OpenAI's API (and vLLM's) answers every such row 400
        raise ConfigError(f"{f('request.extra', 'top_logprobs')} needs logprobs = true beside "
                          "it in [request.extra]")


def _tool_settings(req: dict[str, Any], f: _Fields) -> None:
    """Refuse what APIs answer every row 400 for in [request.extra]'s response_format and
    tools, which would also leave the replies unchecked: a response_format that is not a
    table, tools that are not a list (``[request.extra.tools]``, one table, where
    ``[[request.extra.tools]]`` makes the list), a tool_choice that asks for a call with no
    tools to call."""
    extra = req.get("extra")
    if not isinstance(extra, dict):
        return
    fmt = extra.get("response_format")
    if fmt is not None and not isinstance(fmt, dict):  # as [request] response_format's
        raise ConfigError(f"{f('request.extra', 'response_format')} must be a table, as "
                          f'response_format = {{ type = "json_object" }}, got {fmt!r}')
    tools = extra.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ConfigError(
            f"{f('request.extra', 'tools')} is not a list, which APIs take only (every row would "
            "be refused): write [[request.extra.tools]], in double brackets, over each tool (or "
            'tools = [{ type = "function", function = { name = "...", parameters = { ... } } }])')
    choice = extra.get("tool_choice")
    if (choice == "required" or isinstance(choice, dict)) and not tools and (
            "tools" not in req.get("from_columns", {})):  # a column's tools are the row's
        raise ConfigError(f"{f('request.extra', 'tool_choice')} asks for a tool call, but the "
                          "job has no tools (APIs refuse every row so): give the functions in "
                          "[request.extra] tools")


# Body fields a column cannot set, and what sets them instead.
_NOT_FROM_COLUMNS = {
    "model": "use model_column (--model-column) for a model per row",
    "messages": "the prompt makes them",
    "stream": "streaming is set for the whole job ([request] stream, --stream)",
    "stream_options": "streaming is set for the whole job ([request] stream, --stream)",
}


# Request body fields of the Chat Completions API and of the gateways the project serves, by
# the value they take: a column's text (every CSV value is text) is read as the number or
# true/false a field takes, and a number is sent as text to a text field (see from_columns).
INTEGER_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs"})
NUMBER_FIELDS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
BOOLEAN_FIELDS = frozenset({"logprobs", "parallel_tool_calls", "store", "enable_thinking",
                            "enable_search"})
TEXT_FIELDS = frozenset({"user", "safety_identifier", "prompt_cache_key", "service_tier",
                         "reasoning_effort", "verbosity"})
# Fields that take a JSON object or array: a column's text is read as JSON (a CSV cell holding
# {"type": "enabled"}, a JSONL object made text); ``stop`` and ``tool_choice`` also take text.
JSON_FIELDS = frozenset({
    "audio", "extra_body", "logit_bias", "metadata", "modalities", "parameters", "prediction",
    "response_format", "search_parameters", "thinking", "tools", "web_search_options",
})
JSON_OR_TEXT_FIELDS = frozenset({"stop", "tool_choice"})
# All of them: a from_columns name close to one of these, and not one itself, is a typo.
BODY_FIELDS = (INTEGER_FIELDS | NUMBER_FIELDS | BOOLEAN_FIELDS | TEXT_FIELDS | JSON_FIELDS
                | JSON_OR_TEXT_FIELDS)


def _from_columns(value: Any, what: str) -> None:
    """Refuse a ``from_columns`` that is not body field → column name pairs, or that names
    a field the job cannot mean (one set otherwise, a near miss of a known one)."""
    if value is None:
        return
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        raise ConfigError(f'{what} must be a table of body field = "column" pairs, e.g. '
                          'user = "customer_id"')
    for name in value:
        if name in _NOT_FROM_COLUMNS:
            raise ConfigError(f"{what}: {name!r} cannot come from a column: "
                              f"{_NOT_FROM_COLUMNS[name]}")
        if name not in BODY_FIELDS:
            import difflib

            near = difflib.get_close_matches(name, BODY_FIELDS, n=1, cutoff=0.8)
            if near:
                raise ConfigError(f"{what}: {name!r} is not a request field; did you mean "
                                  f"{near[0]!r}?")


def _schema_format(path: Path, what: str) -> dict[str, Any]:
    """A ``json_schema`` response_format from a JSON Schema file."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: not found") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{what} {path}: not a JSON file ({_one_line(str(e))})") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{what} {path}: must hold a JSON object")
    from jsonschema.exceptions import SchemaError

    from batchrunner.structured import (  # only jobs with a schema pay for it
        api_name,
        dangling_ref,
        dangling_text,
        schema_error_text,
        schema_name_error,
        validator_class,
    )

    name = api_name(path.name.split(".")[0])  # the file's, as APIs take a json_schema's
    # The shapes OpenAI's documents show around a schema, copied as they are: the whole
    # response_format, or its json_schema ({"name", "strict": true, "schema": {...}}). Read as
    # a schema, either would take any reply and give no json_ columns.
    if schema.get("type") == "json_schema" and set(schema) <= {"type", "json_schema"}:
        spec = schema.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ConfigError(f'{what} {path}: a response_format needs "json_schema": '
                              '{"name": ..., "schema": {...}}')
        schema = spec
    if isinstance(schema.get("schema"), dict) and set(schema) <= _JSON_SCHEMA_FIELDS:
        spec = {"name": name or "answer", **schema}
    else:
        spec = {"name": name or "answer", "schema": schema}
    if (said := schema_name_error(spec["name"])) is not None:  # a wrapper's own name
        raise ConfigError(f"{what} {path}: {said}")

    try:
        validator_class(spec["schema"]).check_schema(spec["schema"])
    except SchemaError as e:  # named here as the file it is, not as [request] response_format
        raise ConfigError(f"{what} {path}: not a valid JSON Schema: "
                          f"{_one_line(schema_error_text(e))}") from None
    if (ref := dangling_ref(spec["schema"])) is not None:
        raise ConfigError(f"{what} {path}: {dangling_text(ref)}")
    return {"type": "json_schema", "json_schema": spec}


_JSON_SCHEMA_FIELDS = frozenset({"name", "description", "schema", "strict"})  # json_schema's


def check_base_url(url: str, what: str) -> str:
    """Return ``url`` without a trailing slash, or raise ConfigError naming ``what``.

    The base URL is the part before ``/chat/completions``; the client appends that path, so a
    query string, a fragment or the path itself would make every request miss. Messages show
    the URL without what could be a secret in it (a password, a query string's values).
    """
    example = "like https://api.openai.com/v1"
    if (name := _variable_reference(url)) is not None:  # before _key_like: a name, not a key
        raise ConfigError(f"{what} is ${name}, which is not expanded: to read the URL from "
                          f"{name}, set base_url_env = \"{name}\" in [endpoint] instead (on the "
                          f"command line, --base-url-env {name})")
    shown = shown_url(url)
    if "@" in url.partition("://")[2]:  # before parsing: a password may hold / # or ?
        raise ConfigError(
            f"{what} must not hold a user name or password ({example}, got {shown!r}): "
            "requests carry the API key as a Bearer token"
        )
    if _key_like(url):  # before the checks below, which show the value
        raise ConfigError(f"{what} must be an http(s) URL {example}; its value ({len(url)} "
                          "characters, not shown) is not a URL — is it the API key?")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ConfigError(f"{what} must be a URL without spaces or control characters, "
                          f"got {shown!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an http(s) URL {example}, got {shown!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{what} has an invalid port: {shown!r}") from None
    if parts.query or parts.fragment:
        raise ConfigError(
            f"{what} must not have a query string or fragment ({example}), got {shown!r}"
        )
    if parts.path.rstrip("/").endswith("/chat/completions"):
        raise ConfigError(
            f"{what} must be the base URL without /chat/completions ({example}), got {shown!r}"
        )
    if parts.path.rstrip("/").endswith(("/responses", "/completions", "/embeddings")):
        raise ConfigError(
            f"{what} must be the base URL, not another endpoint's: requests go to its "
            f"/chat/completions ({example}), got {shown!r}"
        )
    if (parts.hostname.rstrip(".") == "api.openai.com"
            and (parts.scheme, parts.path.rstrip("/")) != ("https", "/v1")):
        # Without /v1 every row is answered 404 "Invalid URL"; over http:// the key goes out
        # unencrypted before a redirect to https:// stops the job.
        raise ConfigError(f"{what} for OpenAI's API is https://api.openai.com/v1, got {shown!r}")
    return url.rstrip("/")


def _secret_like(name: str) -> bool:
    """A name that is an identifier but reads as a key (``gsk_`` and 52 letters and digits,
    32 of them): long, with upper and lower case letters and digits, as no variable's name."""
    return (len(name) >= 32 and any(c.islower() for c in name)
            and any(c.isupper() for c in name) and any(c.isdigit() for c in name))


def _key_like(url: str) -> bool:
    """Long, with no scheme, port or path, and no domain (a dot only beside a part longer than
    a host name's: ``<id>.<secret>`` keys, tokens): a key written where the URL goes, most
    likely, pasted with the space or line break around it, say."""
    value = url.strip()
    return (len(value) >= 16 and not any(c in value for c in ":/")
            and ("." not in value or max(map(len, value.split("."))) >= 32))


def shown_url(url: str) -> str:
    """``url`` for a message: what comes before its last ``@`` after the scheme (a user name
    and a password, which may hold / # or ?), its query and its fragment hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    masked = "@" in rest
    rest = rest.rpartition("@")[2]
    for mark in ("?", "#"):
        if mark in rest:
            rest = rest.partition(mark)[0] + f"{mark}***"
    return f"{scheme}{sep}{'***@' if masked else ''}{rest}"


def check_api_key(key: str, variable: str) -> str:
    """The key without surrounding whitespace (a trailing newline from a secret file, say),
    or ConfigError when it holds a character no key has (never showing the key)."""
    key = key.strip()
    bad = next((i for i, c in enumerate(key) if not ("!" <= c <= "~")), None)
    if bad is not None:
        # The header's words pasted with the key, as a gateway's docs show it
        # ("Authorization: Bearer sk-..."): shown up to the key, which is not.
        head = key.split()[:-1]
        if [w.lower() for w in head] in (["bearer"], ["authorization:", "bearer"]):
            raise ConfigError(f"{variable} holds '{' '.join(head)} ' before the key: set it to "
                              "the key alone (batchrunner sends the Authorization: Bearer "
                              "header itself)")
        raise ConfigError(f"{variable} holds a space, a line break or another character no API "
                          f"key has (character {bad + 1} of {len(key)}); check its value")
    if key[:1] in ("'", '"') or key[-1:] in ("'", '"'):
        raise ConfigError(f"{variable} starts or ends with a quote, which no API key has: set it "
                          "without quotes (a .env file batchrunner reads has them taken off; "
                          "docker's --env-file keeps them)")
    return key


@dataclass(frozen=True, slots=True)
class Proxy:
    """The HTTP proxy requests go through, as the environment names it."""

    url: str = field(repr=False)  # as aiohttp takes it, credentials included
    shown: str  # scheme://host:port: what messages show
    variable: str  # the environment variable it came from
    # Its password, as written and decoded, and the Proxy-Authorization header's base64 of it
    # (a proxy's error page may quote the header back)
    secrets: tuple[str, ...] = field(repr=False)

    @property
    def credentials(self) -> str | None:
        """The Proxy-Authorization header's base64 (what follows "Basic"); None without a
        password."""
        return self.secrets[-1] if self.secrets else None


def proxy_for(base_url: str, env: Mapping[str, str]) -> Proxy | None:
    """The proxy for requests to ``base_url``, picked as curl and the OpenAI SDK pick it.

    ``https_proxy`` for an https:// endpoint, ``http_proxy`` for http://, else ``all_proxy``;
    lower case before upper case; none when ``no_proxy`` names the host (``*``, a domain and its
    subdomains, ``host:port``, an IP address or an IP network) or the host is a loopback
    address. A proxy written without a scheme is ``http://``. Raises ``ConfigError`` for a
    proxy batchrunner cannot use (SOCKS, say), before anything is sent.
    """
    target = urlsplit(base_url)
    host = (target.hostname or "").lower().rstrip(".")
    if is_loopback(host):
        return None
    names = [f"{target.scheme}_proxy", "all_proxy"]
    variable = next((v for name in names for v in (name, name.upper()) if env.get(v, "").strip()),
                    None)
    if variable is None or _no_proxy(host, target.port or DEFAULT_PORTS.get(target.scheme),
                                     env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None
    value = env[variable].strip()
    url = value if "://" in value else f"http://{value}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.hostname:
        raise ConfigError(f"{variable} is not a proxy URL like http://proxy.example.com:3128")
    shown = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(
            f"{variable} is {shown}: batchrunner goes through http:// and https:// proxies "
            f"only; set one of those, or add {host} to NO_PROXY to connect directly"
        )
    password = parts.password
    secrets: tuple[str, ...] = ()
    if password:
        sent = f"{unquote(parts.username or '')}:{unquote(password)}"  # as aiohttp sends it
        secrets = tuple(dict.fromkeys((password, unquote(password),
                                       base64.b64encode(sent.encode()).decode())))
    return Proxy(url=url, shown=shown, variable=variable, secrets=secrets)


def cache_dir() -> str | None:
    """batchrunner's cache directory: ``$BATCHRUNNER_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/batchrunner``, else ``~/.cache/batchrunner``; ``None`` when there is no
    home directory to put it in (none set, or one that is not there: cron's
    ``HOME=/nonexistent`` is not made). What is kept there may be deleted at will."""
    directory = os.environ.get("BATCHRUNNER_CACHE_DIR")
    if directory:
        return directory
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "batchrunner")
    home = os.path.expanduser("~")
    return None if home == "~" or not os.path.isdir(home) else os.path.join(
        home, ".cache", "batchrunner")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (lower case, no trailing dot) is this machine: localhost, a name
    under .localhost, or a loopback address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (comma- or space-separated) names ``host`` (and ``port``)."""
    try:
        host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        host_ip = None
    for entry in no_proxy.replace(",", " ").lower().split():
        if entry == "*":
            return True
        if entry.startswith("["):  # [IPv6] or [IPv6]:port
            name, _, rest = entry[1:].partition("]")
            if rest and not rest.startswith(":"):
                continue
            entry_port = rest.removeprefix(":")
        elif entry.count(":") == 1:  # host:port (more colons: a bare IPv6 address)
            name, _, entry_port = entry.partition(":")
        else:
            name, entry_port = entry, ""
        if entry_port and entry_port != str(port):
            continue
        name = name.removeprefix("*").removeprefix(".").rstrip(".")
        if "/" in name:
            try:
                if host_ip is not None and host_ip in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if not name:
            continue
        if host_ip is not None:  # an address matches only itself, or a network, never a suffix
            try:
                if host_ip == ipaddress.ip_address(name):
                    return True
            except ValueError:
                pass
        elif host == name or host.endswith("." + name):
            return True
    return False


def load_dotenv(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file as docker compose and python-dotenv do: ``KEY=value`` lines,
    ``#`` comments (a whole line, or after a value and a space), ``export``, values in single
    quotes (as written) or double quotes (``\\n``, ``\\t``, ``\\"`` and ``\\\\`` read as
    escapes), with a comment allowed after the closing quote. ``${NAME}`` (``${NAME:-default}``)
    in a value not in single quotes is the variable's value, from the environment, else from
    a line above (``OPENAI_API_KEY=${NBILITY_API_KEY}``); an unset one is the default, or
    nothing."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad starts it with a BOM
    except (FileNotFoundError, IsADirectoryError):
        return values
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__})") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        raw = value.strip()
        value = _dotenv_value(raw)
        if "${" in value and not raw.startswith("'"):
            value = _expand(value, values)
        values[key.strip()] = value
    return values


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, above: Mapping[str, str]) -> str:
    """``value`` with each ``${NAME}`` replaced as python-dotenv replaces it: the environment's
    value, else the value of a line above, else the default after ``:-``, else nothing."""
    def resolve(m: re.Match[str]) -> str:
        name = m[1]
        if name in os.environ:
            return os.environ[name]
        return above.get(name, m[2] or "")

    return _REFERENCE.sub(resolve, value)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _dotenv_value(raw: str) -> str:
    quote = raw[:1]
    if quote in ("'", '"'):
        out: list[str] = []
        i = 1
        while i < len(raw):
            c = raw[i]
            if c == quote:
                return "".join(out)  # what follows the closing quote is a comment, or nothing
            if c == "\\" and quote == '"' and raw[i + 1:i + 2] in _ESCAPES:
                out.append(_ESCAPES[raw[i + 1]])
                i += 2
                continue
            out.append(c)
            i += 1
        return raw  # no closing quote: the value as written
    for mark in (" #", "\t#"):
        raw = raw.split(mark, 1)[0]
    return raw.rstrip()


def unread_dotenv_line(job: JobConfig, variable: str) -> str:
    """For a message that ``variable`` is not set: ``/srv/.env has a line for OPENAI_API_KEY
    with no =, which is not read: write OPENAI_API_KEY=...`` where a ``.env`` file read for
    ``job`` names it in a line ``load_dotenv`` skips (YAML's ``KEY: value``, say); else ""."""
    for d in _dotenv_dirs(job):
        try:
            text = (d / ".env").read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            words = line.strip().removeprefix("export ").split(maxsplit=1)
            if "=" not in line and words and words[0].removesuffix(":") == variable:
                return (f"{d / '.env'} has a line for {variable} with no =, which is not "
                        f"read: write {variable}=...")
    return ""


def _dotenv_dirs(job: JobConfig) -> list[Path]:
    """Where ``.env`` files are read, the one that wins first: the job file's directory, then
    the current one. A crontab's job runs from $HOME, where another project's .env sent the
    job to that project's endpoint, over the jobs/.env beside its file."""
    dirs = [Path.cwd()]
    if job.source != "command line" and (
            own := Path(job.source).resolve().parent) != dirs[0].resolve():
        dirs.insert(0, own)
    return dirs


# A variable named as a secret: OPENAI_API_KEY, NBILITY_API_KEY, GW_TOKEN, PROXY_PASSWORD.
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)


def secrets_known(args: Sequence[str] = ()) -> list[str]:
    """The values, LONG_SECRET characters or more, of the variables named as secrets in the
    environment and in the ``.env`` files a run reads (the current directory's, and the
    directory's of a job file in ``args``): what a message must not show, when one was given
    where an argument goes (``batchrunner run job.toml OPENAI_API_KEY=sk-...``). Longest
    first."""
    found = {v.strip() for name, v in os.environ.items() if _SECRET_NAME.search(name)}
    with contextlib.suppress(OSError):  # a current directory since removed, say
        dirs = [Path.cwd(), *(Path(a).resolve().parent for a in args
                              if a.lower().endswith(".toml") and os.path.isfile(a))]
        for d in dict.fromkeys(dirs):
            with contextlib.suppress(ConfigError):
                found |= {v.strip() for name, v in load_dotenv(d / ".env").items()
                          if _SECRET_NAME.search(name)}
    # Shorter values are placeholders ("EMPTY", "x") or words (SORT_KEY=customer_id), not
    # secrets: hidden, they would hide a column's or a file's name in a message.
    return sorted((v for v in found if len(v) >= LONG_SECRET), key=len, reverse=True)


def environment(job: JobConfig) -> dict[str, str]:
    """``os.environ`` over the ``.env`` files (the job file's directory's, then the current
    directory's)."""
    env: dict[str, str] = {}
    for d in reversed(_dotenv_dirs(job)):
        env.update(load_dotenv(d / ".env"))
    env.update(os.environ)
    return env


# How the variables that hold an endpoint's URL or key are named in gateways' and servers' guides
# (NBILITY_BASE_URL, DEEPSEEK_API_KEY; OPENAI_API_BASE, as the openai library before 1.0 read it).
URL_VARIABLE_ENDINGS = ("_BASE_URL", "_API_BASE")
KEY_VARIABLE_ENDINGS = ("_API_KEY",)


def set_instead(job: JobConfig, variable: str, endings: tuple[str, ...], *,
                url: bool = False) -> list[str]:
    """Variables other than ``variable`` (which is unset) that are set to something, in a
    ``.env`` file read for ``job`` (those first, in file order) or the environment, and whose
    names end in one of ``endings``, or are a near miss of ``variable`` (MY_KEY for MYKEY,
    first) set to what it would hold, a URL (``url``) or a key (no URL, LONG_SECRET characters
    at least: OPENAI_API_BASE's URL, OPENAI_API_TYPE's "azure" are no key for OPENAI_API_KEY):
    what a guide's reader most likely meant, for a message to name (with where each was read:
    ``origin``)."""
    import difflib  # a message's only

    names: list[str] = []
    for d in _dotenv_dirs(job):
        names += load_dotenv(d / ".env")
    names += sorted(os.environ)
    env = environment(job)
    found = [name for name in dict.fromkeys(names)
             if name != variable and name.isidentifier() and not _secret_like(name)
             and env.get(name, "").strip()]
    near = difflib.get_close_matches(variable, [
        n for n in found if ("://" in (v := env[n].strip())) == url
        and (url or len(v) >= LONG_SECRET)], n=1, cutoff=0.8)
    return [*near, *(n for n in found if n.upper().endswith(endings) and n not in near)][:3]


def set_instead_hint(job: JobConfig, names: list[str], option: str) -> str:
    """``--api-key-env NBILITY_API_KEY (NBILITY_API_KEY from /srv/.env is set)`` for the first
    of ``names`` (``set_instead``), the others named after it."""
    first, *others = names
    also = f"; also set: {', '.join(origin(job, n) for n in others)}" if others else ""
    return f"{option} {first} ({origin(job, first)} is set{also})"


def origin(job: JobConfig, variable: str) -> str:
    """Where ``environment(job)`` took ``variable`` from, for messages: ``OPENAI_API_KEY from
    the environment``, or ``from /path/.env`` (an environment variable wins over ``.env``)."""
    if variable in os.environ:
        return f"{variable} from the environment"
    for d in _dotenv_dirs(job):
        if variable in load_dotenv(d / ".env"):
            return f"{variable} from {d / '.env'}"
    return variable
