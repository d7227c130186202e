"""Adapter names, push ids, the reserved snapshot id and the error classes
(snapshots/adapters/layout.py, errors.py; snapshots/format.py check_name)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from snapshots.adapters import AdapterBaseMismatch, AdapterCorrupt, AdapterError, AdapterExists, AdapterNotFound
from snapshots.adapters.layout import check_adapter_name, is_push_id, new_push_id
from snapshots.errors import SnapshotError
from snapshots.format import check_name
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("good", ["alice", "a", "sql-v2.1", "A_b-9", "x" * 128])
def test_good_adapter_names(good):
    assert check_adapter_name(good) == good


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden", "-x", "x" * 129, "a b", "a\n", None])
def test_bad_adapter_names(bad):
    with pytest.raises(ValueError, match="invalid adapter name"):
        check_adapter_name(bad)


def test_a_colon_is_refused_because_the_gateway_splits_on_it():
    with pytest.raises(ValueError, match=r"':' separates a route from its adapter \(<route>:<adapter>\)"):
        check_adapter_name("tiny:alice")


def test_adapters_is_a_reserved_snapshot_id_but_a_fine_model_name():
    with pytest.raises(ValueError, match="'adapters' is reserved"):
        check_name("snapshot id", "adapters")
    with pytest.raises(ValueError, match="'latest' is reserved"):
        check_name("snapshot id", "latest")
    assert check_name("model name", "adapters") == "adapters"


def test_push_ids_sort_by_time_are_unique_and_recognised():
    a, b = new_push_id(1_000_000), new_push_id(2_000_000)
    assert a < b and is_push_id(a) and is_push_id(b)
    assert new_push_id(5.0) != new_push_id(5.0)
    for bad in ("adapter.json", "../x", "20260101T000000Z-0a1b2c3", a + "\n", 7):
        assert not is_push_id(bad)


def test_every_adapter_error_is_a_snapshot_error():
    for cls in (AdapterNotFound, AdapterExists, AdapterCorrupt, AdapterBaseMismatch):
        assert issubclass(cls, AdapterError)
    assert issubclass(AdapterError, SnapshotError)


def test_importing_the_package_imports_no_torch_ray_or_vllm():
    code = ("import sys, snapshots.adapters, snapshots.adapters.gc; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'vllm'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
