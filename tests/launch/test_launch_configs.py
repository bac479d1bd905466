"""launch/: every experiment YAML loads, every DeepSpeed JSON is a valid ZeRO config without the
keys the runtime fixes, every shell script parses, and the launchers' requeue and signal
conventions hold (with a stand-in for torchrun: no training here)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from eofm.data_shards.sensors import ENMAP_HYSPECNET_NODATA_BANDS, get_sensor
from eofm.pretrain.config import load_config
from eofm.pretrain.distributed import DistEnv
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE, REQUEUE_MARKER
from eofm.pretrain.strategy import DeepSpeedStrategy

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
CONFIGS = sorted((LAUNCH / "configs").glob("*.yaml"))
DS_JSONS = sorted((LAUNCH / "deepspeed").glob("*.json"))
SCRIPTS = sorted(p for p in LAUNCH.rglob("*") if p.suffix in (".sh", ".sbatch"))
BASH = shutil.which("bash")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(LAUNCH)) for p in paths]


def test_launch_files_exist() -> None:
    assert CONFIGS and DS_JSONS and SCRIPTS
    names = {p.name for p in SCRIPTS}
    assert {"torchrun_single_node.sh", "torchrun_multi_node.sh", "pretrain.sbatch"} <= names


def _is_finetune(path: Path) -> bool:
    """Fine-tuning configs (``finetune_*.yaml``, for eofm-finetune) have their own schema."""
    return path.name.startswith("finetune_")


def _load(path: Path, overrides: list[str]):
    if _is_finetune(path):  # the encoder and output folder come from --encoder/--out
        from eofm.finetune.finetune_config import load_config as load_finetune

        return load_finetune(path, ["encoder.path=EXPORT_DIR", "runtime.out_dir=OUT", *overrides])
    return load_config(path, overrides)


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_loads(path: Path) -> None:
    assert _load(path, []).data.path
    assert _load(path, ["schedule.steps=2"]).schedule.steps == 2


PRETRAIN_BUILDING = [p for p in CONFIGS if not _is_finetune(p) and load_config(p).data.build_from]


@pytest.mark.parametrize("path", PRETRAIN_BUILDING, ids=_ids(PRETRAIN_BUILDING))
def test_config_build_source_exists(path: Path) -> None:
    data = load_config(path).data  # build_from may come from a parent (e.g. configs/data/)
    assert data.build_from
    for src in [data.build_from, *data.build_more]:
        if src.startswith("../shared") and not (ROOT.parent / "shared").is_dir():
            pytest.skip("../shared is not available")
        assert (ROOT / src).exists(), f"{path.name}: raw input {src!r} (from the repo root)"


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_header_torchrun_commands_pick_a_rendezvous(path: Path) -> None:
    """A `torchrun --nproc_per_node` line in a recipe's header says --standalone (one node, a
    free port) or names a rendezvous; without either torchrun uses the fixed port 29500 and
    two runs on one machine collide."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and "torchrun " in line and "--nproc_per_node" in line:
            assert "--standalone" in line or "--rdzv" in line, f"{path.name}: {line}"


def test_enmap_recipe_drops_exactly_the_nodata_bands() -> None:
    cfg = load_config(LAUNCH / "configs" / "mae_enmap_cpu.yaml")
    bands = cfg.data.bands["hsi"]
    expected = [
        b for b in get_sensor("enmap_hsi").band_names if b not in ENMAP_HYSPECNET_NODATA_BANDS
    ]
    assert bands == expected and len(bands) == 202
    assert cfg.model.tokenizer == "spectral"
    assert cfg.model.overrides["tokenizer_kwargs"]["adapter"]["out_bands"] > 0


def _run_fixed_keys() -> set[str]:
    """Top-level keys DeepSpeedStrategy.ds_config sets itself (all but zero_optimization)."""
    cfg = load_config(
        None,
        ["data.path=/d", "runtime.strategy=deepspeed", "runtime.zero_stage=2", "data.batch_size=8"],
    )
    return set(DeepSpeedStrategy.ds_config(cfg, DistEnv())) - {"zero_optimization"}


@pytest.mark.parametrize("path", DS_JSONS, ids=_ids(DS_JSONS))
def test_deepspeed_json(path: Path) -> None:
    ds = json.loads(path.read_text())
    zero = ds["zero_optimization"]
    assert zero["stage"] in (1, 2, 3)
    if path.stem.startswith("zero"):
        assert zero["stage"] == int(path.stem.removeprefix("zero")), (
            "file name and stage disagree (runtime.zero_stage overrides the stage)"
        )
    fixed = _run_fixed_keys() | {"optimizer", "scheduler", "fp16", "amp"}
    assert not fixed & set(ds), f"keys the runtime sets (or that conflict): {fixed & set(ds)}"
    if zero["stage"] < 3:
        assert not [k for k in zero if k.startswith("stage3_")]


def test_deepspeed_json_merges_with_run_fixed_keys(tmp_path: Path) -> None:
    path = LAUNCH / "deepspeed" / "zero3.json"
    cfg = load_config(
        None,
        [
            "data.path=/d",
            "runtime.strategy=deepspeed",
            "runtime.zero_stage=3",
            f"runtime.deepspeed_config={path}",
            "data.batch_size=8",
            "optim.accum_steps=2",
        ],
    )
    merged = DeepSpeedStrategy.ds_config(cfg, DistEnv(world_size=2))
    assert merged["train_batch_size"] == 8 and merged["train_micro_batch_size_per_gpu"] == 2
    assert merged["zero_optimization"]["stage"] == 3
    assert merged["zero_optimization"]["overlap_comm"] is True


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@pytest.mark.parametrize("path", SCRIPTS, ids=_ids(SCRIPTS))
def test_script_syntax(path: Path) -> None:
    r = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ launcher behaviour
def _common(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [BASH, "-c", f". {LAUNCH / 'common.sh'}; {script}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_common_preflight_and_exit_status(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "x.yaml").write_text(f"data: {{path: {tmp_path / 'd'}}}\n"
                                     "runtime: {out_dir: runs/x}\n")
    r = _common(
        tmp_path,
        "eofm_preflight --config x.yaml; eofm_preflight --config x.yaml "
        'runtime.out_dir=/tmp/y; echo "[$(eofm_preflight --config nope.yaml)] $?"',
    )
    assert r.stdout.split() == ["runs/x", "/tmp/y", "[]", "2"], r.stderr
    assert "eofm-pretrain: error: 1 problem(s) in the configuration nope.yaml" in r.stderr
    (tmp_path / "o").mkdir()
    r = _common(
        tmp_path,
        "eofm_exit_status 0 o; eofm_exit_status 1 o; eofm_exit_status 75 ''; "
        f"touch o/{REQUEUE_MARKER}; eofm_exit_status 1 o; eofm_exit_status 0 ''",
    )
    assert r.stdout.split() == ["0", "1", "75", "75", "0"], r.stderr


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_ranks_per_node_are_the_gpus_or_one(tmp_path: Path) -> None:
    """NPROC when set; else the GPU count torch reports; else one rank (not torchrun's "auto",
    one rank per CPU core on a machine without GPUs)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"$GPUS\"\n")  # stands in for torch.cuda.device_count()
    fake.chmod(0o755)
    script = "eofm_nproc; NPROC=3 eofm_nproc"
    counts = {}
    for gpus in ("0", "4", ""):
        r = subprocess.run([BASH, "-c", f". {LAUNCH / 'common.sh'}; {script}"], cwd=tmp_path,
                           env={**os.environ, "PYTHON": str(fake), "GPUS": gpus, "NPROC": ""},
                           capture_output=True, text=True, timeout=240)
        counts[gpus] = r.stdout.split()
    assert counts == {"0": ["1", "3"], "4": ["4", "3"], "": ["1", "3"]}
    r = _common(tmp_path, "NPROC= eofm_nproc")  # the real torch on this machine
    assert r.stdout.split() == [str(max(1, __import__("torch").cuda.device_count()))], r.stderr


FAKE_TORCHRUN = """\
#!{python}
# Stand-in for torchrun: one "worker" child in its own session (as torchrun starts them); the
# worker writes the REQUEUE marker and exits 75 on SIGUSR1/SIGTERM (FAKE_RANK_STARTING: it has no
# handler yet, as a rank still starting); this exits 1 when it fails.
# Like torchrun it passes SIGTERM on to the worker's process group and leaves SIGUSR1 alone
# (the default: it dies of one); "torchrun.done" says that it lived to see the worker's end.
import os, signal, subprocess, sys
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("runtime.out_dir="))
worker = '''
import os, signal, sys, time
def stop(*_):
    open(os.path.join(sys.argv[1], "REQUEUE"), "w").close()
    os._exit(75)  # at once: an interpreter shutting down has no handlers (the launcher reads
    #               /proc SigCgt), and a TERM then would end it by signal, not with status 75
if not os.environ.get("FAKE_RANK_STARTING"):  # set: a rank still importing, no handler yet
    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGTERM, stop)
with open(os.path.join(sys.argv[1], "started.tmp"), "w") as f:
    f.write(f"{{os.getppid()}} {{os.getpid()}}")
os.rename(os.path.join(sys.argv[1], "started.tmp"), os.path.join(sys.argv[1], "started"))
time.sleep(60)
'''
p = subprocess.Popen([sys.executable, "-c", worker, out], start_new_session=True)
signal.signal(signal.SIGTERM, lambda sig, _: os.killpg(p.pid, sig))
status = p.wait()
open(os.path.join(out, "torchrun.done"), "w").write(str(status))
sys.exit(0 if status == 0 else 1)
"""


@pytest.mark.skipif(BASH is None or shutil.which("pgrep") is None, reason="needs bash, pgrep")
@pytest.mark.parametrize("sig,step", [(signal.SIGUSR1, True), (signal.SIGTERM, False)],
                         ids=["USR1-to-every-process", "TERM-to-the-launcher"])
def test_single_node_launcher_forwards_signal_and_exits_75(tmp_path: Path, sig: int,
                                                           step: bool) -> None:
    """The launcher passes a signal on to the ranks, which checkpoint and exit 75. ``step``:
    the signal reaches every process (srun and SLURM signal the whole step), torchrun too,
    which must outlive SIGUSR1 (it does not handle it) and report the ranks' end."""
    fake = tmp_path / "torchrun"
    fake.write_text(textwrap.dedent(FAKE_TORCHRUN).format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "run"
    out.mkdir()
    (out / REQUEUE_MARKER).write_text("stale\n")  # left by an earlier run: removed at launch
    (tmp_path / "d").mkdir()  # the launcher checks the config (data.path included) first
    (tmp_path / "x.yaml").write_text(f"data: {{path: {tmp_path / 'd'}}}\n")
    env = {**os.environ, "PYTHON": sys.executable, "TORCHRUN": str(fake), "NPROC": "1"}
    proc = subprocess.Popen(
        [
            BASH,
            str(LAUNCH / "torchrun_single_node.sh"),
            "--config",
            "x.yaml",
            f"runtime.out_dir={out}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # the real preflight imports torch: slow under load
        while not (out / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        assert not (out / REQUEUE_MARKER).exists()
        torchrun, rank = (int(x) for x in (out / "started").read_text().split())
        for pid in [torchrun, rank] if step else []:
            os.kill(pid, sig)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == REQUEUE_EXIT_CODE, proc.stdout.read()
        assert (out / REQUEUE_MARKER).exists()
        assert (out / "torchrun.done").read_text() == str(REQUEUE_EXIT_CODE)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(BASH is None or shutil.which("pgrep") is None, reason="needs bash, pgrep")
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_a_signal_before_the_ranks_take_it_stops_torchrun_and_requeues(tmp_path: Path,
                                                                      sig: int) -> None:
    """A rank still starting has no handler yet: SIGUSR1 forwarded to it was ignored (the run
    went on and SLURM killed it at the time limit, no requeue) and SIGTERM killed it (status 1,
    no requeue). Now the launcher stops torchrun and exits 75: nothing trained to lose."""
    fake = tmp_path / "torchrun"
    fake.write_text(textwrap.dedent(FAKE_TORCHRUN).format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "x.yaml").write_text(f"data: {{path: {tmp_path / 'd'}}}\n")
    env = {**os.environ, "PYTHON": sys.executable, "TORCHRUN": str(fake), "NPROC": "1",
           "FAKE_RANK_STARTING": "1"}
    proc = subprocess.Popen([BASH, str(LAUNCH / "torchrun_single_node.sh"), "--config",
                             "x.yaml", f"runtime.out_dir={out}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # the real preflight imports torch: slow under load
        while not (out / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == REQUEUE_EXIT_CODE, proc.stdout.read()
        text = proc.stdout.read()
        assert "before every rank could take it" in text and "requeue (exit 75)" in text, text
        assert (out / "torchrun.done").read_text() != "0"  # torchrun stopped the rank
        assert not (out / REQUEUE_MARKER).exists()  # no rank checkpointed
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_launchers_refuse_bad_settings_before_torchrun_starts(tmp_path: Path) -> None:
    """NPROC, NNODES, MASTER (unset or a name that does not resolve), PORT and a config
    eofm-pretrain refuses (also for the world size launched): one error and status 2, torchrun
    never started (they were torchrun's
    AssertionError/ValueError tracebacks, or every rank's error followed by torchrun's
    ChildFailedError and status 1; an unresolvable MASTER hung in c10d until its timeout)."""
    fake = tmp_path / "torchrun"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path / 'started'}\n")
    fake.chmod(0o755)
    (tmp_path / "d").mkdir()
    (tmp_path / "x.yaml").write_text(f"data: {{path: {tmp_path / 'd'}}}\n")
    base = {**os.environ, "PYTHON": sys.executable, "TORCHRUN": str(fake)}
    cases = [
        ("torchrun_single_node.sh", {"NPROC": "0"}, [], "NPROC: expected a whole number"),
        ("torchrun_single_node.sh", {"NPROC": "abc"}, [], "got 'abc'"),
        ("torchrun_single_node.sh", {"NPROC": "1"}, ["optim.base_lr=-1"],
         "optim.base_lr: expected > 0, got -1"),
        # checked for the ranks the launch starts: 3 cannot share the default global batch of 64
        ("torchrun_single_node.sh", {"NPROC": "3"}, [],
         "the global batch 64 is not divisible by world_size * optim.accum_steps = 3 * 1"),
        ("torchrun_multi_node.sh", {"NNODES": "abc", "MASTER": "h"}, [], "NNODES: expected"),
        ("torchrun_multi_node.sh", {"NNODES": "0", "MASTER": "h"}, [], "got '0'"),
        ("torchrun_multi_node.sh", {"NNODES": "2"}, [], "MASTER: expected the rendezvous host"),
        ("torchrun_multi_node.sh", {"NNODES": "2", "MASTER": "h", "PORT": "http"}, [],
         "PORT: expected a TCP port"),
        # a name that does not resolve (.invalid never does): refused at once, not after c10d's
        # rendezvous timeout; an IP literal is not looked up (test_two_nodes uses 127.0.0.1)
        ("torchrun_multi_node.sh", {"NNODES": "2", "MASTER": "no-such-host.invalid"}, [],
         "eofm launch: error: MASTER: expected a host name that resolves on this node"),
        ("torchrun_multi_node.sh", {"NNODES": "2", "MASTER": "no-such-host.invalid"}, [],
         "got 'no-such-host.invalid', which does not resolve ("),
    ]
    for script, env, extra, needle in cases:
        env = {**{k: v for k, v in base.items() if k not in ("NNODES", "MASTER", "PORT")}, **env}
        r = subprocess.run([BASH, str(LAUNCH / script), "--config", "x.yaml", *extra],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and needle in r.stderr, (script, env, r.stderr)
        assert r.stderr.count("error:") == 1, (script, env, r.stderr)
        assert "Traceback" not in r.stderr and not (tmp_path / "started").exists()
