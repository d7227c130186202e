"""Restore host buffers: right size, writable, alive as long as any view is."""
from __future__ import annotations

import gc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshots import hostbuf
from snapshots.hostbuf import copy_into_params, plan_staging


@pytest.mark.parametrize("strategy", ["populate", "empty"])
def test_buffer_is_writable_and_outlived_by_views(strategy):
    buf = hostbuf.allocate(3 * 4096, strategy=strategy)
    assert buf.dtype == torch.uint8 and buf.numel() == 3 * 4096
    view = buf[4096:8192].view(torch.float32)
    del buf
    gc.collect()
    view.fill_(2.0)  # the mapping must still be alive behind the view
    assert view.sum().item() == 2.0 * 1024


def test_zero_bytes_and_bad_strategy(monkeypatch):
    assert hostbuf.allocate(0).numel() == 0
    with pytest.raises(ValueError, match="THAWLINE_HOST_ALLOC"):
        hostbuf.allocate(10, strategy="bogus")
    monkeypatch.setenv("THAWLINE_HOST_ALLOC", "populate")
    assert hostbuf.default_strategy() == "populate"
    monkeypatch.setenv("THAWLINE_HOST_ALLOC", "huge")
    with pytest.raises(ValueError, match="THAWLINE_HOST_ALLOC"):
        hostbuf.allocate(10)


# -- GPU restore staging -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=30), st.integers(1, 3000))
def test_staging_chunks_never_exceed_the_bound_and_cover_every_byte_once(sizes, bound):
    named = [(f"t{i}", n) for i, n in enumerate(sizes)]
    plan = plan_staging(named, bound)
    covered: dict[str, list[tuple[int, int]]] = {}
    for chunk in plan:
        assert chunk and sum(p.nbytes for p in chunk) <= bound
        end = 0
        for p in chunk:  # packed contiguously in the staging buffer, inside the bound
            assert p.staging_offset == end and p.nbytes > 0
            end += p.nbytes
        assert end <= bound
        for p in chunk:
            covered.setdefault(p.name, []).append((p.offset, p.nbytes))
    for name, n in named:
        spans = covered.get(name, [])
        assert sum(s for _, s in spans) == n
        offset = 0
        for start, size in spans:  # in order, no gap, no overlap
            assert start == offset
            offset += size


def test_a_tensor_bigger_than_the_bound_is_split():
    plan = plan_staging([("big", 10), ("small", 3)], 4)
    assert [[tuple(p) for p in c] for c in plan] == [
        [("big", 0, 4, 0)], [("big", 4, 4, 0)], [("big", 8, 2, 0), ("small", 0, 2, 2)], [("small", 2, 1, 0)]]
    with pytest.raises(ValueError):
        plan_staging([("x", 1)], 0)


def test_copy_into_params_is_exact_and_stays_within_the_bound():
    import torch

    torch.manual_seed(0)
    host = {"a": torch.randn(1000), "b": torch.randn(37, 11).to(torch.bfloat16), "c": torch.randint(0, 9, (5,))}
    params = {n: torch.nn.Parameter(torch.zeros_like(t), requires_grad=False) for n, t in host.items()}
    used = copy_into_params(host, params, bound=1024)
    assert 0 < used <= 1024
    for n, t in host.items():
        assert torch.equal(params[n].data, t)
