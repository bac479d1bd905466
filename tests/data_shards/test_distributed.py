"""Two real processes under torchrun (gloo): ranks read disjoint, equal-sized splits."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_disjoint_equal(sample_data: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ben"
    m = build(BuildConfig(str(sample_data / "bigearthnet"), str(ds), shard_samples=5,
                          ingest=IngestOptions(tile=40), progress=False))
    assert m is not None and m.sample_count == 54
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(HERE / "dist_reader_worker.py"), str(ds), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    k0, k1 = ranks[0]["keys"], ranks[1]["keys"]
    assert len(k0) == len(k1) == 27  # even split: DDP ranks step together
    assert not set(k0) & set(k1) and len(set(k0) | set(k1)) == 54
