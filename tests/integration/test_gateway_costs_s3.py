"""The cost ledger on S3 (a real moto server on loopback, through s3fs)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gateway.costs.ledger import Ledger
from gateway.costs.schema import LedgerRow

pytestmark = pytest.mark.integration


def test_ledger_round_trip_on_s3(moto_server, s3_bucket_url):
    opts = {"client_kwargs": {"endpoint_url": moto_server}, "skip_instance_cache": True}
    ts = datetime(2026, 6, 1, 9, 30, tzinfo=timezone.utc)
    led = Ledger(f"{s3_bucket_url}/ledger", opts)
    rows = [LedgerRow(key_id=k, route="chat", target="oa", model="gpt-4o-mini", tokens_in=100, tokens_out=10,
                      cost_usd=0.5, pricing="table", ts=ts).to_dict() for k in ("a", "a", "b")]
    led.append(rows)
    assert led.flush() == 3
    reader = Ledger(f"{s3_bucket_url}/ledger", opts)                   # another process, same bucket
    assert {r["group"]: (r["requests"], r["cost_usd"]) for r in reader.query("key")} == {"a": (2, 1.0), "b": (1, 0.5)}
    reader.load_totals(ts)
    assert reader.totals.get("route:chat", "2026-06") == pytest.approx(1.5)
    assert not [f for f in reader.fs.find(f"{s3_bucket_url}/ledger") if f.endswith(".tmp")]
