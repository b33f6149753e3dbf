"""Search billed apart from tokens: Grok's live search sources (``usage.num_sources_used``)
and Anthropic's web searches (``usage.server_tool_use.web_search_requests``), recorded per row,
priced, and never left out of the cost silently."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchrunner.journal import Journal
from batchrunner.simulator import Simulator, SimulatorConfig
from tests.test_reply_fields import KEY, job_for, make_csv, parse, reply, results, run

__all__ = ["KEY"]  # the key the job_env fixture sets

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

# A Grok live search reply (search_parameters), and Claude's web search through a gateway
GROK_USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
              "num_sources_used": 7}
CLAUDE_USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
                "server_tool_use": {"web_search_requests": 3}}
SEARCH_TEXTS = ["news today [[sim:citations]]", "weather [[sim:web_search]]", "no search"]


def test_the_search_units_a_reply_reports_are_read() -> None:
    answer = {"role": "assistant", "content": "Here is the news."}
    grok = parse({**reply(answer), "usage": GROK_USAGE})
    assert (grok.sources_used, grok.web_searches) == (7, None)
    claude = parse({**reply(answer), "usage": CLAUDE_USAGE})
    assert (claude.sources_used, claude.web_searches) == (None, 3)
    plain = parse(reply(answer))
    assert (plain.sources_used, plain.web_searches) == (None, None)
    # Sent as text or a float by a gateway, as token counts sometimes are; nonsense is no count
    odd = parse({**reply(answer), "usage": {**GROK_USAGE, "num_sources_used": "4"}})
    assert odd.sources_used == 4
    bad = parse({**reply(answer), "usage": {**GROK_USAGE, "num_sources_used": -1}})
    assert bad.sources_used is None


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_search_units_are_recorded_per_row_streamed_or_not(tmp_path: Path,
                                                                 stream: bool) -> None:
    inp = make_csv(tmp_path / "in.csv", SEARCH_TEXTS)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, stream=stream or None))
    assert s.exit_code == 0
    df = results(tmp_path)
    assert df.loc["r0", "search_units"] == 2  # Grok: the sources it used
    assert df.loc["r1", "search_units"] == 1  # Anthropic: one web search
    assert pd.isna(df.loc["r2", "search_units"])  # not said: null, not 0


@pytest.mark.anyio
async def test_a_journal_written_before_search_units_reads_them_as_null(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", SEARCH_TEXTS)
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        await run(job)
        (seg,) = Journal(tmp_path / "out").segments()
        pq.write_table(pq.read_table(seg).drop_columns(["search_units"]), seg)
        Journal(tmp_path / "out").check()
        (tmp_path / "out" / "results.parquet").unlink()
        s = await run(job)
    assert s.sent == 0 and s.ok == 3
    assert results(tmp_path)["search_units"].isna().all()
