"""Two gloo processes train to the same parameters as one process with the same global batch:
DDP with and without gradient accumulation, FSDP2 with accumulation (both also with
runtime.compile), DeepSpeed ZeRO-2 and ZeRO-3 (compiled). The compiled runs use the
``aot_eager`` backend (equivalence_worker.py): dynamo's and AOTAutograd's graphs meet the
strategies' hooks as inductor's do, without its code generation.

The two-process jobs run one after another in one pair of forked ranks (one process group),
so the test pays for no imports and starts the ranks once, not once per job."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from equivalence_worker import run_jobs

# (job, why it is here) for the two-process launch; job = STRATEGY:ACCUM (equivalence_worker.py)
JOBS = {
    "ddp:1": "DDP without accumulation",
    # no all-reduce on the non-final micro-steps: test_accumulation_sync.py
    "ddp_compiled:2": "DDP with accumulation and runtime.compile's compiled blocks",
    # blocks compiled before they are sharded; the eager FSDP2 path is the same wrapping
    # without the compile step, and the trainer's FSDP2 moved-to-one test runs it
    "fsdp2_compiled:2": "FSDP2 with accumulation and runtime.compile",
    "zero2:1": "DeepSpeed ZeRO-2",
    # compiled before DeepSpeed wraps the module; its partitioning hooks run around them
    "zero3_compiled:1": "DeepSpeed ZeRO-3 with runtime.compile",
}


def _differences(a: dict, b: dict, atol: float) -> list[str]:
    """What differs between two state dicts (keys, or values beyond atol / rtol 1e-4)."""
    if a.keys() != b.keys():
        return [f"keys differ: {sorted(a.keys() ^ b.keys())}"]
    found = []
    for k in a:
        try:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)
        except AssertionError as e:
            found.append(str(e).splitlines()[0])
    return found


def test_two_processes_match_one(sample_data: Path, tmp_path: Path, spawn_ranks) -> None:
    """Every job of JOBS (ZeRO ones when DeepSpeed is installed) ends with the parameters of
    the one-process run; a mismatch names the job and the tensors."""
    scene = sample_data / "sentinel2_l1c_scene"
    jobs = [j for j in JOBS
            if not j.startswith("zero") or importlib.util.find_spec("deepspeed") is not None]
    spawn_ranks(1, run_jobs, 1, str(tmp_path), str(scene), ["single:1"])
    spawn_ranks(2, run_jobs, 2, str(tmp_path), str(scene), jobs)
    ref = torch.load(tmp_path / "single_1.pt", weights_only=True)
    wrong = {f"{j} ({JOBS[j]})": d for j in jobs
             if (d := _differences(ref, torch.load(tmp_path / f"{j.replace(':', '_')}.pt",
                                                   weights_only=True), atol=1e-5))}
    assert not wrong, wrong
    if omitted := [j for j in JOBS if j not in jobs]:
        pytest.skip(f"DeepSpeed is not installed: {omitted} not run (the other jobs matched)")
