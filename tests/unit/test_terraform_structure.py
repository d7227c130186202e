"""Structure of infra/terraform without the terraform binary (no network here): every .tf file is
parsed with python-hcl2 and the security properties the README promises are asserted."""
from __future__ import annotations

import re
from pathlib import Path

import hcl2
import pytest

from cluster.config import find_placeholders, load_cluster_config

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}


def _norm(node):
    """python-hcl2 keeps HCL's quotes on strings and marks blocks; strip both for plain data."""
    if isinstance(node, dict):
        return {_norm(k): _norm(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [_norm(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


@pytest.fixture(scope="module")
def tf():
    files = sorted(TF_DIR.glob("*.tf"))
    assert files, f"no .tf files in {TF_DIR}"
    merged = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}}
    for path in files:
        with path.open() as f:
            parsed = _norm(hcl2.load(f))
        for kind in ("resource", "data"):
            for entry in parsed.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        assert name not in merged[kind].setdefault(rtype, {}), f"duplicate {kind} {rtype}.{name}"
                        merged[kind][rtype][name] = body
        for kind in ("variable", "output"):
            for entry in parsed.get(kind, []):
                merged[kind].update(entry)
        for entry in parsed.get("locals", []):
            merged["locals"].update(entry)
    merged["text"] = "\n".join(p.read_text() for p in files)
    return merged


def _blocks(value):
    return value if isinstance(value, list) else [value]


def test_required_resources_present(tf):
    res = tf["resource"]
    for rtype, name in [
        ("aws_vpc", "this"), ("aws_subnet", "public"), ("aws_subnet", "private"),
        ("aws_security_group", "ray_nodes"), ("aws_s3_bucket", "snapshots"),
        ("aws_s3_bucket_versioning", "snapshots"), ("aws_s3_bucket_public_access_block", "snapshots"),
        ("aws_s3_bucket_server_side_encryption_configuration", "snapshots"),
        ("aws_s3_bucket_lifecycle_configuration", "snapshots"),
        ("aws_iam_role", "ray_head"), ("aws_iam_role", "ray_worker"),
        ("aws_iam_instance_profile", "ray_head"), ("aws_iam_instance_profile", "ray_worker"),
    ]:
        assert name in res.get(rtype, {}), f"missing resource {rtype}.{name}"


def test_no_ingress_from_the_whole_internet(tf):
    res = tf["resource"]
    ingresses = [rule for sg in res.get("aws_security_group", {}).values() for rule in _blocks(sg.get("ingress", []))]
    ingresses += [r for r in res.get("aws_security_group_rule", {}).values() if r.get("type") == "ingress"]
    ingresses += list(res.get("aws_vpc_security_group_ingress_rule", {}).values())
    assert ingresses
    for rule in ingresses:
        cidrs = _blocks(rule.get("cidr_blocks", [])) + _blocks(rule.get("ipv6_cidr_blocks", []))
        cidrs += [rule.get("cidr_ipv4"), rule.get("cidr_ipv6")]
        assert not OPEN_CIDRS & set(filter(None, cidrs)), f"ingress open to the internet: {rule}"
        # Node-to-node inside the group, the admin allowlist, the gateway load balancer's group
        # (the gateway port only), or HTTPS to that load balancer from the gateway allowlist.
        assert (rule.get("self") is True or rule.get("cidr_blocks") == "${var.admin_cidr_blocks}"
                or (rule.get("source_security_group_id") == "${aws_security_group.gateway_lb.id}"
                    and rule.get("from_port") == rule.get("to_port") == "${var.gateway_port}")
                or (rule.get("cidr_blocks") == "${var.gateway_cidr_blocks}" and rule.get("from_port") == 443)), rule


def test_gateway_is_reached_through_a_tls_load_balancer_from_an_allowlist(tf):
    res = tf["resource"]
    listener = res["aws_lb_listener"]["gateway_https"]
    assert listener["protocol"] == "HTTPS" and listener["certificate_arn"] == "${var.gateway_certificate_arn}"
    assert "TLS13" in listener["ssl_policy"]
    assert res["aws_lb_target_group"]["gateway"]["port"] == "${var.gateway_port}"
    lb_sg = res["aws_security_group"]["gateway_lb"]
    assert [r["from_port"] for r in _blocks(lb_sg["ingress"])] == [443]
    gw = tf["variable"]["gateway_cidr_blocks"]
    assert "default" not in gw and "0.0.0.0/0" in " ".join(v["condition"] for v in _blocks(gw["validation"]))


def test_ssh_and_dashboard_only_from_allowlist_and_allowlist_rejects_open_cidrs(tf):
    sg = tf["resource"]["aws_security_group"]["ray_nodes"]
    by_port = {r["from_port"]: r for r in _blocks(sg["ingress"]) if r.get("protocol") == "tcp"}
    assert by_port[22]["cidr_blocks"] == "${var.admin_cidr_blocks}"
    assert by_port["${var.dashboard_port}"]["cidr_blocks"] == "${var.admin_cidr_blocks}"
    # Ray's own ports are never opened to a CIDR: only the self-referencing rule covers them.
    assert [r for r in _blocks(sg["ingress"]) if r.get("self")] and all(p in (22, "${var.dashboard_port}") for p in by_port)
    admin = tf["variable"]["admin_cidr_blocks"]
    assert "default" not in admin, "the allowlist must be chosen by the operator"
    conditions = " ".join(v["condition"] for v in _blocks(admin["validation"]))
    assert "0.0.0.0/0" in conditions and "::/0" in conditions


def test_snapshot_bucket_encrypted_versioned_private_with_lifecycle(tf):
    res = tf["resource"]
    sse = res["aws_s3_bucket_server_side_encryption_configuration"]["snapshots"]
    default = _blocks(_blocks(sse["rule"])[0]["apply_server_side_encryption_by_default"])[0]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == "${aws_kms_key.thawline.arn}"
    assert res["aws_kms_key"]["thawline"]["enable_key_rotation"] is True

    pab = res["aws_s3_bucket_public_access_block"]["snapshots"]
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert pab[flag] is True, flag
    assert pab["bucket"] == "${aws_s3_bucket.snapshots.id}"

    versioning = res["aws_s3_bucket_versioning"]["snapshots"]
    assert _blocks(versioning["versioning_configuration"])[0]["status"] == "Enabled"

    rules = _blocks(res["aws_s3_bucket_lifecycle_configuration"]["snapshots"]["rule"])
    assert all(r["status"] == "Enabled" for r in rules)
    assert any("noncurrent_version_expiration" in r for r in rules), "old snapshot versions must expire"
    assert any("abort_incomplete_multipart_upload" in r for r in rules)


def _statements(doc):
    return _blocks(doc.get("statement", []))


def test_node_roles_reach_only_the_snapshot_bucket(tf):
    docs = tf["data"]["aws_iam_policy_document"]
    policies = tf["resource"]["aws_iam_role_policy"]
    attached = {(p["role"], p["policy"]) for p in policies.values()}
    # Both node roles carry the snapshot policy; no managed policies are attached.
    for role in ("ray_head", "ray_worker"):
        assert (f"${{aws_iam_role.{role}.id}}", "${data.aws_iam_policy_document.snapshot_access.json}") in attached
    assert "aws_iam_role_policy_attachment" not in tf["resource"]

    bucket_refs = ("${aws_s3_bucket.snapshots.arn}", "${aws_s3_bucket.snapshots.arn}/*")
    for doc_name, doc in docs.items():
        for st in _statements(doc):
            actions = st.get("actions", [])
            s3_actions = [a for a in actions if a.startswith("s3:")]
            if not s3_actions or st.get("effect") == "Deny":
                continue
            assert "s3:*" not in s3_actions, f"{doc_name}: s3:* is not least privilege"
            assert st["resources"] and all(r in bucket_refs for r in st["resources"]), f"{doc_name}/{st.get('sid')}: S3 actions must be scoped to the snapshot bucket, got {st['resources']}"
    kms = [st for st in _statements(docs["snapshot_access"]) if any(a.startswith("kms:") for a in st["actions"])]
    assert kms and all(st["resources"] == ["${aws_kms_key.thawline.arn}"] for st in kms)


def test_head_may_only_terminate_its_own_cluster_and_pass_the_worker_role(tf):
    statements = {st["sid"]: st for st in _statements(tf["data"]["aws_iam_policy_document"]["autoscaler"])}
    manage = statements["ManageOwnWorkers"]
    assert "ec2:TerminateInstances" in manage["actions"]
    cond = _blocks(manage["condition"])[0]
    assert cond["variable"] == "aws:ResourceTag/ray-cluster-name" and cond["values"] == ["${var.cluster_name}"]
    assert statements["PassWorkerRole"]["resources"] == ["${aws_iam_role.ray_worker.arn}"]
    star = [st["sid"] for st in statements.values() if "*" in _blocks(st["resources"])]
    assert star == ["DescribeForAutoscaler"], "only Describe* (no resource-level support) may use '*'"
    assert all(a.startswith("ec2:Describe") for a in statements["DescribeForAutoscaler"]["actions"])
    # Workers launch only into this VPC's private subnets, with this cluster's security group.
    launch = statements["LaunchWorkers"]["resources"]
    assert "aws_subnet.private[*].arn" in launch and "aws_security_group.ray_nodes.arn" in launch


def test_variables_and_outputs_are_described(tf):
    for kind in ("variable", "output"):
        for name, body in tf[kind].items():
            assert body.get("description", "").strip(), f"{kind} {name} has no description"


def test_aws_cluster_yaml_consumes_only_existing_outputs(tf):
    wanted = find_placeholders(load_cluster_config(REPO / "cluster" / "aws-gpu.yaml"))
    assert {"ray_head_instance_profile_arn", "ray_worker_instance_profile_arn", "private_subnet_ids"} <= wanted
    missing = wanted - set(tf["output"])
    assert not missing, f"cluster/aws-gpu.yaml uses terraform outputs that do not exist: {missing}"


def test_every_reference_is_declared(tf):
    """No terraform binary here to catch a typo'd reference, so check them by hand."""
    text = re.sub(r"#.*", "", tf["text"])
    for name in set(re.findall(r"\bvar\.([a-z0-9_]+)", text)):
        assert name in tf["variable"], f"undeclared variable var.{name}"
    for name in set(re.findall(r"\blocal\.([a-z0-9_]+)", text)):
        assert name in tf["locals"], f"undeclared local.{name}"
    for rtype, name in set(re.findall(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)", text)):
        assert name in tf["data"].get(rtype, {}), f"undeclared data.{rtype}.{name}"
    for rtype, name in set(re.findall(r"(?<![.\w])(aws_[a-z0-9_]+)\.([a-z0-9_]+)\b", text)):
        assert name in tf["resource"].get(rtype, {}), f"undeclared resource {rtype}.{name}"


def _alb_matches(pattern: str, path: str) -> bool:
    """ALB path_pattern semantics: `*` any characters, `?` one; the whole path must match."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, path) is not None


def _gateway_paths() -> set[str]:
    """The gateway's handler table (gateway/app.py), read from its source: every exact path, plus
    a sample under its /v1/admin/ prefix."""
    src = (REPO / "gateway" / "app.py").read_text()
    paths = set(re.findall(r'\("(?:GET|POST|PUT|PATCH|DELETE)", "(/[^"]*)"\)', src))
    assert {"/v1/chat/completions", "/ui", "/healthz"} <= paths, "gateway/app.py handler table not found"
    assert 'path.startswith("/v1/admin/")' in src
    return paths | {"/v1/admin/keys", "/v1/admin/keys/demo/rotate"}


def test_load_balancer_forwards_only_the_gateway_paths(tf):
    """The listener's default answers 404 itself; rules forward exactly the gateway's paths, so an
    LLM app's route_prefix on the proxy port is never reachable through the load balancer."""
    (listener,) = tf["resource"]["aws_lb_listener"].values()
    (default,) = _blocks(listener["default_action"])
    assert default["type"] == "fixed-response"
    (fixed,) = _blocks(default["fixed_response"])
    assert fixed["status_code"] == "404"
    patterns = []
    for rule in tf["resource"].get("aws_lb_listener_rule", {}).values():
        (action,) = _blocks(rule["action"])
        assert action["type"] == "forward" and "aws_lb_target_group.gateway" in action["target_group_arn"]
        for cond in _blocks(rule["condition"]):
            assert set(cond) == {"path_pattern"}, "only path conditions: a host header is the client's to choose"
            for pp in _blocks(cond["path_pattern"]):
                patterns.extend(pp["values"])
    assert patterns
    for path in _gateway_paths():
        assert any(_alb_matches(p, path) for p in patterns), f"{path} is not forwarded"
    for path in ("/tiny-llm/v1/chat/completions", "/llama-70b/v1/completions", "/llama-8b/thawline/state",
                 "/-/routes", "/-/healthz", "/", "/uiX", "/metrics/x", "/api/serve/applications/",
                 "/tiny/v1/models"):
        assert not any(_alb_matches(p, path) for p in patterns), f"{path} would reach the proxy port"


def test_idle_timeout_outlasts_every_shipped_cold_start_and_keepalives_fit_it(tf):
    """The load balancer cuts a connection silent for idle_timeout: a stream's keep-alive interval
    must sit well under it, and a non-streamed answer (no byte until it is whole) must fit in it
    for every target of every shipped gateway config (first token budget + answer time)."""
    from gateway.config import load_config

    idle = int(tf["resource"]["aws_lb"]["gateway"]["idle_timeout"])
    configs = sorted((REPO / "serve_apps" / "configs").glob("gateway-*.yaml"))
    configs = [p for p in configs if "providers:" in p.read_text()]   # gateway.yaml files, not Serve configs
    assert {p.name for p in configs} >= {"gateway-aws.yaml", "gateway-example.yaml"}
    longest = 0.0
    for path in configs:
        cfg = load_config(path)
        keepalive = cfg.server.stream_keepalive_s
        assert keepalive is not None and keepalive * 4 <= idle, f"{path.name}: keep-alive {keepalive}s vs idle {idle}s"
        for route in cfg.routes.values():
            for t in route.targets:
                longest = max(longest, t.first_token_timeout_s + t.timeout_s)
    assert longest >= 660, "the 70B route's budget should be among the shipped configs"
    assert idle > longest, f"idle_timeout {idle}s < a shipped target's silent budget {longest}s"
    assert idle <= 4000, "ALB's maximum idle timeout"

def test_node_secret_is_kms_encrypted_and_only_it_is_readable(tf):
    secret = tf["resource"]["aws_secretsmanager_secret"]["node_env"]
    assert secret["kms_key_id"] == "${aws_kms_key.thawline.arn}"
    # The value never goes through Terraform (it would sit in the state in plain text).
    assert "aws_secretsmanager_secret_version" not in tf["resource"]
    attached = {(p["role"], p["policy"]) for p in tf["resource"]["aws_iam_role_policy"].values()}
    for role in ("ray_head", "ray_worker"):
        assert (f"${{aws_iam_role.{role}.id}}", "${data.aws_iam_policy_document.node_secret_read.json}") in attached
    for doc_name, doc in tf["data"]["aws_iam_policy_document"].items():
        for st in _statements(doc):
            actions = st.get("actions", [])
            assert not [a for a in actions if a.startswith("ssm:")], f"{doc_name}: no SSM access"
            sm = [a for a in actions if a.startswith("secretsmanager:")]
            if sm:
                assert sm == ["secretsmanager:GetSecretValue"], f"{doc_name}: read-only, got {sm}"
                assert st["resources"] == ["${aws_secretsmanager_secret.node_env.arn}"], st["resources"]
    decrypt = [st for st in _statements(tf["data"]["aws_iam_policy_document"]["node_secret_read"])
               if "kms:Decrypt" in st["actions"]]
    conds = {c["variable"]: c["values"] for st in decrypt for c in _blocks(st["condition"])}
    assert conds["kms:EncryptionContext:SecretARN"] == ["${aws_secretsmanager_secret.node_env.arn}"]
    assert {"node_secret_arn", "gateway_store_url"} <= set(tf["output"])
