"""Behaviour that depends on the shape of the machine (CPUs, affinity, ranks per node) which a
2-CPU single-node CI never sees; each shape is simulated by monkeypatching what the code asks
(os.sched_getaffinity, os.cpu_count, the launcher's variables, the world size)."""

from __future__ import annotations

import pytest

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SLURM = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_LOCALID",
         "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NODEID",
         "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")


def _machine(monkeypatch: pytest.MonkeyPatch, affinity: int, cpus: int,
             env: dict[str, str] | None = None) -> None:
    """This process sees ``affinity`` of the machine's ``cpus`` CPUs and the launcher ``env``."""
    from eofm.pretrain import data as D

    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: set(range(affinity)),
                        raising=False)
    monkeypatch.setattr(D.os, "cpu_count", lambda: cpus)
    for key in (*TORCHRUN, *SLURM):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)


def _torchrun(world: int, local: int) -> dict[str, str]:
    return {"RANK": "0", "WORLD_SIZE": str(world), "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": str(local)}


@pytest.mark.parametrize(("affinity", "cpus", "local", "want"), [
    (16, 128, 8, 1),  # an 8-GPU container (cpuset) of 16 CPUs on a 128-core host: 8 x 1 worker
    (64, 128, 8, 7),  # launch/slurm/pretrain.sbatch: --cpus-per-task=64 holds torchrun's 8 ranks
    (16, 16, 8, 1),  # a whole 16-CPU node: as before
    (16, 128, 1, 8),  # one rank keeps its whole affinity (at most eight)
])
def test_torchrun_ranks_share_the_affinity_they_inherit(monkeypatch: pytest.MonkeyPatch,
                                                        affinity: int, cpus: int, local: int,
                                                        want: int) -> None:
    """torchrun forks every rank of the node from one agent, so they share the agent's CPU
    affinity even when it is narrower than the machine (a container's cpuset, a SLURM task
    running torchrun as launch/slurm/pretrain.sbatch does). Before, each rank took all of it
    (8 workers each: 64 worker processes on 16 CPUs)."""
    from eofm.pretrain import data as D

    _machine(monkeypatch, affinity, cpus, _torchrun(8, local))
    assert D.resolve_workers(-1, local) == want


def test_a_slurm_task_keeps_its_own_narrow_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """srun starting each rank as its own task pins each to its own --cpus-per-task CPUs: a
    narrower affinity is then the rank's alone (not divided by the ranks of the node)."""
    from eofm.pretrain import data as D

    _machine(monkeypatch, 4, 64, {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "16",
                                  "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "8(x2)"})
    assert D.resolve_workers(-1, 8) == 3
    _machine(monkeypatch, 64, 64, {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "16",
                                   "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "8(x2)"})
    assert D.resolve_workers(-1, 8) == 7  # the whole node: shared by its 8 tasks


def test_the_loader_of_a_torchrun_rank_in_a_narrow_cpuset(scene_tiles_32,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """build_loader on rank 0 of 8 torchrun ranks in a 16-CPU cpuset of a 128-core host, with
    enough full batches (144 tiles, micro-batch 1) that the batch cap does not hide it."""
    from eofm.pretrain import data as D
    from eofm.pretrain.config import load_config

    _machine(monkeypatch, 16, 128, _torchrun(8, 8))
    cfg = load_config(None, [f"data.path={scene_tiles_32}", "data.batch_size=8",
                             "data.num_workers=-1"])
    loader, _ = D.build_loader(cfg, 0, 8, 8)
    assert loader.num_workers == 1 and len(loader) == 144 // 8


@pytest.mark.parametrize("world", [16, 32])
def test_softcon_refuses_a_micro_batch_of_one_for_batchnorm_heads(scene_tiles_32, monkeypatch,
                                                                  world: int) -> None:
    """softcon_s2_resnet50_cpu.yaml (batch 16) under 16 CPU ranks (torchrun
    --nproc_per_node=auto on a 16-core machine without GPUs), or any softcon run whose
    micro-batch is 1: the heads' BatchNorm1d cannot train on one sample (torch: 'Expected more
    than 1 value per channel when training' at step 1). Refused when the objective is built,
    naming the batch; LayerNorm heads and two samples per rank are accepted."""
    from eofm.data_shards.manifest import load_manifest
    from eofm.pretrain import distributed as dist
    from eofm.pretrain.config import ConfigError, load_config
    from eofm.pretrain.data import band_info
    from eofm.pretrain.objectives import build_objective

    monkeypatch.setattr(dist, "get_world_size", lambda: world)
    info = band_info(load_manifest(scene_tiles_32), "s2", None)
    base = [f"data.path={scene_tiles_32}", "objective.name=softcon", "model.name=vit_tiny_patch8",
            "model.img_size=32",
            "objective.params={proj_hidden_dim: 32, proj_dim: 16, pred_hidden_dim: 32}"]
    cfg = load_config(None, [*base, f"data.batch_size={world}"], check=False)
    with pytest.raises(ConfigError, match=rf"data.batch_size: the micro-batch of 1 sample "
                                          rf"\(global {world} / \({world} ranks x 1 "
                                          rf"accum_steps\)\) is too small for softcon's "
                                          rf"BatchNorm"):
        build_objective(cfg, info)
    build_objective(load_config(None, [*base, f"data.batch_size={2 * world}"], check=False), info)


@pytest.mark.parametrize(("tasks", "node", "local"), [
    ("8(x2),2", 2, 2),  # srun --ntasks=18 on 8-GPU nodes: the last node runs 2
    ("8(x2),2", 0, 8),
    ("4,8", 1, 8),
    ("8", 0, 8),
])
def test_slurm_ranks_per_node_follow_their_own_node(tasks: str, node: int, local: int) -> None:
    """An allocation whose nodes run different numbers of tasks: each rank's local world
    size (which auto data-loader workers divide the node's CPUs by) is its own node's count.
    Before, every node took the first node's."""
    from eofm.pretrain.distributed import detect_env

    env = detect_env({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "18", "SLURM_LOCALID": "0",
                      "SLURM_STEP_TASKS_PER_NODE": tasks, "SLURM_NODEID": str(node)})
    assert env.launcher == "slurm" and env.local_world_size == local


def test_a_rank_per_cpu_core_is_refused_with_where_the_world_size_came_from() -> None:
    """launch/torchrun_single_node.sh without NPROC on a 64-core machine without GPUs:
    torchrun's auto starts 64 ranks, and every CPU recipe's batch (32, 16, 6) is refused. The
    refusal says where the 64 came from and what to set."""
    from pathlib import Path

    from eofm.pretrain.config import load_config
    from eofm.pretrain.config_checks import check_environment

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "launch" / "configs" / "quickstart.yaml", check=False)
    problems = check_environment(cfg, world_size=64, dataset_bands=None,
                                 model_names=[cfg.model.name])
    assert len(problems) == 1
    assert problems[0].startswith("data.batch_size: the global batch 32 is not divisible by "
                                  "world_size * optim.accum_steps = 64 * 1 (world_size: the "
                                  "processes the launcher started;")
    assert "one per CPU core on a machine without GPUs: set NPROC" in problems[0]
    assert check_environment(cfg, world_size=8, dataset_bands=None,
                             model_names=[cfg.model.name]) == []
