"""The demo's snapshot building blocks on a real file:// store: tiny model -> TP=2 offline
snapshot -> both ranks restored with checksums, and the table the demo prints."""
from __future__ import annotations

from rich.console import Console

from cluster.demo.snapshot import ensure_tiny_model, offline_snapshot, restore_ranks, restore_table


def test_snapshot_restore_blocks_account_for_every_byte(tmp_path):
    hf_dir = ensure_tiny_model(tmp_path / "tiny")
    mtime = (hf_dir / "config.json").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path / "tiny") == hf_dir
    assert (hf_dir / "config.json").stat().st_mtime_ns == mtime  # reused, not regenerated

    from snapshots.offline import tensor_bytes_total

    url = offline_snapshot(hf_dir, (tmp_path / "store").as_uri(), name="tiny", tp=2)
    rows = restore_ranks(url, 2, verify=True)
    assert [r.rank for r in rows] == [0, 1]
    # Replicated tensors (norms) appear in both ranks, sharded ones are split: the ranks together
    # hold at least every byte of the checkpoint, and each rank strictly less than all of it.
    total = tensor_bytes_total(hf_dir)
    assert sum(r.bytes for r in rows) >= total
    assert all(0 < r.bytes < total for r in rows)
    assert rows[0].tensors == rows[1].tensors > 0

    console = Console(record=True, width=120)
    console.print(restore_table(rows, "restore"))
    text = console.export_text()
    assert "GB/s" in text and f"{sum(r.tensors for r in rows)}" in text


def test_demo_configs_pass_the_deploy_validation(tmp_path):
    """The demo's serve.yaml (built from the shipped gateway-serve.yaml + local-cpu.yaml) and its
    gateway.yaml pass exactly the checks `thawline deploy` runs before deploying."""
    from cluster.demo import stack as st
    from cluster.cli.ops.deploy import validate_config
    from gateway.config import load_config

    gw = st.write_yaml(tmp_path / "gateway.yaml", st.gateway_config("http://127.0.0.1:9/v1", (tmp_path / "l").as_uri()))
    cfg = load_config(gw)
    assert [t.provider for t in cfg.routes["resilient"].targets] == ["hosted-fake", "local"]
    assert cfg.routes["burst"].limits.rpm == st.BURST_RPM
    serve_yaml = st.write_yaml(tmp_path / "serve.yaml", st.serve_config(8123, "file:///abs/snap/tiny/x", gw))
    config, checks = validate_config(serve_yaml)
    assert {c.name: c.schema for c in checks} == {st.LLM_APP: "LLMAppArgs", st.GATEWAY_APP: "GatewayAppArgs"}
    llm = next(a for a in config.applications if a.name == st.LLM_APP)
    assert llm.args["autoscaling"]["min_replicas"] == 0  # deployed scaled to zero
    assert config.http_options.port == 8123


def test_cold_start_timeline_marks_each_state_change_once():
    import threading

    from cluster.demo.session import StateWatcher, Timeline, phases_table

    states = iter([({}, None), ({}, None), ({"STARTING": 1}, "warming"), ({"RUNNING": 1}, "warming"),
                   ({"RUNNING": 1}, "warm")])
    last = [({}, None)]
    done = threading.Event()

    def read():
        try:
            last[0] = next(states)
        except StopIteration:
            done.set()
        return last[0]

    tl = Timeline()
    with StateWatcher(tl, read, interval_s=0.001):
        assert done.wait(10)
    texts = [t for _, t in tl.events]
    assert len(texts) == 4  # the repeated first state is marked once
    assert "0 replicas" in texts[0] and "starting=1" in texts[1] and texts[-1].endswith("board: warm")
    assert [at for at, _ in tl.events] == sorted(at for at, _ in tl.events)

    table = phases_table({"phases_s": {"engine_start_with_weights": 12.25, "engine_prepare": 0.5, "total": 14.0}})
    console = Console(record=True, width=100)
    console.print(table)
    out = console.export_text()
    # in the order the phases ran, whatever the dict's order; the total last
    assert out.index("engine_prepare") < out.index("engine_start_with_weights") < out.index("total")
    assert "12.25" in out and "14.00" in out
    assert phases_table({"marks": {}}) is None
