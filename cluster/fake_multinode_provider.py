"""Ray's fake multi-node provider with what a real node's start commands run before `ray start`:
`thawline cluster preload`, the node zygote that imports torch + vLLM (serve_apps/llm/zygote.py).

A real node (cluster/aws-gpu.yaml, onprem.yaml) starts its zygote in its worker start commands,
then registers with Ray. The fake provider starts a node as a raylet inside the autoscaler's
monitor process and runs no commands, so this subclass does the same step there: the zygote for
the new node id is up, imports done, before that node's raylet starts. A node's zygote is
stopped with the node. A node type whose node_config says `thawline_preload: false` starts
none. Used as `provider: {type: external, module: <this class>}`
(cluster/fake_multinode.fake_multinode_config(preload=True)).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

from serve_apps.llm import zygote

log = logging.getLogger(__name__)

PRELOAD_TIMEOUT_S = 300.0


# node_config key: false for a node type whose nodes start no zygote (a bench's baseline nodes)
PRELOAD_KEY = "thawline_preload"


class PreloadingFakeProvider(FakeMultiNodeProvider):
    _preload_next = True

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        self._preload_next = node_config.get(PRELOAD_KEY, True)
        super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)

    def _next_hex_node_id(self) -> str:
        # Called by the node creation just before it starts the node's raylet.
        node_id = super()._next_hex_node_id()
        if not self._preload_next:
            return node_id
        sock = zygote.socket_path(node_id)
        try:
            status = zygote.start_detached(sock, Path(sock).with_suffix(".log"), timeout_s=PRELOAD_TIMEOUT_S)
            log.info("node %s: zygote imports done in %.1f s", node_id, status["import_s"])
        except zygote.ZygoteStartError as e:
            log.error("node %s: %s; its engine hosts will import on demand", node_id, e)
        return node_id

    def terminate_node(self, node_id: str) -> None:
        super().terminate_node(node_id)
        status = zygote.read_status(zygote.socket_path(node_id))
        if status is not None:
            zygote.stop(status["pid"])
