"""launch/slurm/pretrain.sbatch: a stop signal that reaches the batch shell ends the job
checkpointed and requeued, also when it is SIGTERM. Real srun turns a SIGTERM it receives into
SIGKILL of every task ("srun: forcing job termination"; SchedMD slurm
src/srun/libsrun/srun_job.c, _srun_signal_mgr) and passes SIGUSR1 on unchanged, so the batch
shell must hand srun SIGUSR1 whatever stop signal it got. Stand-ins replace python (the
preflight), srun (with real srun's signal handling), scontrol and torchrun (ranks that
checkpoint on SIGUSR1/SIGTERM): nothing trains here."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launch_refusals import BASH, FAKE_PYTHON, FAKE_SCONTROL, LAUNCH, SBATCH, _log, _stub

from eofm.pretrain.preemption import REQUEUE_EXIT_CODE, REQUEUE_MARKER

pytestmark = pytest.mark.skipif(
    BASH is None or shutil.which("pgrep") is None or not Path("/proc/self/status").exists(),
    reason="needs bash, pgrep and /proc (the launcher reads each rank's caught signals)",
)

# srun as real srun treats signals: SIGTERM -> "srun: forcing job termination" and SIGKILL to
# every process of the step; SIGUSR1 -> passed unchanged to every process of the step (proctrack
# signals all of a task's descendants, ranks in sessions of their own included). Runs the
# command once per node (--nodes=N) with FAKE_NODE set and exits with the highest status (a task
# killed by signal N counts 128+N).
FAKE_SRUN = """\
#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
n=1
while [ "${1#--}" != "$1" ]; do case $1 in --nodes=*) n=${1#*=} ;; esac; shift; done
tree() { local p; for p in $(pgrep -P "$1"); do tree "$p"; done; echo "$1"; }
step() { local p; for p in "${pids[@]}"; do tree "$p"; done; }
pids=()
trap 'got=1; echo "srun: forcing job termination" >&2; kill -s KILL $(step) 2>/dev/null' TERM
trap 'got=1; kill -s USR1 $(step) 2>/dev/null' USR1
for ((i = 0; i < n; i++)); do FAKE_NODE=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do
    s=""
    while :; do  # a trap interrupts `wait` (status 128+N) while the task runs on: wait again
        got=0; wait "$p"; w=$?
        [ "$w" -eq 127 ] && [ -n "$s" ] && break  # an older bash: already reported, s is it
        s=$w
        [ "$got" = 1 ] && [ "$s" -gt 128 ] || break
    done
    echo "srun: task of pid $p exited $s" >&2
    [ "$s" -gt "$rc" ] && rc=$s
done
exit "$rc"
"""

# torchrun: starts NPROC ranks (--nproc_per_node), each in a session of its own as torchrun
# does; exits 1 when any fails, as torchrun does. Each rank installs its SIGUSR1/SIGTERM handler,
# then writes ready.<node>.<rank> (its pid); on either signal it writes stopped.<node>.<rank>
# (the signal's name) and the REQUEUE marker and exits 75, as the trainer does after its
# checkpoint. SIGUSR1 reaches torchrun itself too: it inherits the launcher's SIG_IGN.
FAKE_TORCHRUN = """\
#!{python}
import os, subprocess, sys
args = sys.argv[1:]
nproc = int(next(a.split("=", 1)[1] for a in args if a.startswith("--nproc_per_node=")))
out = next(a.split("=", 1)[1] for a in args if a.startswith("runtime.out_dir="))
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(f"torchrun node={{os.environ.get('FAKE_NODE', 'here')}} {{' '.join(args)}}\\n")
rank = '''
import os, signal, sys, time
out, name = sys.argv[1], sys.argv[2]
def stop(signum, _frame):
    with open(os.path.join(out, "stopped." + name), "w") as f:
        f.write(signal.Signals(signum).name)
    open(os.path.join(out, "REQUEUE"), "w").close()
    os._exit(75)
signal.signal(signal.SIGUSR1, stop)
signal.signal(signal.SIGTERM, stop)
with open(os.path.join(out, "ready.tmp." + name), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(out, "ready.tmp." + name), os.path.join(out, "ready." + name))
time.sleep(60)
'''
node = os.environ.get("FAKE_NODE", "here")
ranks = [subprocess.Popen([sys.executable, "-c", rank, out, f"{{node}}.{{i}}"],
                          start_new_session=True) for i in range(nproc)]
sys.exit(0 if all(r.wait() == 0 for r in ranks) else 1)
"""

NODES, NPROC = 2, 2


def _env(tmp_path: Path, srun: str) -> dict[str, str]:
    """A 2-node SLURM allocation of NPROC GPUs each among stand-ins: ``srun`` as the srun on
    PATH, the preflight python, scontrol and torchrun, FAKE_LOG the file they append to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "srun", srun)
    _stub(bin_dir / "scontrol", FAKE_SCONTROL)
    torchrun = _stub(tmp_path / "torchrun", FAKE_TORCHRUN.format(python=sys.executable))
    drop = {
        "NNODES",
        "MASTER",
        "PORT",
        "NPROC",
        "RDZV_JOIN_TIMEOUT",
        "EOFM_WORLD_SIZE",
        "EXTRA",
        "CONFIG",
        "OUT",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "launch").symlink_to(LAUNCH)
    (tmp_path / "out").mkdir()
    return {
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": str(_stub(tmp_path / "python", FAKE_PYTHON)),
        "TORCHRUN": str(torchrun),
        "FAKE_LOG": str(tmp_path / "fake.log"),
        "SLURM_NNODES": str(NODES),
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "t",
        "SLURM_SUBMIT_DIR": str(repo),
        "SLURM_GPUS_ON_NODE": str(NPROC),
        "CONFIG": "launch/configs/quickstart.yaml",
        "OUT": str(tmp_path / "out"),
    }


def _signal_the_batch_shell(
    tmp_path: Path, env: dict[str, str], ready: list[Path], sig: int
) -> subprocess.CompletedProcess:
    """Run pretrain.sbatch as SLURM does (from elsewhere); once every file in ``ready`` exists
    (each holds a pid, killed should the job hang), send ``sig`` to the batch shell only
    (`scancel --batch`, `--signal=B:...`) and wait for the job's end."""
    spool = tmp_path / "spool"
    spool.mkdir()
    proc = subprocess.Popen(
        [BASH, str(SBATCH)],
        cwd=spool,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in ready):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            for p in ready:  # ranks run in sessions of their own: not in the job's group
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(p.read_text()), signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_a_stop_signal_to_the_batch_shell_checkpoints_every_rank_and_requeues(
    tmp_path: Path, sig: int
) -> None:
    """SIGTERM to the batch shell was forwarded to srun as SIGTERM; srun killed every task
    (status 137): no checkpoint, no requeue. Now srun gets SIGUSR1 for either signal, every
    rank stops on it and checkpoints, and the job is requeued (exit 0)."""
    env = _env(tmp_path, FAKE_SRUN)
    out = tmp_path / "out"
    names = [f"{node}.{rank}" for node in range(NODES) for rank in range(NPROC)]
    r = _signal_the_batch_shell(tmp_path, env, [out / f"ready.{n}" for n in names], sig)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "forcing job termination" not in r.stderr, r.stderr
    if sig == signal.SIGTERM:
        assert (
            "received SIGTERM, forwarding it to srun as SIGUSR1 (srun would turn SIGTERM "
            "into SIGKILL)"
        ) in r.stderr, r.stderr
    stopped = {
        n: (out / f"stopped.{n}").read_text() for n in names if (out / f"stopped.{n}").exists()
    }
    assert stopped == dict.fromkeys(names, "SIGUSR1"), (stopped, r.stderr)
    assert "requeueing job 4242" in r.stdout, r.stdout
    assert _log(env)[-1] == "scontrol requeue 4242", _log(env)
    assert not (out / REQUEUE_MARKER).exists()  # removed for the requeued job


# srun still starting (or the shell forked to exec it): SIGUSR1 has its default action and ends
# it (FAKE_SRUN_ON_STOP=die), no task started. The other modes are srun ending after the stop
# for a reason of its own: a run that failed (exit 1) or was killed (SIGKILL, e.g. the OOM
# killer while checkpointing), which must not be requeued.
FAKE_STARTING_SRUN = """\
#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
case $FAKE_SRUN_ON_STOP in
    fail) trap 'kill "$sleeper"; exit 1' USR1 TERM ;;
    killed) trap 'kill "$sleeper"; kill -s KILL $$' USR1 TERM ;;
esac
echo $$ > "$FAKE_SRUN_PID.tmp" && mv "$FAKE_SRUN_PID.tmp" "$FAKE_SRUN_PID"
[ "$FAKE_SRUN_ON_STOP" = die ] && exec sleep 30
sleep 30 & sleeper=$!
wait "$sleeper"
"""


@pytest.mark.parametrize("mode,status", [("die", 0), ("fail", 1), ("killed", 137)])
def test_srun_killed_by_the_forwarded_sigusr1_is_a_stop_before_training(
    tmp_path: Path, mode: str, status: int
) -> None:
    """SIGTERM to the batch shell reaches srun as SIGUSR1 before srun can take it: srun dies of
    it (status 138) before any task started; nothing trained, so the job is requeued (exit 0).
    Any other end after a forwarded stop keeps its status: 1 (failed) and 137 (killed) are not
    requeued."""
    env = {
        **_env(tmp_path, FAKE_STARTING_SRUN),
        "FAKE_SRUN_ON_STOP": mode,
        "FAKE_SRUN_PID": str(tmp_path / "srun.pid"),
    }
    r = _signal_the_batch_shell(tmp_path, env, [tmp_path / "srun.pid"], signal.SIGTERM)
    assert r.returncode == status, r.stdout + r.stderr
    log = _log(env)
    requeued = "scontrol requeue 4242" in log
    assert requeued == (mode == "die"), log
    assert ("srun ended by the SIGUSR1 it was sent (exit 138)" in r.stderr) == (mode == "die")
    assert not any(line.startswith("torchrun") for line in log), log
    assert REQUEUE_EXIT_CODE == 75  # what eofm_supervise returned for the job to be requeued


def test_a_second_signal_after_the_ranks_stopped_is_not_taken_for_an_early_stop(
    tmp_path: Path,
) -> None:
    """torchrun_single_node.sh: a second stop signal that came once every rank had taken the
    first one and exited (torchrun still tearing down) was reported as "before every rank
    could take it (no training started)" and sent torchrun SIGTERM; now it says the ranks
    have exited, and the run ends with the requeue status."""
    torchrun = FAKE_TORCHRUN.format(python=sys.executable).replace(
        "sys.exit(0 if all(r.wait() == 0 for r in ranks) else 1)",
        "import time\ncodes = [r.wait() for r in ranks]  # every rank reaped\n"
        "time.sleep(3)  # torchrun's teardown after its ranks exited\n"
        "sys.exit(0 if codes == [0] * len(codes) else 1)")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "PYTHON": str(_stub(tmp_path / "python", FAKE_PYTHON)),
        "TORCHRUN": str(_stub(tmp_path / "torchrun", torchrun)),
        "FAKE_LOG": str(tmp_path / "fake.log"),
        "NPROC": str(NPROC),
    }
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [BASH, str(LAUNCH / "torchrun_single_node.sh"), "--config", "x.yaml",
         f"runtime.out_dir={out}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    ready = [out / f"ready.here.{i}" for i in range(NPROC)]
    try:
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in ready):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        stopped = [out / f"stopped.here.{i}" for i in range(NPROC)]
        while not all(p.exists() for p in stopped):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pids = [int(p.read_text()) for p in ready]
        while any(Path(f"/proc/{pid}").exists() for pid in pids):  # the ranks have exited
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # torchrun is still tearing down
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == REQUEUE_EXIT_CODE, stderr
    assert "before every rank could take it" not in stderr, stderr
    assert "received SIGUSR1 again; the ranks took the first one and have exited" in stderr, stderr
