"""Node-join prewarm, the pure parts: which nodes can hold an app's replica, which nodes joined,
whether there is anything to prefetch, and the readiness board's prewarm records."""
from __future__ import annotations

from gateway.readiness import PREWARM_NODES_KEPT, Board
from serve_apps.llm.args import LLMAppArgs, placement_bundles
from serve_apps.llm.prewarm import NodeWatch, fits, group_demand, wants_prefetch

HEAD = {"CPU": 4.0, "node:__internal_head__": 1.0, "memory": 1e9}
ENGINE = {"CPU": 2.0, "thawline_engine": 2.0, "object_store_memory": 1e8}


def _args(**kw) -> LLMAppArgs:
    return LLMAppArgs(served_model_id="tiny", snapshot_url=kw.pop("snapshot_url", "s3://b/tiny/latest"), **kw)


def _node(nid: str, resources: dict, alive: bool = True) -> dict:
    return {"NodeID": nid, "Alive": alive, "Resources": resources}


def test_a_group_fits_only_a_node_that_holds_all_its_bundles():
    engine_only = group_demand(placement_bundles(_args(resources_per_rank={"thawline_engine": 1})))
    assert engine_only == {"CPU": 1.0, "thawline_engine": 1.0}
    assert fits(ENGINE, engine_only) and not fits(HEAD, engine_only)
    # STRICT_PACK: TP=2 needs both bundles on one node
    tp2 = group_demand(placement_bundles(_args(tensor_parallel_size=2, resources_per_rank={"thawline_engine": 1})))
    assert tp2 == {"CPU": 2.0, "thawline_engine": 2.0} and fits(ENGINE, tp2)
    assert not fits(ENGINE, group_demand(placement_bundles(_args(tensor_parallel_size=3))))
    # without a custom resource the head can hold a CPU replica (the single-node case)
    assert fits(HEAD, group_demand(placement_bundles(_args())))
    gpu = group_demand(placement_bundles(_args(accelerator="gpu", accelerator_type="L4")))
    assert not fits(HEAD, gpu) and fits({"CPU": 8, "GPU": 1, "accelerator_type:L4": 1}, gpu)
    assert fits({}, {"CPU": 0.0})


def test_node_watch_reports_each_fitting_node_once_when_it_joins():
    w = NodeWatch({"CPU": 1.0, "thawline_engine": 1.0})
    assert w.joined([_node("head", HEAD)]) == []
    assert w.joined([_node("head", HEAD), _node("e1", ENGINE)]) == ["e1"]
    assert w.joined([_node("head", HEAD), _node("e1", ENGINE)]) == []  # still there: not again
    # e1 dies (a dead entry stays in ray.nodes()), e2 joins: only e2 is new
    assert w.joined([_node("head", HEAD), _node("e1", ENGINE, alive=False), _node("e2", ENGINE)]) == ["e2"]
    assert w.joined([_node("e2", ENGINE), _node("e3", ENGINE), _node("e4", ENGINE, alive=False)]) == ["e3"]


def test_only_remote_snapshots_are_prefetched():
    assert wants_prefetch(_args())
    assert wants_prefetch(LLMAppArgs(served_model_id="t", model_source="/m", snapshot_store="gs://b/s"))
    assert not wants_prefetch(_args(snapshot_url="file:///s/tiny/latest"))
    assert not wants_prefetch(_args(snapshot_url="/s/tiny/latest"))
    assert not wants_prefetch(LLMAppArgs(served_model_id="t", model_source="/m", snapshot_store="/s"))


def test_board_merges_prewarm_events_per_node_and_keeps_the_newest_nodes():
    b = Board(clock=lambda: 0.0)
    assert b.prewarm("tiny") == []
    b.record_prewarm("tiny", "e1", {"node_seen": 1.0})
    b.record_prewarm("tiny", "e1", {"pool_ensured": 1.1, "prefetch_started": 1.2})
    b.record_prewarm("tiny", "e1", {"prefetch_done": 3.0, "prefetch_bytes": 42})
    b.record_prewarm("other", "e1", {"node_seen": 9.0})
    assert b.prewarm("tiny") == [{"node_id": "e1", "node_seen": 1.0, "pool_ensured": 1.1,
                                  "prefetch_started": 1.2, "prefetch_done": 3.0, "prefetch_bytes": 42}]
    for i in range(PREWARM_NODES_KEPT + 3):
        b.record_prewarm("tiny", f"n{i}", {"node_seen": float(i)})
    kept = b.prewarm("tiny")
    assert len(kept) == PREWARM_NODES_KEPT and kept[-1]["node_id"] == f"n{PREWARM_NODES_KEPT + 2}"
    assert "e1" not in {r["node_id"] for r in kept}
    # reads are copies: a caller cannot edit the board's records
    kept[0]["node_seen"] = -1.0
    assert b.prewarm("tiny")[0]["node_seen"] != -1.0
