"""Nothing private leaves the laptop: not into the node image's build context (.dockerignore), not
into a layer (the Dockerfile copies only the packages), not onto the nodes (aws-gpu.yaml's
rsync_exclude, checked with real rsync and the flags Ray's command runner passes). Also the
node-image build's platform and the pinned AMI."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# Private files as they appear in a working checkout, at the root and nested.
PRIVATE = [
    "infra/terraform/terraform.tfstate",
    "infra/terraform/terraform.tfstate.backup",
    "infra/terraform/terraform.tfvars",
    "infra/terraform/prod.tfvars",
    "infra/terraform/tf-outputs.json",
    "tf-outputs.json",
    "infra/terraform/.terraform/providers/aws/plugin",
    "infra/terraform/.terraform.lock.hcl",
    "aws-gpu.resolved.yaml",
    "node-env.json",
    ".demo/models/tiny/config.json",
    ".bench/results/run.json",
    "cluster/.env",
]
# What the nodes do need.
PUBLIC = ["pyproject.toml", "README.md", "cluster/aws-gpu.yaml", "gateway/config.py",
          "serve_apps/configs/gateway-aws.yaml", "infra/terraform/main.tf"]


def _decoy_tree(root: Path) -> None:
    for rel in PRIVATE + PUBLIC:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("decoy")


def _dockerignore_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore rule: the pattern (Go filepath.Match, plus `**` for any number of
    directories) is matched against the path from the context root; a match on a directory
    excludes everything under it."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?")


def _dockerignored(rel: str) -> bool:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "re-included paths would need ordered matching"
    return any(_dockerignore_regex(p.rstrip("/")).fullmatch(rel) for p in patterns)


@pytest.mark.parametrize("rel", PRIVATE)
def test_dockerignore_keeps_private_files_out_of_the_build_context(rel):
    assert _dockerignored(rel), f".dockerignore lets {rel} into the node image's build context"


@pytest.mark.parametrize("rel", PUBLIC)
def test_dockerignore_keeps_the_sources(rel):
    assert not _dockerignored(rel)


def test_the_dockerfile_copies_only_the_packages():
    copies = [ln.split() for ln in (REPO / "cluster/docker/Dockerfile").read_text().splitlines()
              if ln.startswith(("COPY", "ADD"))]
    assert copies
    for words in copies:
        sources = [w for w in words[1:-1] if not w.startswith("--")]
        assert "." not in sources and "./" not in sources, f"{' '.join(words)} copies the whole checkout"
        for src in sources:
            assert (REPO / src).exists() and not _dockerignored(src), src


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed (make system-deps)")
def test_rsync_exclude_keeps_private_files_off_the_nodes(tmp_path):
    cluster = yaml.safe_load((REPO / "cluster/aws-gpu.yaml").read_text())
    assert cluster["file_mounts"] == {"~/thawline-src": "."}
    src, dst = tmp_path / "checkout", tmp_path / "node"
    _decoy_tree(src)
    # ray.autoscaler's command runner: `rsync ... --exclude P` for each rsync_exclude entry.
    excludes = [a for p in cluster["rsync_exclude"] for a in ("--exclude", p)]
    subprocess.run(["rsync", "-a", *excludes, f"{src}/", f"{dst}/"], check=True, timeout=60)
    arrived = {str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()}
    assert arrived == set(PUBLIC), f"synced to the nodes: {sorted(arrived - set(PUBLIC))}"


def test_node_image_builds_for_the_nodes_platform():
    recipe = (REPO / "Makefile").read_text().split("\nnode-image:", 1)[1]
    build = next(ln for ln in recipe.splitlines() if "docker build" in ln)
    assert "--platform linux/amd64" in build


def test_the_ami_is_pinned():
    tf = "\n".join(p.read_text() for p in (REPO / "infra/terraform").glob("*.tf"))
    assert "most_recent" not in tf and 'data "aws_ami"' not in tf
    assert re.search(r'output "ray_node_ami_id" \{[^}]*value\s*=\s*var\.ray_node_ami_id', tf)
    assert re.search(r'variable "ray_node_ami_id" \{.*?regex\("\^ami-', tf, flags=re.S)
