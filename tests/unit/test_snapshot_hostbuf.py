"""Restore host buffers: right size, writable, alive as long as any view is."""
from __future__ import annotations

import gc

import pytest
import torch

from snapshots import hostbuf


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
