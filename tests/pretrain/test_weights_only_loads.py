"""zero_checkpoint.weights_only_loads: the process-wide ``torch.load`` replacement always comes
out again (entries overlapping in any order, another replacement installed meanwhile), one
thread holds it at a time, and every refusal of a class or function is UnsafeCheckpointFile,
not damage."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from eofm.pretrain import zero_checkpoint as zc
from eofm.pretrain.zero_checkpoint import UnsafeCheckpointFile, weights_only_loads


@pytest.fixture(autouse=True)
def _keep_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "load", torch.load)  # put back after each test, whatever happens


def test_overlapping_entries_put_torch_load_back() -> None:
    real = torch.load
    a, b = weights_only_loads(), weights_only_loads()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)  # the first to enter leaves first: not nested
    assert torch.load is not real  # b is still in force: loads stay weights-only
    b.__exit__(None, None, None)
    assert torch.load is real


def test_a_replacement_installed_meanwhile_is_left_alone() -> None:
    def other(*args: object, **kwargs: object) -> None:
        return None

    with weights_only_loads():
        torch.load = other  # type: ignore[assignment]
    assert torch.load is other


def test_one_thread_at_a_time() -> None:
    held = []

    def try_lock() -> None:
        got = zc._LOADS_LOCK.acquire(blocking=False)
        held.append(got)
        if got:
            zc._LOADS_LOCK.release()

    with weights_only_loads():
        t = threading.Thread(target=try_lock)
        t.start()
        t.join()
    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    assert held == [False, True]


@pytest.mark.parametrize("why", [
    "Trying to call reduce for unrecognized function <built-in function system>",
    "Unsupported global: GLOBAL posix.system was not an allowed global by default.",
    "Can only build Tensor, Parameter, OrderedDict or types allowlisted via `add_safe_globals`, "
    "but got <class 'x.Y'>"])
def test_every_refusal_is_unsafe(monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    def refusing(f: object, *args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError(f"Weights only load failed. ...\n\n{why}")

    monkeypatch.setattr(torch, "load", refusing)
    with weights_only_loads(), pytest.raises(UnsafeCheckpointFile, match=r"x\.pt: refused"):
        torch.load("x.pt")


def test_damage_stays_torchs_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def damaged(f: object, *args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError("Weights only load failed.\n\nUnsupported operand 149")

    monkeypatch.setattr(torch, "load", damaged)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError, match="operand 149"):
        torch.load("x.pt")


def test_a_file_naming_a_function_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hostile.pt"
    torch.save({"hook": os.system}, path)
    with weights_only_loads(), pytest.raises(UnsafeCheckpointFile, match=r"GLOBAL posix\.system"):
        torch.load(path, weights_only=False)
    with pytest.raises(UnsafeCheckpointFile, match=r"GLOBAL posix\.system"):
        zc._read(path)  # the direct reader says the same
