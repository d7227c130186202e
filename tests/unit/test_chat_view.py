"""`thawline chat`'s terminal view: control bytes escaped, cold-start progress lines from the
gateway's readiness (gateway/admin.py's /v1/models `thawline` field), the poller's thread."""
from __future__ import annotations

import threading

from cluster.cli.ops.chat_view import ColdProgress, describe, safe_text


def test_safe_text_escapes_terminal_controls_but_keeps_newlines_and_tabs():
    assert safe_text("a\tb\nc") == "a\tb\nc"
    assert safe_text("\x1b]0;pwned\x07red\x1b[31m") == "\\x1b]0;pwned\\x07red\\x1b[31m"
    assert safe_text("cr\rback\x08del\x7f c1\x9b2J é ü 日本") == "cr\\x0dback\\x08del\\x7f c1\\x9b2J é ü 日本"
    assert safe_text("\x00") == "\\x00"


def test_describe_names_the_phase_of_a_cold_start_and_nothing_when_warm():
    assert describe("tiny", None) is None
    assert describe("tiny", {"state": "warm", "app": "tiny-llm"}) is None
    assert describe("tiny", {"state": "cold", "app": "tiny-llm"}) == \
        "cold start of tiny-llm: serve_scheduling (waiting for a replica)"
    line = describe("tiny", {"state": "warming", "app": "tiny-llm", "phase": "engine_prepare", "starting_s": 12.4})
    assert line.startswith("cold start of tiny-llm: engine prepare / engine start with weights") and "12s since" in line
    assert "imports" in describe("tiny", {"state": "warming", "app": "x", "phase": "imports"})
    assert "\x1b" not in describe("tiny", {"state": "warming", "app": "x\x1b", "phase": "odd\x1b[2J"})


def test_cold_progress_prints_each_phase_once_until_stopped():
    states = iter([{"state": "cold", "app": "a"}, {"state": "cold", "app": "a"},
                   {"state": "warming", "app": "a", "phase": "imports", "starting_s": 1.0},
                   {"state": "warming", "app": "a", "phase": "imports", "starting_s": 2.0},
                   {"state": "warming", "app": "a", "phase": "engine_prepare", "starting_s": 3.0}])
    done = threading.Event()

    def fetch():
        try:
            return next(states)
        except StopIteration:
            done.set()
            return {"state": "warm", "app": "a"}

    lines: list[str] = []
    with ColdProgress("tiny", fetch, lines.append, interval_s=0.01) as p:
        assert done.wait(10)
    assert [ln.split(": ")[1].split(" ")[0] for ln in lines] == ["serve_scheduling", "imports", "engine"]
    assert p.was_cold


def test_cold_progress_says_nothing_for_a_warm_model_and_survives_fetch_errors():
    calls = threading.Event()

    def fetch():
        calls.set()
        raise ConnectionError("gateway busy")

    lines: list[str] = []
    with ColdProgress("tiny", fetch, lines.append, interval_s=0.01) as p:
        assert calls.wait(10)
    assert lines == [] and not p.was_cold
