"""The CPU a stream costs the client: ``StreamAssembler`` over recorded stream shapes.

::

    .venv/bin/python benchmarks/bench_stream.py                         # best of 7 rounds
    .venv/bin/python benchmarks/bench_stream.py --against /other/checkout  # an A/B
    .venv/bin/python benchmarks/bench_stream.py --smoke                 # checks it runs

Each stream is fed as the client's read loop feeds it (``feed_bytes``, a piece per event, as a
server that writes each event apart is read; and in 16 KiB pieces, as a busy connection's reads
gather them), and the answer joined. Streams: OpenAI's (500 tokens a chunk each, ``usage: null``
in every chunk, then the usage chunk), vLLM's (500 tokens), and a whole-so-far one (Qwen's
``incremental_output`` false: 20,000 tokens in chunks of 10, each carrying the whole answer so
far). It prints milliseconds per stream and microseconds per chunk. ``--against`` times another
checkout's ``StreamAssembler`` too, in the same process, its rounds taken in turn with this
one's: on a shared machine, times taken by two processes minutes apart differ by more than most
changes are worth.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any

import orjson

from batchrunner.client import StreamAssembler

WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ",",
         " and", " then", " it", " rests", ".", "\n")
USAGE = {"prompt_tokens": 31, "completion_tokens": 500, "total_tokens": 531,
         "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                       "accepted_prediction_tokens": 0,
                                       "rejected_prediction_tokens": 0}}


def event(value: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


def openai_stream(tokens: int) -> list[bytes]:
    head = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk",
            "created": 1741569952, "model": "gpt-4o-2024-08-06", "service_tier": "default",
            "system_fingerprint": "fp_eb9dce56a8"}

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        return event({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}], "usage": None})

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    out += [chunk({"content": WORDS[i % len(WORDS)]}) for i in range(tokens)]
    out.append(chunk({}, "stop"))
    out.append(event({**head, "choices": [], "usage": USAGE}))
    return [*out, b"data: [DONE]\n\n"]


def vllm_stream(tokens: int) -> list[bytes]:
    head = {"id": "chatcmpl-5f1e0b1c9a2d4e7f8a6b3c2d1e0f9a8b", "object": "chat.completion.chunk",
            "created": 1741569952, "model": "meta-llama/Llama-3.1-8B-Instruct"}

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        return event({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]})

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": WORDS[i % len(WORDS)]}) for i in range(tokens)]
    out.append(chunk({"content": ""}, "stop"))
    return [*out, b"data: [DONE]\n\n"]


def whole_so_far_stream(tokens: int, per_chunk: int) -> list[bytes]:
    head = {"id": "chatcmpl-3a1f2e4d-5c6b-7a89-b0c1-d2e3f4a5b6c7", "object":
            "chat.completion.chunk", "created": 1741569952, "model": "qwen-plus",
            "system_fingerprint": None}
    out = []
    text = ""
    for i in range(tokens):
        text += WORDS[i % len(WORDS)]
        if (i + 1) % per_chunk == 0 or i == tokens - 1:
            finish = "stop" if i == tokens - 1 else None
            out.append(event({**head, "choices": [{"index": 0, "delta": {"content": text},
                                                   "finish_reason": finish, "logprobs": None}]}))
    out.append(event({**head, "choices": [], "usage": USAGE}))
    return [*out, b"data: [DONE]\n\n"]


def gathered(events: list[bytes], size: int) -> list[bytes]:
    """The stream's bytes in pieces of ``size``, as reads that gather events cut them."""
    raw = b"".join(events)
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def assembler_of(tree: str) -> Any:
    """The ``StreamAssembler`` of the checkout at ``tree``, imported beside this one's."""
    def ours() -> dict[str, Any]:
        return {k: m for k, m in sys.modules.items() if k.split(".")[0] == "batchrunner"}

    saved = ours()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, tree)
    try:
        return importlib.import_module("batchrunner.client").StreamAssembler
    finally:
        sys.path.remove(tree)
        for name in ours():
            del sys.modules[name]
        sys.modules.update(saved)


def assemble(pieces: list[bytes], whole_so_far: bool, kind: Any = StreamAssembler) -> str:
    st = kind(whole_so_far=whole_so_far)
    for piece in pieces:
        st.feed_bytes(piece)
        if st.done:
            break
    st.end()
    assert st.done and st.finish_reason == "stop"
    return "".join(st.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one short round")
    parser.add_argument("--against", metavar="DIR", help="another checkout to time too")
    args = parser.parse_args()
    rounds = 1 if args.smoke else 7
    whole_tokens = 2_000 if args.smoke else 20_000
    kinds = {"this": StreamAssembler}
    if args.against:
        kinds["against"] = assembler_of(args.against)
    streams = {
        "openai 500 tokens": (openai_stream(500), False, 100),
        "vllm 500 tokens": (vllm_stream(500), False, 100),
        f"whole-so-far {whole_tokens:,} tokens": (
            whole_so_far_stream(whole_tokens, 10), True, 3),
    }
    print(f"{'stream':30} {'pieces':>13} {'chunks':>6} {'MB':>5} "
          + " ".join(f"{k + ' ms':>10} {'us/chunk':>8}" for k in kinds))
    for name, (events, whole, number) in streams.items():
        expected = assemble(events, whole)
        for label, pieces in (("an event each", events), ("16 KiB", gathered(events, 16384))):
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(rounds):
                for k, kind in kinds.items():
                    assert assemble(pieces, whole, kind) == expected
                    start = time.process_time()
                    for _ in range(1 if args.smoke else number):
                        assemble(pieces, whole, kind)
                    times[k].append((time.process_time() - start)
                                    / (1 if args.smoke else number))
            size = sum(map(len, events)) / 1e6
            print(f"{name:30} {label:>13} {len(events):6} {size:5.1f} " + " ".join(
                f"{min(t) * 1e3:10.3f} {min(t) * 1e6 / len(events):8.2f}"
                for t in times.values()))


if __name__ == "__main__":
    main()
