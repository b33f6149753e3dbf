"""What tonight will cost, before it runs: ``batchrunner estimate JOB`` and ``run --dry-run``.

Reads the input, renders every request that a run would send (rows already done in the output
directory are left out) and adds up estimated prompt tokens (the same four-characters-a-token
rule the pacing uses), expected completion tokens and cost per model, and the time the rate
limits imply. No request is sent.

Expected completion tokens per request: the mean of the answers the output directory's journal
holds so far (every earlier run's, and a run's in progress) when there are any, for each choice
a reply's request asked (``n``: a reply's usage counts them all) times the choices the request
asks, else
``max_tokens`` (an upper bound), else a default guess — the report says which — with, on top,
the thinking budget a request gives (a ``-thinking-8192`` model, ``thinking.budget_tokens``,
Gemini's ``thinking_budget`` or ``thinkingBudget``): thinking is billed as output. Rows that ask
for thinking with no budget nor ``max_tokens`` (a model that thinks unless told not to, Gemini
2.5 Pro's, is asking) are warned about.

A row sent again (``--rerun-where``, ``--retry-failed``) whose latest record holds an answer
(ok, or failed with a whole reply: one that failed its check) is estimated by that answer, at
most its ``max_tokens`` now: as many tokens again when it finished; when it was cut at
``max_tokens``, what it reached (a floor: the same request goes on past it) and, for each choice
cut, the answers' mean length more (``_Answers.longer``), or ``max_tokens`` when no answer of
its model finished. A failed row with no answer takes the mean, as a new row does.

Search billed per request that asks for it (a search model, ``web_search_options``, a Google
Search tool, ``enable_search``: ``pricing.search_requested``) is in the estimate, at the job's
``search_request`` price (a model without one has an unknown cost, and the estimate says what to
set). Search billed by what each reply reports (Grok's sources, Anthropic's web searches, a
Claude model's ``web_search_options``) no estimate can count, so the estimate warns when the
requests ask for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchrunner import compute as pc
from batchrunner.arrow import group_codes, is_value, scalar, to_numpy
from batchrunner.config import (
    THINKING_BUDGET_SUFFIX,
    gemini_named,
    gemini_thinking,
    reasoning_model,
    reasoning_turned_off,
)
from batchrunner.journal import Journal
from batchrunner.pricing import SOURCE_JOB, audio_asked, search_requested, tier_asked
from batchrunner.report import (
    CHOICE_CUT,
    choices_asked,
    count_rows,
    format_budget,
    format_span,
    format_usd,
)
from batchrunner.runner import DEFAULT_COMPLETION_ESTIMATE, Plan, make_work, rows_to_send
from batchrunner.template import estimate_tokens

__all__ = ["Estimate", "estimate", "format_estimate"]

MAX_EXAMPLES = 5


@dataclass(kw_only=True)
class ModelEstimate:
    rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    context_window: int | None = None
    search_requests: int = 0  # rows asking for search billed per request (search_requested)
    audio_tokens: int = 0  # of completion_tokens, those of spoken answers (audio_asked)
    # What the tokens cost when the model is priced but that search is not (cost_usd None).
    tokens_usd: float | None = None
    meant: str | None = None  # with no price: the priced name it is a typo of, if any
    # The service tiers its rows ask for (``service_tier``: None for none): priced at the
    # dearest of those with a price of their own, ``priority`` over the standard over ``flex``.
    tiers: set[str | None] = field(default_factory=set)
    # The prompt tokens past which its price is a long-context one (the first tier's start),
    # None for a flat price; and the rows whose prompt passes it, (prompt, completion, audio
    # completion) tokens, each priced on its own: the sum of many short prompts is no long one.
    long_from: int | None = None
    long_rows: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def service_tier(self) -> str | None:
        """The tier the model's rows are estimated at (``tiers``)."""
        tiers = self.tiers
        return "priority" if "priority" in tiers else "flex" if tiers == {"flex"} else None


@dataclass(kw_only=True)
class Resent:
    """Rows sent again whose earlier answers are their estimate's ground: those cut at
    max_tokens (``Estimate.cut``: at least what they reached, at most max_tokens now), or those
    answered whole (``Estimate.answered``: what they took before, at most max_tokens now)."""

    rows: int = 0
    reached: int = 0  # the completion tokens of their earlier answers (as many choices as now)
    tokens: int = 0  # their estimated completion tokens
    most: int | None = 0  # at max_tokens now (times n); None when some row sets none
    longer: set[int] = field(default_factory=set)  # tokens a cut choice was given to go on
    at_most: int = 0  # cut rows with no finished answer to go by: estimated at max_tokens


@dataclass(kw_only=True)
class Estimate:
    name: str
    rows: int = 0
    already_done: int = 0
    resent: int = 0  # of the rows to send, those done before (retried, rerun or changed)
    to_send: int = 0
    limited: int = 0  # rows to do that --limit leaves for later runs
    not_sendable: Counter[str] = field(default_factory=Counter)
    not_sendable_examples: list[str] = field(default_factory=list)
    over_context: int = 0
    over_context_examples: list[str] = field(default_factory=list)
    by_model: dict[str, ModelEstimate] = field(default_factory=dict)
    completion_basis: str = ""
    time_s: float | None = None
    time_basis: str = ""
    cached_system: int = 0  # the system prompt's tokens, when long enough for a prompt cache
    price_library: str = ""  # where the prices come from: the job's [prices], the library
    budget_usd: float | None = None  # max_cost_usd: the job's whole spend, earlier runs' too
    spent_usd: float = 0.0  # what earlier runs spent
    search_rows: int = 0  # rows to send that ask for search (billed apart, not estimated)
    search_asked: Counter[str] = field(default_factory=Counter)  # what they ask for it with
    search_requests: int = 0  # rows to send that ask for search billed per request (estimated)
    search_requested: Counter[str] = field(default_factory=Counter)  # what they ask with
    thinking_rows: int = 0  # rows to send that ask for thinking with no max_tokens nor budget
    thinking_asked: Counter[str] = field(default_factory=Counter)  # what they ask with
    budgeted: int = 0  # rows to send with no max_tokens whose thinking budget is counted
    warnings: list[str] = field(default_factory=list)  # the job's, as a run would say them
    # Rows sent again (--rerun-where, --retry-failed) that were answered before: estimated
    # from their own answers rather than the mean of all (``Resent``).
    cut: Resent = field(default_factory=lambda: Resent())
    answered: Resent = field(default_factory=lambda: Resent())

    @property
    def cost_usd(self) -> float | None:
        costs = [m.cost_usd for m in self.by_model.values()]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


# The answers so far: a choice's mean completion tokens, the answers counted, and whether any
# asked more than one choice.
Observed = tuple[float, int, bool]


@dataclass(frozen=True, slots=True)
class _Record:
    """A row to send again, as its latest record has it: an answer's completion tokens (every
    choice's), the choices its request asked, those of them cut at max_tokens, and the model it
    was priced as (``priced_as``, else ``model``) and the one that answered (``model``)."""

    tokens: int
    asked: int
    cut: int
    priced_as: str
    answered: str


@dataclass(kw_only=True)
class _Answers:
    """What the journal's answers tell the estimate (``_read_answers``)."""

    observed: Observed | None = None  # over every model's answers
    by_model: dict[str, Observed] = field(default_factory=dict)
    # How much longer than it got a choice cut at max_tokens goes on, on the mean: the answers'
    # tokens over the choices that finished (the mean length of answers whose lengths are
    # taken as exponential, those cut as unfinished), over every model's and by model; None
    # with no choice finished. Read for a rerun only.
    longer: float | None = None
    longer_by_model: dict[str, float] = field(default_factory=dict)
    records: dict[str, _Record] = field(default_factory=dict)  # by key: the rows to send again


def _read_answers(plan: Plan) -> _Answers:
    """The ok answers' mean completion tokens for a choice asked (a reply's usage counts
    every choice of its ``n``: the rows' own, ``choices_asked``, else the job's), over all of
    them and by the model each was priced as (the one asked for, unless a gateway routed it):
    a reasoning model's answers are not a chat model's. For a run that sends rows again
    (``Plan.resent``), also how much longer a cut answer goes on, and the records of the rows
    to send that hold an answer: ok, or failed with a whole reply (one that failed its check:
    its ``finish_reason`` says how it ended)."""
    job_n = choices_asked(plan.job_meta.get("request") or {})
    again = plan.resent > 0 and plan.order is not None
    columns = ["completion_tokens", "choices_asked", "priced_as", "model"]
    if again:
        columns += ["finish_reason", "choices"]
    found = _Answers()
    sums: dict[str, list[int]] = {}  # model: [tokens, answers, choices, choices cut]
    for part in Journal(plan.out_dir).iter_latest(columns):
        is_ok = pc.fill_null(is_value(part["status"], "ok"), scalar(False, pa.bool_()))
        has_tokens = pc.is_valid(part["completion_tokens"])
        answered = pc.and_(is_ok, has_tokens)
        tokens_all = to_numpy(pc.cast(pc.fill_null(part["completion_tokens"],
                                                   scalar(0, pa.int64())), pa.int64()))
        asked_all = to_numpy(pc.cast(pc.fill_null(part["choices_asked"],
                                                  scalar(job_n, pa.int64())), pa.int64()))
        models_all = pc.coalesce(part["priced_as"], part["model"])
        cut_all = None
        if again:
            in_choices = to_numpy(pc.cast(pc.fill_null(
                pc.count_substring(part["choices"], CHOICE_CUT), scalar(0, pa.int32())),
                pa.int64()))
            cut_all = in_choices.copy()
            cut_all[(cut_all == 0) & to_numpy(pc.fill_null(
                is_value(part["finish_reason"], "length"), scalar(False, pa.bool_())))] = 1
        mine_ok = to_numpy(answered)
        codes, names = group_codes(pc.filter(models_all, answered))
        tokens, asked = tokens_all[mine_ok], asked_all[mine_ok]
        cut = cut_all[mine_ok] if cut_all is not None else None
        for i, name in enumerate(names):
            mine = codes == i
            acc = sums.setdefault(name or "", [0, 0, 0, 0])
            acc[0] += int(tokens[mine].sum())
            acc[1] += int(mine.sum())
            acc[2] += int(asked[mine].sum())
            if cut is not None:
                acc[3] += int(cut[mine].sum())
        if cut_all is not None and plan.order is not None:
            # The rows to send that were answered before: ok, or a whole reply that failed
            whole = pc.or_(is_ok, pc.is_valid(part["finish_reason"]))
            kept = to_numpy(pc.fill_null(pc.and_(has_tokens, whole), scalar(False, pa.bool_())))
            at = to_numpy(pc.fill_null(plan.order.positions(part["key"]),
                                       scalar(-1, pa.int64())))
            done = plan.done.mask
            inside = (at >= 0) & (at < len(done))
            sent = inside.copy()
            sent[inside] = ~done[at[inside]]
            picked = (kept & sent).nonzero()[0]
            if len(picked):
                keys = pc.take(part["key"], pa.array(picked)).to_pylist()
                priced = pc.take(models_all, pa.array(picked)).to_pylist()
                model = pc.take(part["model"], pa.array(picked)).to_pylist()
                for j, key, p, m in zip(picked.tolist(), keys, priced, model, strict=True):
                    found.records[key] = _Record(
                        tokens=int(tokens_all[j]), asked=max(1, int(asked_all[j])),
                        cut=int(cut_all[j]), priced_as=p or "", answered=m or "")
    found.by_model = {model: (total / choices, n, choices > n)
                      for model, (total, n, choices, _) in sums.items() if n and choices}
    total, n, choices, cut_n = (sum(acc[i] for acc in sums.values()) for i in range(4))
    found.observed = (total / choices, n, choices > n) if n and choices else None
    if again:
        found.longer_by_model = {model: total / (choices - cut)
                                 for model, (total, _, choices, cut) in sums.items()
                                 if choices > cut}
        found.longer = total / (choices - cut_n) if choices > cut_n else None
    return found


def _completion_basis(max_tokens: int | None, observed: tuple[float, int, bool] | None,
                      unbounded: int, to_send: int, *, batch: bool,
                      name: str = "max_tokens") -> str:
    """What the completion tokens were estimated from (``batch``: rows that carry their own
    requests; ``name``: the field the job's ``max_tokens`` is set by)."""
    guess = f"a guess of {DEFAULT_COMPLETION_ESTIMATE} tokens"
    if observed is not None:
        mean, n, choices = observed
        # The journal's answers: every earlier run's (and one in progress), not the last run's.
        each = " a choice, times each row's n" if choices else ""
        answers = "answer" if n == 1 else "answers"
        return f"mean of {n:,} {answers} so far ({mean:,.0f} tokens{each})"
    if unbounded == 0 and (to_send or max_tokens):
        if max_tokens:
            return f"{name} ({max_tokens:,}), an upper bound"
        return "each row's max_tokens, an upper bound"  # a batch file's rows set their own
    if unbounded < to_send:
        return (f"each row's max_tokens where it sets one (an upper bound); {guess} for the "
                f"{count_rows(unbounded)} without")
    return f"{guess} (set max_tokens{' in the bodies' if batch else ''} for a bound)"


def _plus(a: float | None, b: float | None) -> float | None:
    """The sum of two costs, ``None`` when either is unknown."""
    return None if a is None or b is None else a + b


def estimate(plan: Plan) -> Estimate:
    job = plan.job
    est = Estimate(name=job.name, rows=plan.total_rows,
                   already_done=len(plan.done) - plan.limited, limited=plan.limited,
                   resent=plan.resent,
                   budget_usd=job.limits.max_cost_usd, spent_usd=plan.prior_cost,
                   warnings=list(plan.warnings))
    answers = _read_answers(plan)
    observed, by_model = answers.observed, answers.by_model
    # A job of one model takes the answers' mean whatever name they were priced as (a dated
    # snapshot); one whose rows name their models, each model's own, and a model with none
    # yet its max_tokens or the guess.
    models_vary = plan.builder is None or bool(job.request.model_column)
    unseen = 0  # rows to send of a model with no answer yet, in such a job
    unbounded = 0  # rows to send with no max_tokens of their own
    for key, row, _, resent in rows_to_send(plan):
        item, reason = make_work(plan, key, row)
        if item is None:
            est.not_sendable[reason] += 1
            if len(est.not_sendable_examples) < MAX_EXAMPLES:
                est.not_sendable_examples.append(f"{plan.row(key)}: {reason}")
            continue
        est.to_send += 1
        model = str(item.body.get("model") or "")
        m = est.by_model.get(model)
        if m is None:
            price = plan.prices.price(model)
            m = est.by_model[model] = ModelEstimate(
                context_window=plan.prices.context_window(model),
                long_from=price.tiers[0][0] if price is not None and price.tiers else None)
        m.tiers.add(tier_asked(item.body))
        if (asked := search_requested(item.body)) is not None:
            m.search_requests += 1
            est.search_requests += 1
            est.search_requested[asked] += 1
        elif (asked := _search_asked(item.body)) is not None:
            est.search_rows += 1
            est.search_asked[asked] += 1
        record = answers.records.get(key) if resent else None
        if record is not None and models_vary and model not in (record.priced_as,
                                                                record.answered):
            record = None  # another model's answer: not this one's to go by
        seen = by_model.get(model) if models_vary else observed
        unseen += models_vary and observed is not None and seen is None and record is None
        if record is not None:  # its own earlier answer, at most its max_tokens now
            completion = _completion_again(est, answers, record, item.n, item.completion_max,
                                           models_vary)
        elif seen is not None:  # a choice's mean, for each of the n the row asks, at most its
            completion = int(seen[0] * item.n)  # max_tokens (a limit lowered since)
            if item.completion_max:
                completion = min(completion, item.completion_max * item.n)
        elif item.completion_max:
            completion = item.completion_max * item.n
        else:  # its thinking, billed as output, comes on top of the answer
            asked, budget = _thinking(item.body)
            if budget:
                est.budgeted += 1
            elif asked is not None:
                est.thinking_rows += 1
                est.thinking_asked[asked] += 1
            completion = (DEFAULT_COMPLETION_ESTIMATE + budget) * item.n
        unbounded += not item.completion_max
        m.rows += 1
        m.prompt_tokens += item.prompt_estimate
        m.completion_tokens += completion
        spoken = completion if audio_asked(item.body) else 0
        m.audio_tokens += spoken
        if m.long_from is not None and item.prompt_estimate > m.long_from:
            m.long_rows.append((item.prompt_estimate, completion, spoken))
        if m.context_window and item.prompt_estimate + (item.completion_max or 0) > \
                m.context_window:
            est.over_context += 1
            if len(est.over_context_examples) < MAX_EXAMPLES:
                est.over_context_examples.append(
                    f"{plan.row(key)}: ~{item.prompt_estimate:,} prompt tokens, {model} holds "
                    f"{m.context_window:,}")
    per_row = not {"max_tokens", "max_completion_tokens"}.isdisjoint(job.request.from_columns)
    # The job's limit, as the body carries it: [request.extra]'s is sent over [request]'s
    name, limit = "max_tokens", job.request.max_tokens
    for body_field in ("max_tokens", "max_completion_tokens"):
        if isinstance(v := job.request.extra.get(body_field), int) and not isinstance(v, bool):
            name, limit = body_field, v
    est.completion_basis = _completion_basis(None if per_row else limit, observed, unbounded,
                                             est.to_send, batch=plan.builder is None,
                                             name=name)
    if est.cut.rows + est.answered.rows == est.to_send and est.to_send:
        est.completion_basis = "each row's own earlier answer (below)"
    elif observed is not None and models_vary and (len(by_model) > 1 or unseen):
        n, choices = observed[1], observed[2]
        each = "; a choice, times each row's n" if choices else ""
        est.completion_basis = (f"each model's mean of its answers so far ({n:,} answer"
                                f"{'' if n == 1 else 's'}{each}), at most each row's max_tokens")
    elif observed is not None:
        est.completion_basis += ", at most each row's max_tokens"
    if observed is not None and unseen:
        est.completion_basis += (f"; for the {count_rows(unseen)} of models with none yet, "
                                 "their max_tokens, or a guess")
    if est.cut.rows + est.answered.rows < est.to_send and est.cut.rows + est.answered.rows:
        est.completion_basis += (f"; for the {count_rows(est.cut.rows + est.answered.rows)} "
                                 "answered before, their own answers (below)")
    if est.budgeted:
        est.completion_basis += (f"; and the thinking budget of the {count_rows(est.budgeted)} "
                                 "that set one, on top")
    sources = []
    for model, m in est.by_model.items():
        tier = m.service_tier
        # The rows under the long-context start at the base price, summed; those past it each
        # at the tier its own prompt reaches
        short = (m.prompt_tokens - sum(r[0] for r in m.long_rows),
                 m.completion_tokens - sum(r[1] for r in m.long_rows),
                 m.audio_tokens - sum(r[2] for r in m.long_rows))
        long_usd: float | None = 0.0
        for prompt, completion, spoken in m.long_rows:
            row_usd = plan.prices.cost(model, prompt_tokens=prompt, completion_tokens=completion,
                                       service_tier=tier, audio_completion_tokens=spoken)
            long_usd = None if long_usd is None or row_usd is None else long_usd + row_usd
        m.cost_usd = _plus(plan.prices.cost(
            model, prompt_tokens=short[0], completion_tokens=short[1],
            search_requests=m.search_requests, service_tier=tier,
            audio_completion_tokens=short[2], long_context=False), long_usd)
        if m.cost_usd is None and m.search_requests:  # its tokens may have a price
            m.tokens_usd = _plus(plan.prices.cost(
                model, prompt_tokens=short[0], completion_tokens=short[1], service_tier=tier,
                audio_completion_tokens=short[2], long_context=False), long_usd)
        if m.cost_usd is None and m.tokens_usd is None and model:
            m.meant = next(iter(plan.prices.close_names(model)), None)
        # The job's own prices, or the library's (looked in, too, for a model it lacks), or
        # both: a job's entry that takes the prices it leaves out from the library
        own = plan.prices.source(model).startswith(SOURCE_JOB)
        price = plan.prices.price(model)
        if own:
            sources.append(SOURCE_JOB)
        if not own or (price is not None and price.based_on is not None):
            sources.append(f"genai-prices {plan.prices.library_version}")
    est.price_library = " and ".join(sorted(set(sources), reverse=True)) or (
        f"genai-prices {plan.prices.library_version}")
    if job.request.system and (tokens := estimate_tokens(job.request.system)) >= CACHE_MIN:
        est.cached_system = tokens
    lim = job.limits
    times: list[tuple[float, str]] = []
    if lim.requests_per_minute:
        times.append((est.to_send / lim.requests_per_minute * 60.0,
                      f"{lim.requests_per_minute:,.0f} requests/min"))
    if lim.tokens_per_minute:
        tokens = sum(m.prompt_tokens + m.completion_tokens for m in est.by_model.values())
        times.append((tokens / lim.tokens_per_minute * 60.0,
                      f"{lim.tokens_per_minute:,.0f} tokens/min"))
    if times:
        est.time_s, est.time_basis = max(times)
        if lim.concurrency:  # a bound the rates do not know: each request's time
            per_s = est.to_send / est.time_s if est.time_s else 0.0
            est.time_basis += (f"; longer where answers take over "
                               f"{lim.concurrency / per_s:,.2g} s, as concurrency "
                               f"{lim.concurrency:,} sends no more at once" if per_s else "")
    return est


def _completion_again(est: Estimate, answers: _Answers, record: _Record, n: int,
                      completion_max: int, models_vary: bool) -> int:
    """The completion tokens of a row sent again whose earlier answer is ``record``, asking
    ``n`` choices at most ``completion_max`` tokens each (0: no max_tokens), counted into
    ``est.cut`` or ``est.answered``. An answer that finished takes as many tokens again; one
    cut at max_tokens takes at least what it reached, and on the mean as many more tokens a
    choice cut as the job's answers go on for (``_Answers.longer``), else max_tokens, at most
    max_tokens now."""
    scale = n / record.asked  # the choices asked now, for those asked then
    most = completion_max * n if completion_max else None
    reached = record.tokens * scale
    group = est.cut if record.cut else est.answered
    if record.cut:
        longer = (answers.longer_by_model.get(record.priced_as) if models_vary
                  else answers.longer)
        if longer is not None:
            guess = reached + longer * record.cut * scale
            group.longer.add(round(longer))
        elif most is not None:
            guess = most
            group.at_most += 1
        else:
            guess = reached + DEFAULT_COMPLETION_ESTIMATE * record.cut * scale
            group.longer.add(DEFAULT_COMPLETION_ESTIMATE)
    else:
        guess = reached
    completion = int(guess if most is None else min(guess, most))
    group.rows += 1
    group.reached += int(reached if most is None else min(reached, most))
    group.tokens += completion
    group.most = None if most is None or group.most is None else group.most + most
    return completion


# The shortest prompt prefix the APIs cache (OpenAI's 1,024 tokens).
CACHE_MIN = 1024


# A search tool by any of the names the APIs give it (Anthropic's and OpenAI's web search,
# Gemini's Google Search as a gateway takes it in extra_body or a Gemini model's tools).
_SEARCH_TOOLS = frozenset({"googlesearch", "google_search", "google_search_retrieval",
                           "websearch", "web_search", "web_search_preview"})


def _search_asked(body: Mapping[str, Any]) -> str | None:
    """What in a request ``body`` asks for search its replies count (search units, billed
    apart from tokens), named as the body has it; None when nothing does. Asked of the bodies
    ``search_requested`` finds none in: the search models, ``web_search_options`` (but a
    Claude model's) and ``enable_search`` are billed per request, and it names them."""
    params = body.get("search_parameters")
    if isinstance(params, Mapping) and params.get("mode") != "off":
        return "search_parameters"
    if body.get("web_search_options") is not None:  # Claude's: the searches its reply reports
        return "web_search_options"
    extra = body.get("extra_body")
    google = extra.get("google") if isinstance(extra, Mapping) else None
    model = body.get("model")
    gemini = isinstance(model, str) and gemini_named(model)
    for where, tools, named in (("tools", body.get("tools"), gemini),
                                ("extra_body.google.tools",
                                 google.get("tools") if isinstance(google, Mapping) else None,
                                 True)):
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, Mapping) and (name := _tool_name(tool, named)) is not None:
                return f"{where}: {name}"
    return None


def _tool_name(tool: Mapping[str, Any], named: bool) -> str | None:
    """The search tool ``tool`` is, if it is one: a tool of that type (Anthropic's
    ``web_search_20250305``, OpenAI's), a ``{"googleSearch": {}}`` entry, or, with ``named``
    (a Gemini model's), a function so named, as gateways take Gemini's (another model's
    function of that name is the job's own: it runs the search)."""
    function = tool.get("function")
    names = [function.get("name") if named and isinstance(function, Mapping) else None,
             tool.get("type"), *tool.keys()]
    for name in names:
        if isinstance(name, str) and (
                name.lower() in _SEARCH_TOOLS or name.lower().startswith("web_search_")):
            return name
    return None


def _thinking(body: Mapping[str, Any]) -> tuple[str | None, int]:
    """What in a request ``body`` asks for thinking (reasoning tokens, billed as output), named
    as the body has it, and the most tokens it may think for when the body says (0: no budget
    given): a thinking model, DeepSeek's and Anthropic's ``thinking`` (``budget_tokens``),
    Qwen's ``enable_thinking``, ``reasoning_effort``, Gemini's ``thinking_config`` through a
    gateway (``thinking_budget``; 0 turns it off; a stream's only, as the simulator takes it
    too) or its own ``generationConfig.thinkingConfig``
    (``thinkingBudget``, ``thinkingLevel``), or a ``-thinking-<budget>`` model."""
    model = body.get("model")
    model = model if isinstance(model, str) else ""
    if (m := THINKING_BUDGET_SUFFIX.search(model)) is not None:
        return f"model {model}", int(m[1])
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        return "thinking", budget if type(budget) is int and budget > 0 else 0
    where, thinks, budget = gemini_thinking(body, body.get("stream") is True)
    if thinks is False:  # Gemini's thinking turned off
        return None, 0
    if thinks:
        return where, budget if type(budget) is int and budget > 0 else 0
    if body.get("enable_thinking") is True:
        return "enable_thinking", 0
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort not in ("none", "minimal"):
        return "reasoning_effort", 0
    if reasoning_model(model) and not reasoning_turned_off(body):  # as the simulator does
        return f"model {model}", 0
    return None, 0


def _and(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _ask(rows: int) -> str:
    return "asks" if rows == 1 else "ask"


# The ways rows ask for search or thinking that a warning names, most rows first; the rest
# counted (a batch file of many models asks for thinking in as many ways).
_WAYS_SHOWN = 3


def _asked_with(asked: Counter[str]) -> str:
    """What rows ask for search or thinking with: ``web_search_options`` when they all ask
    with it, else each way with its rows, most first (``search_parameters for 2,
    web_search_options for 1``), the rows of ways past ``_WAYS_SHOWN`` counted together."""
    if len(asked) == 1:
        return next(iter(asked))
    ways = asked.most_common()
    shown = ", ".join(f"{what} for {n:,}" for what, n in ways[:_WAYS_SHOWN])
    rest = sum(n for _, n in ways[_WAYS_SHOWN:])
    return f"{shown}, and {count_rows(rest)} in other ways" if rest else shown


def _unnamed(rows: int) -> str:
    """The rows whose bodies name no model, and what to do."""
    if rows == 1:
        return 'the row whose body names no model: name one in it ("model")'
    return f'the {rows:,} rows whose bodies name no model: name one in each ("model")'


def _format_cut(cut: Resent) -> str:
    """The line of the rows sent again that were cut at max_tokens (``Estimate.cut``)."""
    said = f"cut at max_tokens before: {count_rows(cut.rows)}, "
    if cut.most is not None and cut.most <= cut.reached:
        return said + (f"cut again at max_tokens as it stands ({cut.tokens:,} completion "
                       "tokens): raise it for their whole answers")
    said += f"{cut.tokens:,} completion tokens: the {cut.reached:,} they reached"
    if len(cut.longer) == 1:
        said += (f" and {next(iter(cut.longer)):,} more each (the answers' mean length, "
                 "counting cut ones as unfinished)")
    elif cut.longer:
        said += (" and each model's mean answer length more (counting cut ones as "
                 "unfinished)")
    if cut.at_most:
        said += f"; {count_rows(cut.at_most)} at max_tokens: no finished answer to go by"
    most = ("no max_tokens to bound them" if cut.most is None
            else f"{cut.most:,} at most (max_tokens)")
    return f"{said}; {most}"


def format_estimate(e: Estimate) -> str:
    lines = [f"batchrunner: estimate for {e.name} — nothing was sent",
             f"  rows: {e.rows:,} in the input, {e.already_done:,} already done"
             f"{' and kept' if e.resent else ''}, {e.to_send:,} to send"
             + (f" ({e.resent:,} of them done before, sent again)" if e.resent else "")
             + (f"; {e.limited:,} more left for later runs by --limit" if e.limited else "")]
    rows: list[tuple[str, ...]] = [("model", "rows", "prompt tokens", "completion tokens",
                                    "cost (USD)")]
    for model, m in sorted(e.by_model.items()):
        cost = (format_usd(m.cost_usd) if m.cost_usd is not None
                else "unknown" if m.tokens_usd is None else f"{format_usd(m.tokens_usd)} + search")
        rows.append((model or "(none)", f"{m.rows:,}", f"{m.prompt_tokens:,}",
                     f"{m.completion_tokens:,}", cost))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows if len(rows) > 1 else ():  # nothing to send: no table
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    total = e.cost_usd
    source = f" ({e.price_library})"
    known = [m.cost_usd if m.cost_usd is not None else m.tokens_usd for m in e.by_model.values()]
    if total is not None:
        cost_line = format_usd(total) + source
    elif None in known:
        unpriced = sorted(model for model, m in e.by_model.items()
                          if m.cost_usd is None and m.tokens_usd is None)
        # Rows whose bodies name no model (a batch file's): a model to name, not to price.
        unnamed = "" in unpriced
        unpriced = [model for model in unpriced if model]
        priced = [c for c in known if c is not None]
        cost_line = ((f"{format_usd(sum(priced))} for the models priced{source}; " if priced
                      else "")
                     + (f"unknown for {_and(unpriced)}: "
                        + "".join(f"{model!r} may be a typo of {meant!r}: fix the model name, or "
                                  for model in unpriced if (meant := e.by_model[model].meant))
                        + "add " + _and([f'[prices."{model}"]' for model in unpriced])
                        + f"{', each' if len(unpriced) > 1 else ''} with input and output (USD "
                        "per 1M tokens), to a job file" if unpriced else "")
                     + ("; " if unpriced and unnamed else "")
                     + (f"unknown for {_unnamed(e.by_model[''].rows)}" if unnamed else "")
                     + ("" if priced else source))
    else:  # priced but for the search billed per request that some rows ask for
        cost_line = (f"{format_usd(sum(c for c in known if c is not None))} and the search each "
                     "row asks for, which has no price: set search_request (below)" + source)
    lines.append(f"  estimated cost: {cost_line}")
    if total and e.budget_usd is not None and e.spent_usd + total > e.budget_usd:
        left = max(0.0, e.budget_usd - e.spent_usd)
        earlier = f", {format_usd(e.spent_usd)} spent before" if e.spent_usd else ""
        lines.append(f"  warning: more than max_cost_usd {format_budget(e.budget_usd)}"
                     f"{earlier}: the run will stop at the budget, after about "
                     f"{int(e.to_send * left / total):,} of the {e.to_send:,} rows")
    if e.search_requests:
        unpriced = sorted(model for model, m in e.by_model.items()
                          if m.search_requests and m.cost_usd is None)
        asked = (f"{count_rows(e.search_requests)} {_ask(e.search_requests)} for search billed "
                 f"per request ({_asked_with(e.search_requested)})")
        if unpriced:
            lines.append(f"  warning: {asked}; set search_request (USD per request) "
                         + " and ".join(f'under [prices."{model}"]' for model in unpriced)
                         + " in a job file for its cost to be known")
        else:
            lines.append(f"  search: {asked}, in the estimate at search_request")
    if e.search_rows:
        lines.append(f"  warning: {count_rows(e.search_rows)} {_ask(e.search_rows)} for search "
                     f"({_asked_with(e.search_asked)}): it is billed apart from tokens, by the "
                     "sources or searches each reply uses, and is not in this estimate")
    lines.append(f"  completion tokens from: {e.completion_basis}")
    if e.cut.rows:
        lines.append(f"  {_format_cut(e.cut)}")
    if e.answered.rows:
        lines.append(f"  answered before: {count_rows(e.answered.rows)}, at the "
                     f"{e.answered.tokens:,} completion tokens of their answers")
    if e.cached_system:
        lines.append(f"  prompt caching not counted: the system prompt's ~{e.cached_system:,} "
                     "tokens, the same in every request, are billed at the cached-input price "
                     "where the API caches them (OpenAI, DeepSeek, Claude through most gateways: "
                     "a half to a tenth of the input price), so the cost may come out lower")
    if e.thinking_rows:
        lines.append(f"  warning: {count_rows(e.thinking_rows)} {_ask(e.thinking_rows)} for "
                     f"thinking ({_asked_with(e.thinking_asked)}) with no max_tokens: the "
                     "reasoning, billed as output, can run to thousands of tokens a reply, past "
                     "the guess of "
                     f"{DEFAULT_COMPLETION_ESTIMATE}; set max_tokens for a bound, or send a few "
                     "rows first (--limit 20): the estimate then takes their answers' mean")
    if e.time_s is not None:
        lines.append(f"  time at the job's limits: about {format_span(e.time_s)} "
                     f"({e.time_basis})")
    else:
        lines.append("  time: no rate limit set; the server's limits decide")
    lines.extend(f"  warning: {w}" for w in e.warnings)
    for reason, n in e.not_sendable.most_common():
        lines.append(f"  warning: {count_rows(n)} will not be sent: {reason}")
    for ex in e.not_sendable_examples:
        lines.append(f"    {ex}")
    if e.over_context:
        lines.append(f"  warning: {count_rows(e.over_context)} may not fit the model's context "
                     "window")
        for ex in e.over_context_examples:
            lines.append(f"    {ex}")
    return "\n".join(lines)

