"""How many requests per second the simulator serves on one core.

Starts ``python -m batchrunner.simulator`` in a separate process pinned to one core (when the
platform allows it), drives it from this process with a bare aiohttp client loop (keep-alive,
fixed concurrency), and prints requests/s for non-streamed and streamed completions::

    python benchmarks/bench_simulator.py              # 20,000 requests each, concurrency 64
    python benchmarks/bench_simulator.py --smoke      # a few hundred, to check it runs

The client gets the other cores; with only one core in total both share it and the figure is a
lower bound. Where /proc is readable it also prints how busy the simulator's core was and the
requests served per CPU-second of the simulator (its capacity on a core of its own, when the
client, not the simulator, is what limits the measured rate).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
LISTEN_RE = re.compile(r"listening on (http://\S+/v1)")
START_TIMEOUT_S = 30.0


def start_server(reply_tokens: int, core: int | None) -> tuple[subprocess.Popen[str], str]:
    """Start the simulator subprocess and return it with its base URL."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "batchrunner.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--reply-tokens",
        str(reply_tokens),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if core is not None:
        os.sched_setaffinity(proc.pid, {core})
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(START_TIMEOUT_S):
            stop_server(proc)
            raise SystemExit("the simulator did not start in time")
    line = proc.stdout.readline()
    match = LISTEN_RE.search(line)
    if match is None:
        stop_server(proc)
        err = proc.stderr.read() if proc.stderr else ""
        raise SystemExit(f"the simulator did not start: {line!r} {err}")
    return proc, match.group(1)


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, where /proc tells."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def drive(
    base_url: str, n: int, concurrency: int, stream: bool, pid: int | None = None
) -> tuple[float, float | None, int]:
    """Send ``n`` requests with ``concurrency`` workers after a warm-up; return requests/s, the
    CPU-seconds process ``pid`` used meanwhile (if known) and the number of failures."""
    url = base_url + "/chat/completions"
    bodies = [
        orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You write short product descriptions."},
                    {"role": "user", "content": f"Describe product {i}: a sturdy widget."},
                ],
                "max_tokens": 256,
                "stream": stream,
                **({"stream_options": {"include_usage": True}} if stream else {}),
            }
        )
        for i in range(1000)
    ]
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    failures = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(counter: itertools.count[int], stop: int) -> None:
            nonlocal failures
            while (i := next(counter)) < stop:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        failures += 1

        warmup = min(n, 2000)
        counter = itertools.count()
        await asyncio.gather(*(worker(counter, warmup) for _ in range(concurrency)))
        counter = itertools.count()
        cpu_before = cpu_seconds(pid) if pid is not None else None
        started = time.perf_counter()
        await asyncio.gather(*(worker(counter, n) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(pid) if pid is not None else None
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return n / elapsed, cpu, failures


async def served(base_url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(base_url + "/simulator/stats") as r:
        data = await r.json()
    return int(data["completions"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="requests per mode")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reply-tokens", type=int, default=64, help="tokens per reply")
    parser.add_argument("--smoke", action="store_true", help="a tiny run to check it works")
    args = parser.parse_args(argv)
    n = 300 if args.smoke else args.n

    core: int | None = None
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        core = cpus[0]
        if len(cpus) > 1:
            os.sched_setaffinity(0, set(cpus[1:]))
    proc, base_url = start_server(args.reply_tokens, core)
    try:
        pinned = f"pinned to core {core}" if core is not None else "not pinned"
        print(f"simulator at {base_url} ({pinned}), {args.reply_tokens}-token replies")
        for stream in (False, True):
            rate, cpu, failures = asyncio.run(
                drive(base_url, n, args.concurrency, stream, proc.pid)
            )
            busy = ""
            if cpu:
                busy = (
                    f", simulator busy {100 * cpu * rate / n:.0f}% of its core"
                    f" = {n / cpu:,.0f} requests per CPU-second"
                )
            label = "stream    " if stream else "non-stream"
            print(
                f"{label}: {n} requests, concurrency {args.concurrency}: "
                f"{rate:,.0f} requests/s{busy}" + (f" ({failures} failed)" if failures else "")
            )
            if failures:
                return 1
        total = asyncio.run(served(base_url))
        expected = 2 * (n + min(n, 2000))
        if total != expected:
            print(f"the simulator served {total} completions, expected {expected}")
            return 1
    finally:
        stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
