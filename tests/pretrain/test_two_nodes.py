"""Two nodes simulated on one machine: launch/torchrun_multi_node.sh started twice at once
(NNODES=2, one rank per node, a c10d rendezvous on 127.0.0.1, node ranks assigned by it), both
with the same runtime.out_dir, as on a cluster whose nodes share a filesystem. What differs
from the one-node tests: LOCAL_RANK is 0 on both ranks, LOCAL_WORLD_SIZE (1) differs from
WORLD_SIZE (2), and each node has a launcher of its own that removes, then reads, the REQUEUE
marker in the shared folder.

Every launch runs under a timeout: a hang fails the test, and every process it started (found
by a marker in their environment) is killed by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from worker_run import LAUNCH_VARS, free_port

from eofm.pretrain.preemption import REQUEUE_EXIT_CODE

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "torchrun_multi_node.sh"
TIMEOUT_S = 120
TAG = "EOFM_TWO_NODES_TEST"  # set in every process of one launch, to find them all

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/environ").is_file(),
                                 reason="finds the launch's processes through /proc (Linux)")]


@pytest.fixture(scope="module")
def config(tiny_run_config) -> Path:
    """The tiny run of the trainer tests (144 tiles of 32 px, batch 16: 8 per rank, 9 steps per
    epoch) with each step's sample keys written per rank."""
    return tiny_run_config({"logging": {"sample_keys": True}}, name="two_nodes")


class TwoNodes:
    """Both nodes' launchers of one job, started at once; ``wait`` returns their statuses."""

    def __init__(self, tmp: Path, config: Path, out: Path, *extra: str) -> None:
        self.tag = uuid.uuid4().hex
        torchrun = tmp / "torchrun"  # the launcher takes one command; this one is this python's
        torchrun.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
        torchrun.chmod(0o755)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in (*LAUNCH_VARS, "LOCAL_WORLD_SIZE")}
        env.update({TAG: self.tag, "OMP_NUM_THREADS": "1", "NNODES": "2",
                    "MASTER": "127.0.0.1", "PORT": str(port), "RDZV_ID": f"two{port}",
                    "NPROC": "1", "PYTHON": sys.executable, "TORCHRUN": str(torchrun),
                    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "60"})
        cmd = ["bash", str(SCRIPT), "--config", str(config), f"runtime.out_dir={out}", *extra]
        self.logs = [tmp / f"node{n}.{self.tag[:6]}.log" for n in (0, 1)]
        self._files = [log.open("w") for log in self.logs]
        self.procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f,
                                       stderr=subprocess.STDOUT, start_new_session=True)
                      for f in self._files]

    def processes(self) -> dict[int, dict[str, str]]:
        """``{pid: environment}`` of every live process of this launch (launchers, torchrun
        agents, ranks), read from /proc."""
        found = {}
        for env_file in Path("/proc").glob("[0-9]*/environ"):
            try:
                entries = env_file.read_bytes().split(b"\0")
            except OSError:  # gone, or not ours to read
                continue
            env = dict(e.decode(errors="replace").partition("=")[::2] for e in entries if e)
            if env.get(TAG) == self.tag:
                found[int(env_file.parent.name)] = env
        return found

    def rank_pid(self, rank: int) -> int:
        """The pid of the training process of global ``rank`` (waits for it to start)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < TIMEOUT_S:
            for pid, env in self.processes().items():
                if env.get("RANK") == str(rank) and "TORCHELASTIC_RUN_ID" in env:
                    return pid
            time.sleep(0.1)
        raise AssertionError(f"no process of rank {rank} after {TIMEOUT_S} s")

    def wait(self) -> list[int]:
        """Both launchers' exit statuses; kills everything and fails after TIMEOUT_S."""
        deadline = time.monotonic() + TIMEOUT_S
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            raise AssertionError(f"a node hung: still running after {TIMEOUT_S} s\n"
                                 + self.output()[-3000:]) from None
        finally:
            for pid in self.processes():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:  # already gone
                    continue
            for f in self._files:
                f.close()

    def output(self) -> str:
        return "\n".join(f"--- node {n}\n{log.read_text(errors='replace')}"
                         for n, log in enumerate(self.logs))


def _wait_for_a_step(out: Path, nodes: TwoNodes) -> None:
    t0 = time.monotonic()
    metrics = out / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert all(p.poll() is None for p in nodes.procs), nodes.output()[-3000:]
        assert time.monotonic() - t0 < TIMEOUT_S, "no step trained"
        time.sleep(0.1)


def test_one_node_preempted_both_checkpoint_once_and_resume_together(
        config: Path, sample_data: Path, tmp_path: Path) -> None:
    """data.build_from into a folder that does not exist yet: built once (rank 0), the other
    node waits. SIGUSR1 to the rank of ONE node (rank 1; rank 0 writes the files): the ranks
    agree to stop, one checkpoint is written, both launchers exit 75 (the marker on the shared
    folder). Launched again, both resume from that step, each sample of epoch 0 is read
    exactly once across the two nodes, and rank 0 draws the last step's preview."""
    data, out = tmp_path / "built", tmp_path / "run"
    build = [f"data.path={data}", f"data.build_from={sample_data / 'sentinel2_l1c_scene'}",
             "data.build_args=[--tile, '32']"]
    nodes = TwoNodes(tmp_path, config, out, *build, "schedule.steps=100000")
    _wait_for_a_step(out, nodes)
    os.kill(nodes.rank_pid(1), signal.SIGUSR1)
    assert nodes.wait() == [REQUEUE_EXIT_CODE] * 2, nodes.output()[-4000:]
    assert "already there" not in nodes.output()
    assert json.loads((data / "manifest.json").read_text())["sample_count"] == 144
    assert (out / "REQUEUE").is_file() and (out / "config.yaml").is_file()
    [ckpt] = (out / "checkpoints").glob("step_*.pt")
    step = int(ckpt.stem.split("_")[1])
    assert not list((out / "checkpoints").glob("*.tmp"))

    total = max(9, step + 1)
    again = TwoNodes(tmp_path, config, out, *build, f"schedule.steps={total}",
                     f"logging.preview_every={total}")
    assert again.wait() == [0, 0], again.output()[-4000:]
    # DDP: the module is whole on every rank, each runs the reconstruction, rank 0 writes
    assert [p.name for p in (out / "previews").iterdir()] == [f"step_{total:09d}.png"]
    assert f"resumed from step {step}" in again.output()
    assert not (out / "REQUEUE").exists()
    recs = [json.loads(x) for f in sorted(out.glob("samples.rank*.jsonl"))
            for x in f.read_text().splitlines()]
    assert sorted(f.name for f in out.glob("samples.rank*.jsonl")) == [
        "samples.rank0.jsonl", "samples.rank1.jsonl"]
    epoch0 = [k for r in recs if r["epoch"] == 0 for k in r["keys"]]
    assert len(epoch0) == len(set(epoch0)) == 144
    assert sorted(r["step"] for r in recs) == sorted(list(range(1, total + 1)) * 2)


def test_a_failed_build_is_reported_on_every_node(config: Path, sample_data: Path,
                                                  tmp_path: Path) -> None:
    """data.build_from fails on rank 0: the other node's rank says why too, and both stop
    with the refusal status. Before, rank 1 waited in a barrier that broke when rank 0 exited
    ("Connection closed by peer"): the node without rank 0 never named the failure."""
    data = tmp_path / "built"
    nodes = TwoNodes(tmp_path, config, tmp_path / "run", f"data.path={data}",
                     f"data.build_from={sample_data / 'sentinel2_l1c_scene'}",
                     "data.build_args=[--tile, '100000']")  # larger than the scene
    statuses = nodes.wait()
    assert all(s != 0 for s in statuses), nodes.output()[-3000:]
    for log in nodes.logs:
        text = log.read_text(errors="replace")
        assert f"eofm-pretrain: error: data.build_from: building {data} from" in text, text[-3000:]
        assert "Connection closed by peer" not in text
    assert not (data / "manifest.json").exists()


def test_a_rank_that_cannot_see_rank_0s_build_says_the_folder_must_be_shared(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """data.path on a node's own disk: rank 0 built it on its node, so another node's rank
    never sees it. It says so (after a grace period for a shared filesystem's caches) instead of
    a bare "no manifest found" at the folder the config asked to build."""
    from eofm.pretrain import data as D
    from eofm.pretrain import distributed as dist
    from eofm.pretrain.config import load_config

    cfg = load_config(None, [f"data.path={tmp_path / 'local'}", "data.build_from=raw"],
                      check=False)
    monkeypatch.setattr(dist, "broadcast_object",
                        lambda obj, src=0, group=None: "built")  # rank 0's word
    monkeypatch.setattr(D, "BUILD_VISIBLE_WAIT_S", 0.2, raising=False)
    with pytest.raises(D.DatasetBuildError, match=r"rank 0 built .*local from data.build_from, "
                                                   r"but rank 1 does not see it .* a filesystem "
                                                   r"every node shares"):
        D.ensure_dataset(cfg, rank=1)


def test_ranks_wait_for_a_build_longer_than_the_process_group_timeout(tmp_path: Path,
                                                                     spawn_ranks) -> None:
    """Rank 0 builds data.path for longer than the default group's timeout (2 s in the worker;
    nccl's is 10 minutes, shorter than building a real dataset): the other rank waits for it
    on a patient group of its own instead of failing at the timeout."""
    from patient_build_worker import main

    spawn_ranks(2, main, str(tmp_path / "ds"))
    assert (tmp_path / "ds" / "manifest.json").is_file()
