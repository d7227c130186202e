"""SSE encoding (OpenAI's exact framing) and the incremental parser."""
from __future__ import annotations

import orjson

from gateway.errors import GatewayError, Unavailable
from gateway.sse import DONE, SSEParser, encode


def test_encode_matches_openai_framing():
    assert encode({"a": 1}) == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"


def test_parser_handles_split_frames_and_line_endings():
    raw = b'event: message_start\r\ndata: {"x":1}\r\n\r\n: comment\n\ndata: a\ndata: b\n\ndata: [DONE]\n\n'
    for split in range(1, len(raw)):
        p = SSEParser()
        evs = p.feed(raw[:split]) + p.feed(raw[split:])
        assert [(e.event, e.data) for e in evs] == [("message_start", '{"x":1}'), ("message", "a\nb"),
                                                    ("message", "[DONE]")], split


def test_unterminated_frame_is_not_dispatched():
    p = SSEParser()
    assert p.feed(b'data: {"half": tr') == []
    assert p.close() == []


def test_error_event_shape_is_openai_error():
    e = Unavailable("all targets failed")
    frame = e.sse_event()
    evs = SSEParser().feed(frame)
    assert evs[0].event == "error"
    body = orjson.loads(evs[0].data)
    assert body == {"error": {"message": "all targets failed", "type": "server_error", "param": None,
                              "code": "upstream_unavailable"}}
    assert GatewayError("x").to_dict()["error"]["type"] == "server_error"


def test_any_split_of_a_stream_gives_the_same_events():
    from gateway.sse import SSEParser

    data = b"event: a\r\ndata: x\r\n\r\ndata: y\ndata: z\n\n: keep-alive\r\rdata: w\r\n\r\n"
    want = [("a", "x"), ("message", "y\nz"), ("message", "w")]
    for cut in range(len(data) + 1):
        p = SSEParser()
        got = p.feed(data[:cut]) + p.feed(data[cut:])
        assert [(e.event, e.data) for e in got] == want, cut


def test_one_read_holding_many_frames():
    """A proxy may deliver thousands of frames in one read; each is parsed once, in order."""
    from gateway.sse import SSEParser

    frames = b"".join(b"data: {\"i\": %d}\n\n" % i for i in range(20000))
    events = SSEParser().feed(frames)
    assert len(events) == 20000 and events[-1].data == '{"i": 19999}'
