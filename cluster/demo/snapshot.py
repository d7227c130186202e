"""Demo building blocks for the snapshot half: generate the tiny model, snapshot it at TP=2,
restore every rank with checksum verification, and tabulate bytes / seconds / GB/s.

No Ray and no vLLM here: the offline snapshot (`--engine none`) TP-splits the safetensors
checkpoint directly through the store's API, and restore is the same per-rank code path the
vLLM loader plugin uses inside each TP worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table


@dataclass
class RankRestore:
    rank: int
    tensors: int
    bytes: int
    seconds: float
    read_s: float
    verify_s: float
    gbps: float


def ensure_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Generate the deterministic tiny Llama once; a complete earlier copy (config.json is
    moved in with the weights, atomically) is reused, since the same seed gives the same bytes."""
    from cluster.models.tinyllama import generate_llama

    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    return generate_llama(out_dir, preset="tiny", seed=seed)


def offline_snapshot(hf_dir: Path, store_url: str, *, name: str, tp: int) -> str:
    """TP-split the checkpoint into a new snapshot (fresh id each run); returns its URL."""
    from snapshots.offline import create_offline_snapshot

    return create_offline_snapshot(hf_dir, tp=tp, store_url=store_url, name=name)


def restore_ranks(snapshot_url: str, tp: int, *, verify: bool = True) -> list[RankRestore]:
    """Restore each rank as its TP worker would (its own rows only), checksums verified."""
    from snapshots.restore import restore

    out = []
    for rank in range(tp):
        r = restore(snapshot_url, rank, verify=verify)
        t = r.timings
        out.append(RankRestore(rank, len(r.tensors), t.bytes, t.seconds, t.read_s, t.verify_s, t.gbps))
        del r  # drop the rank's buffer before the next rank allocates its own
    return out


def restore_table(rows: list[RankRestore], title: str) -> Table:
    table = Table(title=title, show_footer=True)
    table.add_column("rank", footer="all")
    table.add_column("tensors", justify="right", footer=str(sum(r.tensors for r in rows)))
    table.add_column("MB", justify="right", footer=f"{sum(r.bytes for r in rows) / 1e6:.2f}")
    table.add_column("read s", justify="right", footer=f"{sum(r.read_s for r in rows):.3f}")
    table.add_column("verify s", justify="right", footer=f"{sum(r.verify_s for r in rows):.3f}")
    table.add_column("total s", justify="right", footer=f"{sum(r.seconds for r in rows):.3f}")
    total_s = sum(r.seconds for r in rows)
    table.add_column("GB/s", justify="right",
                     footer=f"{sum(r.bytes for r in rows) / total_s / 1e9:.2f}" if total_s else "-")
    for r in rows:
        table.add_row(str(r.rank), str(r.tensors), f"{r.bytes / 1e6:.2f}", f"{r.read_s:.3f}",
                      f"{r.verify_s:.3f}", f"{r.seconds:.3f}", f"{r.gbps:.2f}")
    return table
