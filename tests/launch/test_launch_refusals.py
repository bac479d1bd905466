"""launch/: what the launchers and the SLURM template do when a run cannot start or stops: the
configuration checked against the world size the launch starts (one error, status 2), a
refusal in the batch shell before any node starts, a stale REQUEUE marker that must not requeue
a failed job, a node that refuses alone (the others give up after the rendezvous join timeout),
and a job submitted from the wrong directory. Stand-ins replace python (for the preflight),
torchrun, srun and scontrol, so nothing here trains; one slow test runs the real torchrun's
rendezvous."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eofm.pretrain.cli import WORLD_SIZE_ENV, preflight
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE, REQUEUE_MARKER

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SBATCH = LAUNCH / "slurm" / "pretrain.sbatch"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

# PYTHON for launch/common.sh: the preflight (a stdin script naming it) logs the world size it
# was given and where it ran (with FAKE_HOLD set it writes its pid to FAKE_HOLD.pid and waits
# for a file FAKE_HOLD.go), refuses an argument `bad=1` everywhere and every run on node
# $FAKE_REFUSE_NODE (as if data.path were not mounted there), else prints the last
# runtime.out_dir; any other stdin script (the MASTER host check) passes.
FAKE_PYTHON = """\
#!/usr/bin/env bash
[ "$1" = - ] || exit 0
shift
case $(cat) in *preflight*) ;; *) exit 0 ;; esac
echo "preflight node=${FAKE_NODE:-here} world=${EOFM_WORLD_SIZE-unset}" >> "$FAKE_LOG"
out=""
for a in "$@"; do
    case $a in
        bad=1) echo "eofm-pretrain: error: 1 problem(s) in the configuration: bad" >&2; exit 2 ;;
        runtime.out_dir=*) out=${a#*=} ;;
    esac
done
if [ -n "${FAKE_HOLD:-}" ]; then  # a slow check: say where it runs, wait for FAKE_HOLD.go
    echo $$ > "$FAKE_HOLD.tmp" && mv "$FAKE_HOLD.tmp" "$FAKE_HOLD.pid"
    while [ ! -e "$FAKE_HOLD.go" ]; do sleep 0.05; done
fi
if [ "${FAKE_NODE:-here}" = "${FAKE_REFUSE_NODE:-none}" ]; then
    echo "eofm-pretrain: error: data.path: no such folder on this node" >&2; exit 2
fi
echo "$out"
"""

# torchrun: logs its arguments; FAKE_RUN=fail exits 1, FAKE_RUN=preempt writes the marker (as
# the ranks do when they checkpoint and stop) and exits 1 (torchrun's status for any failure).
FAKE_TORCHRUN = """\
#!/usr/bin/env bash
echo "torchrun node=${FAKE_NODE:-here} $*" >> "$FAKE_LOG"
out=""
for a in "$@"; do case $a in runtime.out_dir=*) out=${a#*=} ;; esac; done
case ${FAKE_RUN:-ok} in
    fail) exit 1 ;;
    preempt) touch "$out/REQUEUE"; exit 1 ;;
esac
"""

# srun: runs the command once per node (--nodes=N) with FAKE_NODE set, exits with the highest
# status; scontrol: `show hostnames` prints two loopback hosts, `requeue` fails with
# FAKE_REQUEUE=fail (requeue not allowed), anything else is only logged.
FAKE_SRUN = """\
#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
n=1
while [ "${1#--}" != "$1" ]; do case $1 in --nodes=*) n=${1#*=} ;; esac; shift; done
pids=()
for ((i = 0; i < n; i++)); do FAKE_NODE=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p"; s=$?; [ "$s" -gt "$rc" ] && rc=$s; done
exit "$rc"
"""
FAKE_SCONTROL = """\
#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
[ "$1 $2" = "show hostnames" ] && printf '127.0.0.1\\n127.0.0.1\\n'
[ "$1" = requeue ] && [ "${FAKE_REQUEUE:-ok}" = fail ] && exit 1
exit 0
"""


def _stub(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fakes(tmp_path: Path) -> dict[str, str]:
    """The environment of a launch among stand-ins: PATH with fake srun/scontrol first, PYTHON
    and TORCHRUN the fakes, FAKE_LOG the file they all append to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "srun", FAKE_SRUN)
    _stub(bin_dir / "scontrol", FAKE_SCONTROL)
    drop = {"NNODES", "MASTER", "PORT", "NPROC", "RDZV_JOIN_TIMEOUT", WORLD_SIZE_ENV, "EXTRA",
            "CONFIG", "OUT"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHON": str(_stub(tmp_path / "python", FAKE_PYTHON)),
                "TORCHRUN": str(_stub(tmp_path / "torchrun", FAKE_TORCHRUN)),
                "FAKE_LOG": str(tmp_path / "fake.log")})
    return env


def _log(env: dict[str, str]) -> list[str]:
    path = Path(env["FAKE_LOG"])
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------ preflight (in process)
@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    path = tmp_path / "x.yaml"
    path.write_text(f"data: {{path: {tmp_path / 'd'}, batch_size: 32}}\n"
                    "runtime: {out_dir: runs/x}\n")
    return path


def test_preflight_checks_the_batch_against_the_launchers_world_size(
        tiny_config: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """3 ranks cannot share a global batch of 32: refused here with one error and status 2
    (it was every rank's error and torchrun's traceback); 4 ranks can, but not with
    runtime.strategy=single; an unknown size (unset, an elastic range) checks what holds at any
    size (an unknown model.name: the registry was only checked by the ranks)."""
    monkeypatch.setenv(WORLD_SIZE_ENV, "3")
    assert preflight(["--config", str(tiny_config)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("error:") == 1, err
    assert f"configuration {tiny_config}:" in err
    assert "the global batch 32 is not divisible by world_size * optim.accum_steps = 3 * 1" in err
    monkeypatch.setenv(WORLD_SIZE_ENV, "4")
    assert preflight(["--config", str(tiny_config)]) == 0
    assert capsys.readouterr().out.split() == ["runs/x"]
    assert preflight(["--config", str(tiny_config), "runtime.strategy=single"]) == 2
    assert "runtime.strategy: 'single' runs one process, but world_size is 4" in (
        capsys.readouterr().err)
    for unknown in ("", None):
        if unknown is None:
            monkeypatch.delenv(WORLD_SIZE_ENV)
        else:
            monkeypatch.setenv(WORLD_SIZE_ENV, unknown)
        assert preflight(["--config", str(tiny_config)]) == 0
        assert capsys.readouterr().out.split() == ["runs/x"]
        assert preflight(["--config", str(tiny_config), "model.name=vit_nope"]) == 2
        assert "model.name: unknown model 'vit_nope'" in capsys.readouterr().err


def test_preflight_refuses_objective_values_and_model_settings_the_run_would_refuse_later(
        tiny_config: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """model.img_size=65 (not a multiple of the patch size), a model.overrides key the encoder
    does not take and an objective.params value out of its choices passed the preflight
    (status 0): torchrun started every rank, and each found them after the data.build_from
    build, one at a time. Now one error lists them all, naming each key."""
    monkeypatch.delenv(WORLD_SIZE_ENV, raising=False)
    assert preflight(["--config", str(tiny_config), "model.img_size=65", "model.overrides.bogus=1",
                      "objective.params.masking=bogus"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("error:") == 1 and "3 problem(s)" in err, err
    for text in ("model.img_size: expected multiples of 8 (vit_tiny_patch8 makes one token of "
                 "each 8 x 8 pixels), e.g. (64, 64), got (65, 65)",
                 "model.overrides.bogus: vit_tiny_patch8 takes no such argument",
                 "objective.params.masking: expected 'independent' or 'consistent', got 'bogus'"):
        assert text in err, err


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5"])
def test_preflight_refuses_a_world_size_that_is_not_a_count(
        value: str, tiny_config: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(WORLD_SIZE_ENV, value)
    assert preflight(["--config", str(tiny_config)]) == 2
    err = capsys.readouterr().err
    assert f"{WORLD_SIZE_ENV}: expected the number of ranks" in err and f"got '{value}'" in err


# ------------------------------------------------------------------ the launchers
def test_world_size_is_nodes_times_ranks_per_node(tmp_path: Path) -> None:
    script = "; ".join(f'echo "[$(eofm_world_size {args})]"' for args in (
        "--nnodes=2 --nproc_per_node=3 --rdzv_backend=c10d",
        "--standalone --nproc_per_node=4",
        "--nnodes=2:4 --nproc_per_node=3",  # elastic: the size is the rendezvous'
        "--nproc_per_node=auto",
    ))
    r = subprocess.run([BASH, "-c", f". {LAUNCH / 'common.sh'}; {script}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["[6]", "[4]", "[]", "[]"], r.stderr


@pytest.mark.parametrize("script,env,world,args", [
    ("torchrun_single_node.sh", {"NPROC": "3"}, "3", ["--standalone", "--nproc_per_node=3"]),
    ("torchrun_multi_node.sh", {"NNODES": "2", "NPROC": "3"}, "6",
     ["--nnodes=2", "--nproc_per_node=3", "--rdzv_conf=join_timeout=120"]),
    ("torchrun_multi_node.sh", {"NNODES": "2", "NPROC": "1", "RDZV_JOIN_TIMEOUT": "30"}, "2",
     ["--rdzv_conf=join_timeout=30"]),
    ("torchrun_multi_node.sh", {"NNODES": "1:2", "NPROC": "2"}, "", ["--nnodes=1:2"]),
], ids=["single", "multi", "multi-join-timeout", "multi-elastic"])
def test_launchers_check_for_the_world_size_they_start(
        tmp_path: Path, fakes: dict[str, str], script: str, env: dict[str, str], world: str,
        args: list[str]) -> None:
    """The preflight is told the ranks in all (none for an elastic range); the multi-node
    launcher bounds the rendezvous wait (--rdzv_conf=join_timeout, RDZV_JOIN_TIMEOUT)."""
    r = subprocess.run([BASH, str(LAUNCH / script), "--config", "x.yaml", "runtime.out_dir=o"],
                       cwd=tmp_path, env={**fakes, "MASTER": "127.0.0.1", **env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    log = _log(fakes)
    assert log[0] == f"preflight node=here world={world}", log
    torchrun = log[1].split()
    assert torchrun[:2] == ["torchrun", "node=here"] and set(args) <= set(torchrun), log


@pytest.mark.parametrize("value", ["0", "abc", "-5"])
def test_multi_node_launcher_refuses_a_bad_join_timeout(tmp_path: Path, fakes: dict[str, str],
                                                        value: str) -> None:
    r = subprocess.run([BASH, str(LAUNCH / "torchrun_multi_node.sh"), "--config", "x.yaml"],
                       cwd=tmp_path, env={**fakes, "NNODES": "2", "MASTER": "127.0.0.1",
                                          "NPROC": "1", "RDZV_JOIN_TIMEOUT": value},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "RDZV_JOIN_TIMEOUT: expected the seconds to wait for every node to join" in r.stderr
    assert f"got '{value}'" in r.stderr and _log(fakes) == []


# ------------------------------------------------------------------ the SLURM template
def _sbatch(tmp_path: Path, fakes: dict[str, str], *, submit_dir: Path | None = None,
            **env: str) -> subprocess.CompletedProcess:
    """pretrain.sbatch as SLURM runs it: from elsewhere, in a 2-node allocation of 3 GPUs each,
    submitted from a repository root (a folder with launch/) unless ``submit_dir`` says."""
    if submit_dir is None:
        submit_dir = tmp_path / "repo"
        if not submit_dir.exists():
            submit_dir.mkdir()
            (submit_dir / "launch").symlink_to(LAUNCH)
    elsewhere = tmp_path / "spool"
    elsewhere.mkdir(exist_ok=True)
    slurm = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NAME": "t", "SLURM_SUBMIT_DIR": str(submit_dir),
             "SLURM_GPUS_ON_NODE": "3", "CONFIG": "launch/configs/quickstart.yaml",
             "OUT": str(tmp_path / "out")}
    return subprocess.run([BASH, str(SBATCH)], cwd=elsewhere, env={**fakes, **slurm, **env},
                          capture_output=True, text=True, timeout=60)


def test_sbatch_refused_config_ends_the_job_before_srun_despite_a_stale_marker(
        tmp_path: Path, fakes: dict[str, str]) -> None:
    """A marker left by an earlier stopped run in OUT, then a job whose config is refused (a
    typo in EXTRA): status 2 and one error from the batch shell; no srun, no requeue (every node
    refused, exit 2, and the marker made it "checkpointed; requeueing", again and again)."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / REQUEUE_MARKER).write_text("stale\n")
    r = _sbatch(tmp_path, fakes, EXTRA="bad=1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("error:") == 1 and "requeue" not in r.stdout, r.stdout + r.stderr
    log = _log(fakes)
    assert log == ["scontrol show hostnames n[1-2]", "preflight node=here world=6"], log


def test_sbatch_does_not_requeue_a_failed_run_over_a_stale_marker(tmp_path: Path,
                                                                  fakes: dict[str, str]) -> None:
    """The marker is removed before srun; a run that then fails (status 1) ends the job with 1."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / REQUEUE_MARKER).write_text("stale\n")
    r = _sbatch(tmp_path, fakes, FAKE_RUN="fail")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "requeue" not in r.stdout and not (tmp_path / "out" / REQUEUE_MARKER).exists()
    log = _log(fakes)
    assert not [line for line in log if line.startswith("scontrol requeue")], log
    assert sum(line.startswith("torchrun") for line in log) == 2, log


def test_sbatch_requeues_a_run_that_checkpointed(tmp_path: Path, fakes: dict[str, str]) -> None:
    """The ranks wrote the marker and stopped: each launcher exits 75, the job is requeued and
    exits 0, the marker removed for the requeued job."""
    (tmp_path / "out").mkdir()
    r = _sbatch(tmp_path, fakes, FAKE_RUN="preempt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stopped for preemption/time limit (checkpointed, or before training started); " \
        "requeueing job 4242" in r.stdout
    assert not (tmp_path / "out" / REQUEUE_MARKER).exists()
    assert _log(fakes)[-1] == "scontrol requeue 4242"
    assert REQUEUE_EXIT_CODE == 75  # the status the template tests for


def test_sbatch_refused_requeue_ends_the_job_with_the_requeue_status(
        tmp_path: Path, fakes: dict[str, str]) -> None:
    """SLURM refuses the requeue (not allowed on the partition, --requeue removed): the job
    must not end COMPLETED (status 0) with half a run; 75 and an error that says to resubmit."""
    (tmp_path / "out").mkdir()
    r = _sbatch(tmp_path, fakes, FAKE_RUN="preempt", FAKE_REQUEUE="fail")
    assert r.returncode == REQUEUE_EXIT_CODE, r.stdout + r.stderr
    assert "scontrol requeue 4242 failed" in r.stderr and "submit the same job again" in r.stderr
    # SLURM may requeue the job itself (PreemptMode=REQUEUE): look before submitting a second
    assert "check 'squeue -j 4242' or 'scontrol show job 4242' first" in r.stderr, r.stderr
    assert str(tmp_path / "out") in r.stderr


def test_sbatch_without_out_runs_in_the_configs_own_folder(tmp_path: Path,
                                                          fakes: dict[str, str]) -> None:
    """OUT unset: no runtime.out_dir override (two configs submitted under one job name would
    otherwise share, and resume, one folder); the preflight resolves the config's own."""
    r = _sbatch(tmp_path, fakes, OUT="")
    assert r.returncode == 0, r.stdout + r.stderr
    log = _log(fakes)
    assert not any("runtime.out_dir" in line for line in log), log
    assert sum(line.startswith("torchrun") for line in log) == 2, log


def _signal_during_the_check(cmd: list[str], cwd: Path, env: dict[str, str], hold: Path,
                             sig: int, *, check_too: bool) -> subprocess.CompletedProcess:
    """Run ``cmd``; while its configuration check runs (the stand-in waits), send ``sig`` to
    it (and, ``check_too``, to the check as well, as srun signals every process of a step)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "FAKE_HOLD": str(hold)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = hold.with_name(hold.name + ".pid")
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        if check_too:
            os.kill(int(pid_file.read_text()), sig)
        time.sleep(0.3)  # the signal is delivered, the trap has run or is pending
        hold.with_name(hold.name + ".go").touch()
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
@pytest.mark.parametrize("check_too", [False, True], ids=["launcher", "whole-step"])
def test_a_stop_signal_while_the_launcher_checks_requeues_without_starting(
        tmp_path: Path, fakes: dict[str, str], sig: int, check_too: bool) -> None:
    """SIGUSR1 during the check killed the launcher (USR1's default; TERM: 143), so the job was
    not requeued. Now: exit 75, torchrun never started."""
    (tmp_path / "out").mkdir()
    r = _signal_during_the_check(
        [BASH, str(LAUNCH / "torchrun_single_node.sh"), "--config", "x.yaml",
         f"runtime.out_dir={tmp_path / 'out'}"], tmp_path, {**fakes, "NPROC": "2"},
        tmp_path / "hold", sig, check_too=check_too)
    assert r.returncode == REQUEUE_EXIT_CODE, r.stdout + r.stderr
    name = signal.Signals(sig).name
    assert f"received {name} before the run started" in r.stderr, r.stderr
    assert not [line for line in _log(fakes) if line.startswith("torchrun")], _log(fakes)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_sbatch_signalled_while_checking_requeues_the_job_without_srun(
        tmp_path: Path, fakes: dict[str, str], sig: int) -> None:
    """--signal=B:USR1 reaching the batch shell during its check killed the job unrequeued."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "launch").symlink_to(LAUNCH)
    (tmp_path / "spool").mkdir()
    slurm = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NAME": "t", "SLURM_SUBMIT_DIR": str(repo), "SLURM_GPUS_ON_NODE": "3",
             "CONFIG": "launch/configs/quickstart.yaml", "OUT": str(tmp_path / "out")}
    r = _signal_during_the_check([BASH, str(SBATCH)], tmp_path / "spool", {**fakes, **slurm},
                                 tmp_path / "hold", sig, check_too=False)
    assert r.returncode == 0, r.stdout + r.stderr
    log = _log(fakes)
    assert log[-1] == "scontrol requeue 4242" and not any(x.startswith("srun") for x in log), log


def test_sbatch_one_node_refusing_ends_the_job_with_its_status(tmp_path: Path,
                                                               fakes: dict[str, str]) -> None:
    """A check that fails on one node only passes in the batch shell; that node exits 2 (the
    others, here a stand-in torchrun, would wait out the rendezvous join timeout), no requeue."""
    (tmp_path / "out").mkdir()
    r = _sbatch(tmp_path, fakes, FAKE_REFUSE_NODE="1", FAKE_RUN="fail")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "data.path: no such folder on this node" in r.stderr and "requeue" not in r.stdout
    log = _log(fakes)
    assert "preflight node=here world=6" in log and "preflight node=1 world=6" in log, log
    assert [line.split()[1] for line in log if line.startswith("torchrun")] == ["node=0"], log


def test_sbatch_submitted_from_the_wrong_directory_says_so(tmp_path: Path,
                                                           fakes: dict[str, str]) -> None:
    """No launch/common.sh under SLURM_SUBMIT_DIR: one line saying where to submit from and
    status 2 (it was "No such file", then "command not found" for each function, status 127)."""
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    r = _sbatch(tmp_path, fakes, submit_dir=elsewhere)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "submit the job from the repository root" in r.stderr and str(elsewhere) in r.stderr
    assert _log(fakes) == []


# ------------------------------------------------------------------ the real rendezvous
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_node_whose_peer_never_joins_gives_up_after_the_join_timeout(
        tmp_path: Path, fakes: dict[str, str]) -> None:
    """One node of two starts (the other refused): the real torchrun's c10d rendezvous fails
    after RDZV_JOIN_TIMEOUT seconds (torchrun's own default wait is 600 s), which checks that the
    installed torch honours --rdzv_conf=join_timeout. No rank starts, so the preflight is the
    stand-in."""
    torchrun = _stub(tmp_path / "real_torchrun",
                     f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
    port = _free_port()
    env = {**fakes, "TORCHRUN": str(torchrun), "NNODES": "2", "MASTER": "127.0.0.1",
           "PORT": str(port), "RDZV_ID": f"lone{port}", "NPROC": "1", "RDZV_JOIN_TIMEOUT": "3",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([BASH, str(LAUNCH / "torchrun_multi_node.sh"), "--config", "x.yaml",
                             f"runtime.out_dir={tmp_path / 'out'}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the lone node still waits after 120 s") from None
    assert proc.returncode == 1 and "RendezvousTimeoutError" in output, output[-3000:]


# ------------------------------------------------------------------ preflight: the resume
@pytest.fixture(scope="module")
def one_rank_run(tiny_run_config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, out_dir) of a real one-process run of 2 steps that checkpointed at step 2."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    config = tiny_run_config({"schedule": {"steps": 2, "warmup_steps": 1},
                              "runtime": {"ckpt_every": 2}}, name="preflight_resume")
    out = tmp_path_factory.mktemp("preflight_resume_out")
    assert Trainer(load_config(str(config), [f"runtime.out_dir={out}"])).fit() == 0
    assert (out / "checkpoints" / "step_000000002.pt").is_file()
    return config, out


def test_preflight_refuses_resuming_a_checkpoint_of_another_world_size(
        one_rank_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint written by 1 rank, resumed by a launch of 2 without
    runtime.resume_elastic: refused before torchrun starts (one error, status 2; it was every
    rank's error after loading the checkpoint, and torchrun's status 1). The same launch with
    runtime.resume_elastic=true, or of 1 rank, or of an unknown size, passes; so does a
    longer run of the same checkpoint at its own size."""
    config, out = one_rank_run
    base = ["--config", str(config), f"runtime.out_dir={out}"]
    monkeypatch.setenv(WORLD_SIZE_ENV, "2")
    assert preflight(base) == 2
    got, err = capsys.readouterr()
    assert got == "" and err.count("error:") == 1, err
    assert f"resume from {out}" in err
    assert (f"runtime.resume_elastic: the checkpoint {out / 'checkpoints' / 'step_000000002.pt'} "
            "was written by 1 ranks; the data position cannot be kept exact on 2") in err
    assert "or launch 1 ranks (this launch starts 2)" in err
    assert preflight([*base, "runtime.resume_elastic=true"]) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    for world in ("1", ""):
        monkeypatch.setenv(WORLD_SIZE_ENV, world)
        assert preflight([*base, "schedule.steps=4"]) == 0
        assert capsys.readouterr().out.split() == [str(out)]


def test_preflight_refuses_a_fresh_run_over_checkpoints(
        one_rank_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """runtime.resume=false over an earlier run's checkpoints: the ranks' refusal, made once
    before they start."""
    config, out = one_rank_run
    monkeypatch.setenv(WORLD_SIZE_ENV, "2")
    assert preflight(["--config", str(config), f"runtime.out_dir={out}",
                      "runtime.resume=false"]) == 2
    err = capsys.readouterr().err
    assert "runtime.resume: false starts a new run from step 0" in err and err.count("error:") == 1


def test_preflight_reads_a_deepspeed_checkpoints_ranks_and_zero_stage(
        tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The newest complete DeepSpeed folder decides (its per-rank optimiser files; a ZeRO-3
    model-state file per rank): written by 2 ranks, a launch of 4 is refused unless elastic; a
    ZeRO-3 checkpoint is refused to a ZeRO-2 run even elastic; an incomplete newer folder (no
    COMPLETE marker: a dead write) is skipped, as the ranks skip it."""
    from eofm.pretrain.checkpoint import DS_MARKER

    ckpts = tmp_path / "run" / "checkpoints"
    done = ckpts / "step_000000004"
    done.mkdir(parents=True)
    for r in range(2):
        (done / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (done / "mp_rank_00_model_states.pt").write_bytes(b"")
    (done / DS_MARKER).write_text("4\n")
    dead = ckpts / "step_000000006"
    dead.mkdir()
    for r in range(4):
        (dead / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    base = ["--config", str(tiny_config), f"runtime.out_dir={tmp_path / 'run'}",
            "runtime.strategy=deepspeed", "runtime.zero_stage=2"]
    monkeypatch.setenv(WORLD_SIZE_ENV, "4")
    assert preflight(base) == 2
    err = capsys.readouterr().err
    assert f"the checkpoint {done} was written by 2 ranks" in err, err
    assert preflight([*base, "runtime.resume_elastic=true"]) == 0
    capsys.readouterr()
    monkeypatch.setenv(WORLD_SIZE_ENV, "2")
    assert preflight(base) == 0
    capsys.readouterr()
    for r in range(2):
        (done / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").write_bytes(b"")
    assert preflight([*base, "runtime.resume_elastic=true"]) == 2
    err = capsys.readouterr().err
    assert ("runtime.zero_stage: the DeepSpeed checkpoint" in err
            and "written with ZeRO-3, this run has ZeRO-1/2" in err), err
