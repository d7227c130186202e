"""KeepAliveSink (gateway/stream_keepalive.py) over a recording ASGI `send`: a slow stream gets its
headers and comment frames before the first token, a fast one is untouched, nothing is written
after start() or stop()."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from gateway.stream_keepalive import KEEPALIVE, KeepAliveSink

TARGET = SimpleNamespace(id="p/model")


class Recorder:
    def __init__(self, beats_wanted: int = 0):
        self.msgs: list[dict] = []
        self.enough = asyncio.Event()
        self.beats_wanted = beats_wanted

    async def __call__(self, msg: dict) -> None:
        self.msgs.append(msg)
        if sum(m.get("body") == KEEPALIVE for m in self.msgs) >= self.beats_wanted:
            self.enough.set()

    def kinds(self) -> list[str]:
        return ["start" if m["type"] == "http.response.start" else
                "ka" if m["body"] == KEEPALIVE else "data" for m in self.msgs]


def test_slow_stream_starts_early_and_beats_until_the_first_token():
    async def run():
        rec = Recorder(beats_wanted=3)
        sink = KeepAliveSink(rec, {"x-ratelimit-limit-requests": "5"}, (b"x-thawline-replica", b"r1"), 0.01)
        await asyncio.wait_for(rec.enough.wait(), 30)
        beat = sink._task
        await sink.start(TARGET, 1)
        await asyncio.gather(beat, return_exceptions=True)   # the beat is over, not just paused
        await sink.send({"choices": [{"delta": {"content": "hi"}}]})
        return rec

    rec = asyncio.run(run())
    kinds = rec.kinds()
    assert kinds[0] == "start" and kinds.count("start") == 1
    assert kinds[1:4] == ["ka", "ka", "ka"] and kinds[-1] == "data"
    hdrs = dict(rec.msgs[0]["headers"])
    assert hdrs[b"content-type"].startswith(b"text/event-stream") and hdrs[b"x-ratelimit-limit-requests"] == b"5" and hdrs[b"x-thawline-replica"] == b"r1"
    assert b"x-thawline-target" not in hdrs   # unknown when the headers went out


def test_fast_stream_keeps_its_target_headers_and_gets_no_comment():
    async def run():
        rec = Recorder()
        sink = KeepAliveSink(rec, None, None, 30.0)
        await sink.start(TARGET, 2, ["a=timeout"])
        await sink.send({"choices": []})
        await sink.stop()
        return rec

    rec = asyncio.run(run())
    assert rec.kinds() == ["start", "data"]
    hdrs = dict(rec.msgs[0]["headers"])
    assert hdrs[b"x-thawline-target"] == b"p/model" and hdrs[b"x-thawline-attempts"] == b"2"


def test_stop_before_any_token_leaves_started_as_the_caller_must_answer():
    async def run():
        quiet, early = Recorder(), Recorder(beats_wanted=1)
        s1 = KeepAliveSink(quiet, None, None, 30.0)
        await s1.stop()                       # failed fast: nothing sent, a JSON error follows
        s2 = KeepAliveSink(early, None, None, 0.01)
        await asyncio.wait_for(early.enough.wait(), 30)
        beat = s2._task
        await s2.stop()                       # failed after the headers: an SSE error event follows
        n = len(early.msgs)
        await asyncio.gather(beat, return_exceptions=True)
        assert beat.done() and len(early.msgs) == n
        return s1, s2, quiet

    s1, s2, quiet = asyncio.run(run())
    assert not s1.started and quiet.msgs == [] and s2.started


def test_no_interval_means_no_task():
    async def run():
        rec = Recorder()
        sink = KeepAliveSink(rec, None, None, None)
        await asyncio.sleep(0)
        await sink.start(TARGET, 1)
        return rec

    assert asyncio.run(run()).kinds() == ["start"]


def test_an_early_started_stream_names_its_target_in_band_and_the_client_reads_it():
    """Headers that went out before the first token cannot carry the target: it follows as SSE
    comment lines, which SDKs ignore and the gateway's own client turns back into headers."""
    from gateway.sse import PayloadReader

    async def run():
        rec = Recorder(beats_wanted=1)
        sink = KeepAliveSink(rec, None, None, 0.01)
        await asyncio.wait_for(rec.enough.wait(), 30)
        await sink.start(TARGET, 2, ["t/0:x/y"])
        await sink.send({"choices": [{"delta": {"content": "hi"}}]})
        return rec

    rec = asyncio.run(run())
    body = b"".join(m["body"] for m in rec.msgs if m["type"] == "http.response.body")
    reader = PayloadReader()
    payloads = reader.feed(body)
    assert payloads == [{"choices": [{"delta": {"content": "hi"}}]}]   # the comments are no payload
    assert reader.late_headers["x-thawline-target"] == TARGET.id
    assert reader.late_headers["x-thawline-attempts"] == "2"
    assert reader.late_headers["x-thawline-fallbacks"] == "t/0:x/y"
