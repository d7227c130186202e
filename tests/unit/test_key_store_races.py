"""The key store under races, stray files and hostile ids, on real stores (memory:// and file://;
S3 via moto in tests/integration/test_key_store_s3.py). Two KeyRecordStore instances stand for two
replicas; threads released by one barrier make their edits race. No Ray."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import uuid

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import KeyConfig, parse_config
from gateway.key_records import (KeyExists, KeyMissing, KeyRecordStore, digest, key_record,
                                 new_secret)
from tests.unit.test_gateway_key_admin import ADMIN, cfg

ROUNDS = 25     # the unconditional store lost the revoke in most rounds; 25 makes a pass by luck ~0


@pytest.fixture(params=["memory", "file"])
def url(request, tmp_path):
    if request.param == "memory":
        return f"memory://ks-{uuid.uuid4().hex[:8]}"
    return f"file://{tmp_path}/ks"


def race(*fns):
    """Run `fns` in threads released together; their results (or exceptions) in order."""
    gate = threading.Barrier(len(fns))
    out: list = [None] * len(fns)

    def run(i, fn):
        gate.wait()
        try:
            out[i] = fn()
        except Exception as e:  # noqa: BLE001 - the race's loser answers with an exception
            out[i] = e
    ts = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return out


def new_rec(key_id: str) -> dict:
    return key_record(KeyConfig(id=key_id, sha256=digest(new_secret())))


def rotate(r: dict) -> dict:
    return {**r, "sha256": digest(new_secret())}


def patch(r: dict) -> dict:
    return {**r, "limits": {"rpm": 5}}


@pytest.mark.parametrize("edit", [rotate, patch], ids=["rotate", "patch"])
def test_a_revoke_that_answered_stays_revoked(url, edit):
    a, b = KeyRecordStore(url), KeyRecordStore(url)
    for i in range(ROUNDS):
        kid = f"k{i}"
        a.create_key(new_rec(kid))
        revoked, edited = race(lambda: a.delete_key(kid), lambda: b.update_key(kid, edit))
        assert revoked is True, revoked
        # the edit either landed before the revoke (then the revoke superseded it) or lost to it
        assert isinstance(edited, (dict, KeyMissing)), edited
        assert a.get_key(kid) is None and b.get_key(kid) is None
        assert kid not in a.read_all().keys and kid not in b.read_all().keys
        with pytest.raises(KeyMissing):
            b.update_key(kid, edit)      # a later edit cannot resurrect it either


def test_two_creates_of_one_id_one_wins(url):
    a, b = KeyRecordStore(url), KeyRecordStore(url)
    for i in range(ROUNDS):
        ra, rb = new_rec(f"c{i}"), new_rec(f"c{i}")
        out = race(lambda: a.create_key(ra), lambda: b.create_key(rb))
        wins = [o for o in out if isinstance(o, dict)]
        assert len(wins) == 1 and sum(isinstance(o, KeyExists) for o in out) == 1, out
        assert a.read_all().keys[f"c{i}"]["sha256"] == wins[0]["sha256"]   # the winner's secret works


def test_concurrent_patches_all_land_in_order(url):
    a, b = KeyRecordStore(url), KeyRecordStore(url)
    a.create_key(new_rec("p"))
    out = race(*[(lambda s=s, n=n: s.update_key("p", lambda r: {**r, "routes": [*r.get("routes", []), f"r{n}"]}))
                 for n, s in enumerate([a, b, a, b])])
    assert all(isinstance(o, dict) for o in out), out
    # no lost update: each edit re-read the winner's version before applying itself
    assert sorted(a.get_key("p")["routes"]) == sorted(["*", "r0", "r1", "r2", "r3"])


def test_revoked_id_can_be_created_again(url):
    s = KeyRecordStore(url)
    s.create_key(new_rec("again"))
    assert s.delete_key("again") is True and s.delete_key("again") is False
    s.create_key(new_rec("again"))
    assert "again" in s.read_all().keys


def _write(s: KeyRecordStore, rel: str, data: bytes) -> str:
    p = f"{s.root}/{rel}"
    s.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    s.fs.pipe_file(p, data)
    return p


def test_stray_and_malformed_files_are_skipped_with_a_warning(url, caplog):
    s = KeyRecordStore(url)
    s.create_key(new_rec("good"))
    good = new_rec("legacy")
    import orjson
    bad = {"list": _write(s, "keys/list.json", b"[1, 2]"),
           "numid": _write(s, "keys/numid.json", orjson.dumps({**good, "id": 7})),
           "trunc": _write(s, "keys/trunc/000000000001.json", orjson.dumps(new_rec("trunc"))[:20]),
           "stray": _write(s, "keys/notes.txt", b"hello"),
           "route": _write(s, "routes/r1.json", b"{\"limits\": 3}")}
    _write(s, "keys/legacy.json", orjson.dumps(good))       # a pre-version record still works
    with caplog.at_level(logging.WARNING, logger="thawline.gateway"):
        snap = s.read_all()
    assert set(snap.keys) == {"good", "legacy"} and snap.routes == {}
    for name, path in bad.items():
        assert any(path in r.getMessage() for r in caplog.records), (name, path, caplog.text)
    assert {k.id for k in snap.key_configs()} == {"good", "legacy"}
    # a malformed key can be revoked (it never worked; now nothing can bring it back) ...
    assert s.delete_key("trunc") is True and s.get_key("trunc") is None
    # ... and a legacy key is edited and revoked through versions
    assert s.update_key("legacy", patch)["limits"] == {"rpm": 5}
    assert s.delete_key("legacy") is True and "legacy" not in s.read_all().keys


def _gateway(url: str) -> tuple[Gateway, httpx.AsyncClient]:
    g = Gateway(parse_config(cfg(url)), limits=None, costs=None)
    return g, httpx.AsyncClient(transport=httpx.ASGITransport(app=g), base_url="http://g")


ADM = {"authorization": f"Bearer {ADMIN}"}


def test_gateway_starts_lists_and_revokes_beside_bad_files(url):
    s = KeyRecordStore(url)
    _write(s, "keys/list.json", b"[]")
    _write(s, "keys/num/000000000001.json", b'{"id": 5, "sha256": "x"}')
    _write(s, "keys/cut/000000000001.json", b'{"id": "cut", "sha2')

    async def main():
        g, c = _gateway(url)
        try:
            await g.startup()
            r = await c.post("/v1/admin/keys", headers=ADM, json={"id": "ok"})
            assert r.status_code == 201, r.text
            secret = r.json()["key"]
            ls = await c.get("/v1/admin/keys", headers=ADM)
            assert ls.status_code == 200 and {k["id"] for k in ls.json()["data"]} == {"static", "ok"}
            assert (await c.delete("/v1/admin/keys/cut", headers=ADM)).status_code == 200
            assert (await c.delete("/v1/admin/keys/list", headers=ADM)).status_code == 200
            assert (await c.delete("/v1/admin/keys/ok", headers=ADM)).status_code == 200
            assert (await c.get("/v1/models", headers={"authorization": f"Bearer {secret}"})).status_code == 401
        finally:
            await g.shutdown()
    asyncio.run(main())


@pytest.mark.parametrize("method,path,body", [
    ("PATCH", "/v1/admin/keys/a%00b", {"limits": {"rpm": 1}}),
    ("DELETE", "/v1/admin/keys/" + "k" * 10_000, None),
    ("POST", "/v1/admin/keys/..%2Froutes%2Fr1/rotate", None),
    ("POST", "/v1/admin/keys", {"id": "a\x00b"}),
    ("POST", "/v1/admin/keys", {"id": "k" * 10_000}),
    ("POST", "/v1/admin/keys", {"id": "../routes/r1"}),
    ("POST", "/v1/admin/keys", {"id": 12}),
])
def test_bad_key_ids_are_400_in_the_openai_shape(method, path, body):
    url = f"memory://ks-{uuid.uuid4().hex[:8]}"

    async def main():
        g, c = _gateway(url)
        try:
            r = await c.request(method, path, headers=ADM, json=body)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == "id" and len(err["message"]) < 300
            assert KeyRecordStore(url).fs.find(KeyRecordStore(url).root) == []    # nothing written
        finally:
            await g.shutdown()
    asyncio.run(main())


def test_cli_refuses_a_path_as_key_id(url):
    """`thawline keys set ../routes/r1 --rpm 1` against a live gateway: one line, exit 1, and route
    r1 keeps its limits (an HTTP client folds '..', so the id must be checked before the URL)."""
    from typer.testing import CliRunner

    from cluster.cli.main import app as cli
    from testkit.asgi_server import serve_asgi

    with serve_asgi(Gateway(parse_config(cfg(url)), limits=None, costs=None)) as base:
        env = {"THAWLINE_ADMIN_KEY": ADMIN, "THAWLINE_BASE_URL": f"{base}/v1"}
        runner = CliRunner()
        for argv in (["keys", "set", "../routes/r1", "--rpm", "1"], ["keys", "revoke", "a\x00b"],
                     ["keys", "rotate", "k" * 10_000], ["keys", "create", "--id", "../x"]):
            res = runner.invoke(cli, argv, env=env)
            out = res.output.strip()
            assert res.exit_code != 0 and out.startswith("error: invalid key id") and "\n" not in out, out
        assert KeyRecordStore(url).read_all().routes == {}
        ok = runner.invoke(cli, ["keys", "create", "--id", "fine"], env=env)
        assert ok.exit_code == 0 and "fine" in KeyRecordStore(url).read_all().keys, ok.output


def test_digest_only_and_versions_recorded(url):
    s = KeyRecordStore(url)
    secret = new_secret()
    rec = s.create_key(key_record(KeyConfig(id="v", sha256=digest(secret))))
    assert rec["version"] == 1 and secret not in str(s.read_all().keys)
    assert s.update_key("v", patch)["version"] == 2
    assert hashlib.sha256(secret.encode()).hexdigest() == s.get_key("v")["sha256"]
