"""GET /ui (gateway/ui/): auth by header, ?key= (sets a cookie) and cookie; the page shows the
ledger's spend, budgets, breakers and a local model's cold-start waterfall as inline SVG, and
loads nothing from elsewhere. The gateway runs in-process with an in-memory ledger (no Ray)."""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from xml.etree import ElementTree

import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.costs.pricing import PriceBook
from gateway.costs.schema import BudgetSpec, LedgerRow
from gateway.costs.tracker import CostTracker
from gateway.handle_ingress import call_asgi
from gateway.providers.base import Provider
from gateway.ui.page import render
from gateway.ui.svg import stacked_bars, waterfall

ADMIN, CLIENT = "tl-admin-ui", "tl-client-ui"
NOW = datetime.now(timezone.utc)
PHASES = {"serve_scheduling": 0.4, "worker_start": 0.3, "imports": 0.2, "engine_prepare": 1.5, "engine_start_with_weights": 2.5,
          "first_token": 0.1, "total": 5.0}


class Local(Provider):
    def __init__(self, name, cfg):
        super().__init__(name, cfg)
        self._state = {"state": "cold", "warm_replicas": 0}


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def build_gateway() -> Gateway:
    cfg = parse_config({
        "providers": {"oa": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"},
                      "an": {"type": "anthropic", "base_url": "http://127.0.0.1:9"},
                      "local": {"type": "serve", "app": "tiny-app"}},
        "routes": {"chat": {"targets": [{"provider": "oa", "model": "gpt-x"}, {"provider": "an", "model": "claude-x"}]},
                   "tiny": {"targets": [{"provider": "local", "model": "tiny"}]}},
        "keys": [{"id": "alice", "sha256": _sha(CLIENT)}],
        "server": {"admin_key_sha256": _sha(ADMIN)},
    })
    costs = CostTracker(PriceBook(), budgets={"key:alice": BudgetSpec(usd_per_day=10.0)})
    rows = [LedgerRow(key_id="alice", route="chat", target="oa", model="gpt-x", cost_usd=1.25, pricing="table",
                      ts=NOW - timedelta(days=1)),
            LedgerRow(key_id="alice", route="chat", target="an", model="claude-x", cost_usd=2.5, pricing="table", ts=NOW),
            LedgerRow(key_id="bob", route="tiny", target="local", model="tiny", cost_usd=0.125, pricing="local", ts=NOW)]
    costs.ledger.append([r.to_dict() for r in rows])
    providers = {"oa": Provider("oa", cfg.providers["oa"]), "an": Provider("an", cfg.providers["an"]),
                 "local": Local("local", cfg.providers["local"])}
    gw = Gateway(cfg, limits=None, costs=costs, providers=providers)

    async def lookup(app):
        return {"replica": "replica-7", "phases_s": PHASES} if app == "tiny-app" else None

    gw.dashboard.cold_start_lookup = lookup
    return gw


def _get(path: str, headers: dict | None = None) -> dict:
    return {"method": "GET", "path": path, "headers": headers or {}, "body": None}


@pytest.fixture
def gw():
    return build_gateway()


async def _page(gw, path="/ui", headers=None) -> tuple[dict, str]:
    out = await call_asgi(gw, _get(path, headers))
    body = out["body"]
    return out, body if isinstance(body, str) else body.decode() if isinstance(body, bytes) else str(body)


async def test_ui_needs_the_admin_key(gw):
    out, _ = await _page(gw)
    assert out["status"] == 401
    out, _ = await _page(gw, headers={"authorization": f"Bearer {CLIENT}"})
    assert out["status"] == 401
    out, _ = await _page(gw, "/ui?key=wrong")
    assert out["status"] == 401


async def test_ui_by_header_query_and_cookie(gw):
    out, html = await _page(gw, headers={"authorization": f"Bearer {ADMIN}"})
    assert out["status"] == 200 and out["headers"]["content-type"].startswith("text/html")
    assert "set-cookie" not in out["headers"]
    out, _ = await _page(gw, f"/ui?key={ADMIN}")
    assert out["status"] == 200
    cookie = out["headers"]["set-cookie"]
    assert cookie.startswith("thawline_admin=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert ADMIN not in cookie and "Secure" not in cookie   # a session token, not the key; plain HTTP
    token = cookie.split(";")[0].split("=", 1)[1]
    out, _ = await _page(gw, headers={"cookie": f"thawline_admin={token}"})
    assert out["status"] == 200
    # the admin key itself is no cookie, nor is a token with one character changed
    out, _ = await _page(gw, headers={"cookie": f"thawline_admin={ADMIN}"})
    assert out["status"] == 401
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    out, _ = await _page(gw, headers={"cookie": f"thawline_admin={forged}"})
    assert out["status"] == 401


async def test_ui_cookie_is_secure_behind_tls(gw):
    out, _ = await _page(gw, f"/ui?key={ADMIN}", headers={"x-forwarded-proto": "https"})
    assert out["status"] == 200 and "; Secure" in out["headers"]["set-cookie"]


def test_session_tokens_expire_and_bind_to_the_admin_key(monkeypatch):
    from gateway.ui import session

    k = session.signing_key("admin-key-1", _sha("admin-key-1"))
    t = session.mint(k, now=1000.0, ttl_s=60)
    assert session.valid(k, t, now=1059.0) and not session.valid(k, t, now=1060.0)
    # another replica with the same admin key (from its env) accepts it; another admin key does not
    assert session.valid(session.signing_key("admin-key-1", _sha("admin-key-1")), t, now=1000.0)
    assert not session.valid(session.signing_key("admin-key-2", _sha("admin-key-2")), t, now=1000.0)
    for bad in (None, "", "x", "1.2", "99999999999.n.", "a" * 500, t.replace(".", "", 1)):
        assert not session.valid(k, bad, now=1000.0)
    # only the digest known: a process-local key, still bound to the digest
    d1 = session.signing_key(None, _sha("a"))
    assert session.valid(d1, session.mint(d1), ) and d1 != session.signing_key(None, _sha("b"))
    assert session.over_tls({"scheme": "https", "headers": []})
    assert session.over_tls({"scheme": "http", "headers": [(b"x-forwarded-proto", b"https, http")]})
    assert not session.over_tls({"scheme": "http", "headers": [(b"x-forwarded-proto", b"http")]})


async def test_ui_shows_the_ledger_numbers(gw):
    _, html = await _page(gw, headers={"authorization": f"Bearer {ADMIN}"})
    assert "Thawline gateway" in html
    # spend per route / key / provider / model, as the ledger holds it
    assert "$3.7500" in html                                   # route chat: 1.25 + 2.5
    assert "$0.1250" in html                                   # route tiny, key bob, provider local
    assert re.search(r"alice</td><td class=\"num\">2</td><td class=\"num\">\$3\.7500", html)
    assert re.search(r"an</td><td class=\"num\">1</td><td class=\"num\">\$2\.5000", html)
    assert '<div class="card" data-metric="cost_usd"><b>$3.8750</b>' in html
    # budget of alice: today's spend 2.5 of 10
    assert "key:alice" in html and "$2.5000" in html and "25%" in html
    # breakers of every target, the local model's state and its cold-start waterfall
    assert "chat/0:oa/gpt-x" in html and 'class="state-closed"' in html
    assert "tiny-app" in html and 'class="state-cold"' in html and "replica-7" in html
    assert "engine_start_with_weights" in html and "total 5.00 s" in html
    # nothing loaded from elsewhere
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<script" not in html
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 6
    for s in svgs:
        ElementTree.fromstring(s.replace("&", "&amp;") if "&" in s and "&amp;" not in s else s)


def test_svg_charts_are_well_formed():
    rows = [{"bucket": "2026-05-10", "group": "a<b", "cost_usd": 1.0, "requests": 1},
            {"bucket": "2026-05-11", "group": "c", "cost_usd": 3.0, "requests": 2}]
    svg = stacked_bars(rows, title="t")
    root = ElementTree.fromstring(svg)
    assert root.tag.endswith("svg") and len([e for e in root.iter() if e.tag.endswith("rect")]) >= 2
    assert "a&lt;b" in svg
    w = ElementTree.fromstring(waterfall(PHASES, ("serve_scheduling", "engine_prepare")))
    assert len([e for e in w.iter() if e.tag.endswith("rect")]) == 2
    assert "no spend" in stacked_bars([], title="t") and "no cold start" in waterfall({}, ("engine_prepare",))
    assert "<html" in render({})
