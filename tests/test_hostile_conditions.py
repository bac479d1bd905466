"""The commands under hostile conditions: a full disk during a checkpoint, manifest, shard or
export write (simulated: the write raises ``OSError(ENOSPC)``), Ctrl-C during training in the
same process, and an output folder that cannot be written.

What must hold: the temporary file goes, the previous file stays, the error names the path,
a later run resumes from the last good checkpoint; an interrupt propagates with nothing left
writing; an unwritable output is refused before any work, by name.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
from pathlib import Path

import pytest
import torch

from eofm.data_shards import writer as shard_writer
from eofm.data_shards.manifest import atomic_write_text
from eofm.data_shards.outputs import unwritable_reason
from eofm.models import create_model, from_pretrained, hub_write, save_pretrained
from eofm.pretrain import checkpoint as C
from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.config import load_config
from eofm.pretrain.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

BANDS = ["B02", "B03", "B04", "B08"]


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_full(obj: object, f, *args: object, **kwargs: object) -> None:
    """``torch.save`` on a disk that fills up part-way through the file."""
    f.write(b"PK\x03\x04" + b"\0" * 100)
    _disk_full()


def _steps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- a full disk


def test_full_disk_during_checkpoint_write(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = CheckpointManager(tmp_path, keep_last_k=3, rank=0)
    mgr.save({"step": 1, "w": torch.ones(3)}, 1)
    monkeypatch.setattr(C.torch, "save", _half_then_full)
    with pytest.raises(OSError) as info:
        mgr.save({"step": 2, "w": torch.ones(3)}, 2)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path / "step_000000002.pt") in str(info.value)
    assert "free on its filesystem" in str(info.value)
    assert _steps(tmp_path) == ["step_000000001.pt"]  # no .tmp left to fill the disk further
    assert mgr.load_latest()[1]["step"] == 1


def test_full_disk_in_a_run_then_the_next_run_resumes(tiny_run_config, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(str(tiny_run_config({"schedule": {"steps": 4, "warmup_steps": 1},
                                           "runtime": {"ckpt_every": 2}}, name="full")),
                      [f"runtime.out_dir={tmp_path}"])
    real = torch.save
    calls = []

    def full_at_second(obj: object, f, *a: object, **k: object) -> None:
        calls.append(1)
        (real if len(calls) == 1 else _half_then_full)(obj, f, *a, **k)

    monkeypatch.setattr(C.torch, "save", full_at_second)
    with pytest.raises(OSError, match=re.escape("step_000000004.pt")):
        Trainer(cfg).fit()
    monkeypatch.undo()
    ckpts = tmp_path / "checkpoints"
    assert _steps(ckpts) == ["step_000000002.pt"]
    with caplog.at_level("INFO", logger="eofm"):
        assert Trainer(cfg).fit() == 0
    assert "resumed from step 2" in caplog.text
    assert _steps(ckpts) == ["step_000000002.pt", "step_000000004.pt"]


def test_full_disk_during_manifest_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("old\n")
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError) as info:
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
    assert _steps(tmp_path) == ["manifest.json"] and path.read_text() == "old\n"


def test_full_disk_during_a_shard_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard being written is dropped (also when closing it fails again), the finished
    ones stay, and the error names the shard."""
    real, written = shard_writer._HashingFile.write, []

    def fills_up(self, b: bytes) -> int:
        if sum(written) > 25_000:  # in the third shard of about 10 kB each
            _disk_full()
        written.append(len(b))
        return real(self, b)

    monkeypatch.setattr(shard_writer._HashingFile, "write", fills_up)
    w = shard_writer.ShardWriter(tmp_path, max_samples=4)
    with pytest.raises(OSError) as info, w:
        for i in range(40):
            w.write({"__key__": f"k{i}", "bin": b"x" * 2000})
    monkeypatch.undo()
    failed = f"shard-{len(w.finished):06d}.tar"  # the one being written or closed
    assert info.value.errno == errno.ENOSPC and str(tmp_path / failed) in str(info.value)
    assert w.finished and _steps(tmp_path) == [s.name for s in w.finished]  # no .tmp left


def _encoder(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("vit_test_patch8", img_size=32, bands=BANDS)


def test_full_disk_during_an_export_keeps_the_previous_one(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    out = save_pretrained(_encoder(0), tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_written(state: object, path: str, metadata: object = None) -> None:
        Path(path).write_bytes(b"\0" * 10)
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(hub_write, "save_file", half_written)
    with pytest.raises(OSError, match=re.escape(f"cannot write the export {out}")):
        save_pretrained(_encoder(1), out)
    monkeypatch.undo()
    assert _steps(tmp_path) == ["model"]  # the temporary folder went
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    from_pretrained(str(out))


def test_a_failed_final_rename_puts_the_previous_export_back(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    out = save_pretrained(_encoder(0), tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Path.rename

    def refuse_into_place(self: Path, target: Path) -> Path:
        if Path(target) == out and self.name.endswith(".tmp"):  # the new export, not the old
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", refuse_into_place)
    with pytest.raises(OSError, match=re.escape(str(out))):
        save_pretrained(_encoder(1), out)
    monkeypatch.undo()
    assert _steps(tmp_path) == ["model"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---------------------------------------------------------------- Ctrl-C in the same process


def test_ctrl_c_twice_in_process(tiny_run_config, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C while a background checkpoint write is in flight: KeyboardInterrupt
    reaches the caller only once that write is done (nothing writes after fit raised), the
    caller's signal handlers and torch's deterministic switch are back, the metric files are
    closed, no temporary file is left and the checkpoint written is whole."""
    cfg = load_config(str(tiny_run_config({"schedule": {"steps": 6, "warmup_steps": 1},
                                           "runtime": {"ckpt_every": 2,
                                                       "async_checkpoint": True}},
                                          name="ctrlc")), [f"runtime.out_dir={tmp_path}"])
    trainer = Trainer(cfg)
    real_save, release = C._atomic_save, threading.Event()

    def slow_save(state: dict, final: Path) -> Path:
        release.wait(timeout=5)  # the write is still going when Ctrl-C comes
        return real_save(state, final)

    monkeypatch.setattr(C, "_atomic_save", slow_save)
    step = trainer.strategy.forward_backward

    def pressed(*args: object, **kwargs: object):
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C: stop at the step's end
            os.kill(os.getpid(), signal.SIGINT)  # a second one: at once
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.strategy, "forward_backward", pressed)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    writers = [t for t in threading.enumerate() if t.name.startswith("checkpoint-")]
    release.set()
    assert writers == []
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert not torch.are_deterministic_algorithms_enabled()
    assert trainer.metrics._file is None and trainer.keys._file is None
    ckpts = tmp_path / "checkpoints"
    assert _steps(ckpts) == ["step_000000002.pt"]
    assert CheckpointManager(ckpts, rank=0).load_latest()[1]["step"] == 2


# ---------------------------------------------------------------- unwritable output folders


def test_unwritable_reason(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert unwritable_reason(tmp_path / "new" / "deeper") is None
    assert unwritable_reason(tmp_path) is None
    assert unwritable_reason(afile) == f"{afile} is not a folder"
    assert str(afile) in unwritable_reason(afile / "run")
    (tmp_path / "before").mkdir()
    assert not (tmp_path / "new").exists()  # nothing created
    if os.geteuid() != 0:  # root writes into a read-only mode folder
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert "not writable" in unwritable_reason(ro / "run")
    assert unwritable_reason(tmp_path / "made" / "here", try_making=True) is None
    assert not (tmp_path / "made").exists()  # made to try, and removed again


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_a_folder_access_allows_but_mkdir_refuses_is_refused_up_front(tmp_path: Path) -> None:
    """runtime.out_dir=/proc/nope: os.access says root may write into /proc, so the run built
    its data and died at its first write with a traceback (exit 1, not an error and 2)."""
    why = unwritable_reason("/proc/eofm-nope/run", try_making=True)
    assert why is not None
    if os.access("/proc", os.W_OK | os.X_OK):  # root: only making the folder tells
        assert why.startswith("/proc/eofm-nope/run cannot be created ("), why
        assert unwritable_reason("/proc/eofm-nope/run") is None  # what os.access alone said


def test_a_folder_another_rank_makes_meanwhile_is_no_refusal_and_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank checks a fresh runtime.out_dir with try_making at once: another rank made
    it between this rank's look and its mkdir, so the mkdir met FileExistsError and the run
    was refused ("cannot be created (File exists)", exit 2, the other rank hung in a
    collective). A folder made meanwhile is checked (a writable folder: fine, a file: still
    refused), and the other rank's folders are not this call's to remove."""
    out = tmp_path / "run" / "out"
    mkdir = Path.mkdir

    def other_rank_first(made: Path, folder: bool = True):
        def racing(self: Path, *args: object, **kwargs: object) -> None:
            if not made.exists():  # the other rank wins the race, once: a folder or a file
                os.makedirs(made if folder else made.parent, exist_ok=True)
                if not folder:
                    made.write_text("")
            mkdir(self, *args, **kwargs)
        return racing

    monkeypatch.setattr(Path, "mkdir", other_rank_first(out))
    assert unwritable_reason(out, try_making=True) is None
    assert out.is_dir()  # the other rank's, left to it
    afile = tmp_path / "other" / "afile"
    monkeypatch.setattr(Path, "mkdir", other_rank_first(afile, folder=False))
    assert unwritable_reason(afile / "out", try_making=True) == \
        f"{afile} is a file, so {afile / 'out'} cannot be created under it"
    monkeypatch.setattr(Path, "mkdir", mkdir)

    gone = tmp_path / "gone"  # found made by the other rank, removed by it before the mkdir
    gone.mkdir()

    removals = [gone]

    def removed_first(self: Path, *args: object, **kwargs: object) -> None:
        if removals:  # the other rank's clean-up, once
            removals.pop().rmdir()
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", removed_first)
    assert unwritable_reason(gone / "out", try_making=True) is None  # looked at again
    assert not gone.exists()  # and made to try, and removed again


def _check_fresh_folders(barrier, root: str, rounds: int, results) -> None:
    """One rank of :func:`test_ranks_checking_the_same_fresh_folders_at_once_are_not_refused`."""
    got = []
    for i in range(rounds):
        barrier.wait()
        got.append(unwritable_reason(Path(root) / f"run{i}" / "out", try_making=True))
    results.put(got)


def test_ranks_checking_the_same_fresh_folders_at_once_are_not_refused(tmp_path: Path) -> None:
    """Two processes (two ranks) check the same fresh out_dir at the same moment, round after
    round: none is refused (before the fix, 2 to over 100 of the 2000 checks were)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the workers need nothing of torch
    barrier, results, rounds = ctx.Barrier(2), ctx.Queue(), 1000
    procs = [ctx.Process(target=_check_fresh_folders, args=(barrier, str(tmp_path), rounds,
                                                              results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    refusals = [why for rank in got for why in rank if why is not None]
    assert refusals == [], f"{len(refusals)} of {2 * rounds}: {refusals[:3]}"


def test_pretrain_refuses_an_unwritable_out_dir_before_building_data(
        tiny_run_config, sample_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    from eofm.pretrain.cli import main

    afile = tmp_path / "afile"
    afile.write_text("")
    data = tmp_path / "to_build"
    config = tiny_run_config({"data": {"path": str(data), "build_from":
                                       str(sample_data / "sentinel2_l1c_scene")}}, name="ro")
    assert main(["--config", str(config), f"runtime.out_dir={afile / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"runtime.out_dir: {afile} is a file" in err
    assert not data.exists()  # refused before the dataset build


def test_finetune_and_probe_refuse_an_unwritable_out_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from eofm.finetune.finetune import main as finetune_main
    from eofm.finetune.probe_cli import main as probe_main

    afile = tmp_path / "afile"
    afile.write_text("")
    missing = tmp_path / "no_such_encoder"  # never opened: the output is checked first
    assert finetune_main(["--encoder", str(missing), "--data", str(tmp_path / "no_data"),
                          "--task", "classification", "--out", str(afile / "ft")]) == 2
    assert f"runtime.out_dir: {afile} is a file" in capsys.readouterr().err
    assert probe_main(["--encoder", str(missing), "--data", str(tmp_path / "no_data"),
                       "--out", str(afile / "probe")]) == 2
    assert f"--out: {afile} is a file" in capsys.readouterr().err


# ---------------------------------------------------------------- eofm-finetune


@pytest.fixture(scope="module")
def bigearthnet(bigearthnet_export: tuple[Path, Path]) -> tuple[Path, Path]:
    """(the bundled BigEarthNet patches as shards, a matching test-size export)."""
    return bigearthnet_export


def test_finetune_reports_a_failed_background_checkpoint(bigearthnet: tuple[Path, Path],
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With runtime.async_checkpoint, fit() waits for the last write and raises its error
    (it used to return 0 and evaluate with the final checkpoint lost); deterministic mode is
    switched back off."""
    from eofm.finetune.finetune import Finetuner
    from eofm.finetune.finetune_config import load_config as finetune_config
    from eofm.pretrain import distributed as dist

    data, encoder = bigearthnet
    cfg = finetune_config(None, ["schedule.steps=2", "schedule.warmup_fraction=0",
                                 "data.batch_size=2", "runtime.ckpt_every=0",
                                 "runtime.async_checkpoint=true", "runtime.deterministic=true",
                                 "logging.progress=false"],
                          flags={"encoder.path": str(encoder), "data.path": str(data),
                                 "task.kind": "multilabel", "runtime.out_dir": str(tmp_path)})
    monkeypatch.setattr(C.torch, "save", _half_then_full)
    try:
        with pytest.raises(RuntimeError, match="checkpoint of step 2") as info:
            Finetuner(cfg).fit()
    finally:
        dist.teardown()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert not torch.are_deterministic_algorithms_enabled()
    assert not (tmp_path / "results.json").exists()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_shard_build_refuses_an_unwritable_out_before_reading_input(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """eofm-shard build (both stores) says which --out cannot be written, exit status 2, before
    it reads a single input (the source here does not even exist)."""
    from eofm.data_shards.cli import main as shard_main

    afile = tmp_path / "afile"
    afile.write_text("")
    for store in ("wds", "zarr"):
        assert shard_main(["build", str(tmp_path / "no_such_source"), "--out",
                           str(afile / "ds"), "--format", store]) == 2
        assert f"--out: {afile} is a file" in capsys.readouterr().err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_eofm_pretrain_reports_a_full_disk_or_quota_as_a_message(
        tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, code: int) -> None:
    """A cluster quota or a full disk at a checkpoint: one line naming the file and the space
    left, status 1 (not the requeue status: a requeued job would fail the same way)."""
    from eofm.pretrain.cli import main

    config = tiny_run_config({"schedule": {"steps": 2, "warmup_steps": 1},
                              "runtime": {"ckpt_every": 2}}, name="quota")

    def no_room(obj: object, f, *a: object, **k: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(C.torch, "save", no_room)
    assert main(["--config", str(config), f"runtime.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("eofm-pretrain: error: ") and "Traceback" not in err
    assert str(tmp_path / "checkpoints" / "step_000000002.pt") in err
    assert "free on its filesystem" in err


# ---------------------------------------------------------------- a full disk in the other commands


@pytest.mark.parametrize("store", ["wds", "zarr"])
def test_eofm_shard_build_reports_a_full_disk_as_a_message(
        sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, store: str) -> None:
    """One line naming the output and the space left, status 1 (not 2: the input was fine);
    the shard or store being written is removed (finished shards stay: a rerun resumes the
    writers that completed), and no manifest claims a dataset."""
    import zarr

    from eofm.data_shards.cli import main as shard_main

    if store == "wds":
        real = shard_writer._HashingFile.write
        written: list[int] = []

        def fills_up(self, b: bytes) -> int:
            if sum(written) > 40_000:
                _disk_full()
            written.append(len(b))
            return real(self, b)

        monkeypatch.setattr(shard_writer._HashingFile, "write", fills_up)
    else:
        monkeypatch.setattr(zarr.Array, "append", _disk_full)
    out = tmp_path / ("ds" if store == "wds" else "ds.zarr")
    rc = shard_main(["build", str(sample_data / "bigearthnet"), "--out", str(out), "--quiet",
                     "--format", store, "--shard-samples", "2", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("eofm-shard build: error: ") and "Traceback" not in err
    assert str(out) in err and "free on its filesystem" in err
    assert not list(tmp_path.rglob("*.tmp")) and not (out / "manifest.json").exists()
    if store == "zarr":
        assert _steps(tmp_path) == []  # no OUT.tmp store left to fill the disk further


def test_eofm_export_probe_and_finetune_report_a_full_disk_as_a_message(
        bigearthnet: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Status 1 and one line naming the output folder and the space left: the export (whose
    weights safetensors writes: its Rust error carries the errno as text), the probe's
    report, a fine-tuning checkpoint written in the background (the error arrives wrapped)."""
    from safetensors import SafetensorError

    from eofm.finetune import probe_cli
    from eofm.finetune.finetune import main as finetune_main
    from eofm.pretrain import distributed as dist

    data, encoder = bigearthnet
    run = tmp_path / "ft"
    args = ["--encoder", str(encoder), "--data", str(data), "--task", "multilabel", "--out",
            str(run), "schedule.steps=2", "schedule.warmup_fraction=0", "data.batch_size=2",
            "runtime.ckpt_every=0", "runtime.async_checkpoint=true", "logging.progress=false"]
    monkeypatch.setattr(C.torch, "save", _half_then_full)
    try:
        assert finetune_main(args) == 1
    finally:
        dist.teardown()
    err = capsys.readouterr().err
    assert err.startswith("eofm-finetune: error: ") and "Traceback" not in err
    assert str(run / "checkpoints" / "step_000000002.pt") in err
    assert "free on its filesystem" in err
    monkeypatch.undo()

    report = tmp_path / "probe"
    monkeypatch.setattr(probe_cli, "atomic_write_text", _disk_full)
    assert probe_cli.main(["--encoder", str(encoder), "--data", str(data), "--out", str(report),
                           "--quiet", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("eofm-probe: error: ") and "Traceback" not in err
    assert f"while writing under {report}" in err and "free on its filesystem" in err
    monkeypatch.undo()

    def full(*a: object, **k: object) -> None:
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                              'StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(hub_write, "save_file", full)
    assert hub_write._os_error_code("I/O error: No space left on device (os error 28)") == errno.ENOSPC
    assert hub_write._os_error_code("Error while serializing: header too large") == errno.EIO
    with pytest.raises(OSError) as info:
        save_pretrained(_encoder(0), tmp_path / "export")
    assert info.value.errno == errno.ENOSPC
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export.*"))


def test_only_rank_0_tries_making_out_dir_and_every_rank_gets_the_same_answer(
        tmp_path: Path, monkeypatch) -> None:
    """Every rank making and removing the same nested new out_dir at once raced (a rank
    refused with 'No such file or directory' while the others went on into a collective):
    rank 0 alone tries making it, the others check the nearest existing folder, and a
    refusal on any rank is every rank's (naming the rank)."""
    from eofm.pretrain import startup

    made: list[Path] = []
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        made.append(self)
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    out = tmp_path / "a" / "b" / "run"
    assert startup.out_dir_problem(out, rank=1) is None and made == []  # rank 1: no mkdir
    assert startup.out_dir_problem(out, rank=0) is None and made  # rank 0 tried it
    assert not (tmp_path / "a").exists()  # and removed what it made
    (tmp_path / "file").write_text("x")
    others = [None, "elsewhere is not writable"]
    monkeypatch.setattr(startup.dist, "all_gather_object", lambda mine: [mine, others[1]])
    assert startup.out_dir_problem(tmp_path / "ok", rank=0) == (
        "elsewhere is not writable (rank 1)")
    monkeypatch.setattr(startup.dist, "all_gather_object", lambda mine: [mine])
    assert "is a file" in startup.out_dir_problem(tmp_path / "file" / "run", rank=0)
