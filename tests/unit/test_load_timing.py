"""The loader's timing event (snapshots/vllm_engine/load_timing.py): written per rank, read back typed."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from snapshots.vllm_engine.load_timing import TIMING_FILE_ENV, RankLoad, read_rank_loads, record_rank_load


def _load(rank: int) -> RankLoad:
    return RankLoad(rank=rank, snapshot="tiny/s1", weights_s=0.5 + rank, restore_s=0.25, nbytes=1024,
                    how="mapped from the part files", peak_device_mib=0.0)


def test_each_rank_appends_one_event_and_the_reader_gets_them_back(tmp_path, monkeypatch):
    path = tmp_path / "loads.jsonl"
    monkeypatch.setenv(TIMING_FILE_ENV, str(path))
    record_rank_load(_load(0))
    record_rank_load(_load(1))
    back = read_rank_loads(path)
    assert [b.rank for b in back] == [0, 1] and back[1].weights_s == 1.5
    assert all(b.event == "thawline.rank_loaded" for b in back)


def test_nothing_is_written_without_the_variable_and_a_missing_file_reads_empty(tmp_path, monkeypatch):
    monkeypatch.delenv(TIMING_FILE_ENV, raising=False)
    record_rank_load(_load(0))
    assert list(tmp_path.iterdir()) == []
    assert read_rank_loads(tmp_path / "none.jsonl") == []


def test_a_malformed_event_is_refused_not_guessed(tmp_path):
    path = tmp_path / "loads.jsonl"
    path.write_text('{"event": "thawline.rank_loaded", "rank": 0, "weights": 1.0}\n')
    with pytest.raises(ValidationError):
        read_rank_loads(path)
