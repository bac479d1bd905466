"""What a DeepSpeed run takes from its config rather than from elsewhere.

A resumed ZeRO-1/2 run clips at its config's ``optim.grad_clip`` (a real engine in one forked
process). DeepSpeed's ZeRO-1/2 optimiser restores the clipping threshold it was saved with on
every load, so a run resumed with another ``optim.grad_clip`` (reported as a resume change, and
recorded) went on clipping at the old one, or stayed unclipped after resuming a run without.

A DeepSpeed JSON that switches on its own precision (``fp16``, ``bf16``, ``torch_autocast``) is
refused as the optimizer and scheduler sections are: the run sets the precision from
``runtime.precision`` and would override it without a word; the sections switched off stay
accepted."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from worker_run import as_torchrun_rank

from eofm.pretrain import distributed as dist
from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.config import ConfigError, deepspeed_json_problems, load_config

# (ZeRO stage, optim.grad_clip of the run that saved, optim.grad_clip of the resumed run)
CASES = [(1, 1.0, 1e9), (2, 1.0, 1e9), (2, None, 1.0), (2, 1.0, 1.0)]


class _Steep(nn.Module):
    """A loss whose gradient norm (thousands) is far above a clip of 1."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.lin(x) * 100).pow(2).mean()


class _Warnings(logging.Handler):
    """The messages of the warnings logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's message."""
        self.seen.append(record.getMessage())


def _strategy(stage: int, clip: float | None) -> Any:
    """A one-rank DeepSpeed ZeRO-``stage`` strategy around :class:`_Steep`, clipping at
    ``clip`` (None: no clipping)."""
    from eofm.pretrain.strategy import wrap_model

    cfg = load_config(None, ["data.path=unused", "runtime.strategy=deepspeed",
                             f"runtime.zero_stage={stage}", "data.batch_size=2",
                             "optim.scale_lr=false", "runtime.precision=fp32",
                             f"optim.grad_clip={'null' if clip is None else clip}"])
    torch.manual_seed(0)
    return wrap_model(_Steep(), cfg, dist.init_distributed(), torch.device("cpu"), lr=1e-3)


def _received_norm(strategy: Any, x: torch.Tensor) -> tuple[float, float]:
    """One step; (the gradient norm DeepSpeed reports, before clipping; the norm of the
    gradient the wrapped torch optimiser stepped with, after clipping: ZeRO steps it once per
    parameter group, each time with that group's gradient alone)."""
    seen: list[float] = []

    def record(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        seen.extend(float(p.grad.square().sum()) for g in opt.param_groups for p in g["params"]
                    if p.grad is not None)

    hook = strategy.engine.optimizer.optimizer.register_step_pre_hook(record)
    strategy.set_lr(1e-3)
    strategy.forward_backward(lambda model: model(x), last=True)
    norm, stepped = strategy.finish_step()
    hook.remove()
    assert stepped and seen, (stepped, seen)
    return float(norm), sum(seen) ** 0.5


def _worker(rank: int, port: int, root: str) -> None:
    """For each of :data:`CASES`: train a step and save, resume in a new strategy with the
    other clip, train a step; what each resumed step clipped at to ``root``/result.json."""
    as_torchrun_rank(rank, 1, port)
    warnings = _Warnings()
    logging.getLogger("eofm.pretrain.strategy").addHandler(warnings)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    results = []
    for i, (stage, saved, resumed) in enumerate(CASES):
        manager = CheckpointManager(Path(root) / f"case{i}" / "checkpoints")
        first = _strategy(stage, saved)
        _received_norm(first, x)
        first.save(manager, 1, {"step": 1})
        again = _strategy(stage, resumed)
        warnings.seen.clear()
        assert again.load(CheckpointManager(manager.directory))["step"] == 1
        norm, received = _received_norm(again, x)
        results.append({"clip_in_use": float(again.engine.optimizer.clip_grad), "norm": norm,
                        "received": received, "warnings": list(warnings.seen)})
    Path(root, "result.json").write_text(json.dumps(results))
    dist.teardown()


def test_a_resumed_zero_run_clips_at_its_configured_grad_clip(tmp_path: Path,
                                                                spawn_ranks) -> None:
    """Resumed with another optim.grad_clip, ZeRO-1/2 clip at the new one (the gradient Adam
    steps with has the new clip's norm, or the whole norm when the new clip is above it) and
    say so once; resumed with the same clip, nothing is said."""
    pytest.importorskip("deepspeed")
    spawn_ranks(1, _worker, str(tmp_path))
    results = json.loads((tmp_path / "result.json").read_text())
    for (stage, saved, resumed), got in zip(CASES, results, strict=True):
        case = f"ZeRO-{stage}, saved with optim.grad_clip={saved}, resumed with {resumed}"
        assert got["clip_in_use"] == resumed, case
        assert got["norm"] > 1000, case  # far above a clip of 1: clipping shows
        want = min(got["norm"], resumed)
        assert got["received"] == pytest.approx(want, rel=1e-3), case
        change = f"optim.grad_clip {'none' if saved is None else f'{saved:g}'} -> {resumed:g}"
        noted = [w for w in got["warnings"] if "gradient clipping" in w]
        assert noted == ([] if saved == resumed else [
            f"the optimiser's gradient clipping differs from the checkpoint's ({change}): from "
            f"the resumed step on it uses this config's (optim.grad_clip)"]), case


def _ds_config(tmp_path: Path, sections: dict[str, Any]) -> Any:
    """A ZeRO-2 run config whose DeepSpeed JSON holds ``sections`` beside its ZeRO stage."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, **sections}))
    return load_config(None, ["data.path=unused", "runtime.strategy=deepspeed",
                              "runtime.zero_stage=2", f"runtime.deepspeed_config={ds}",
                              "data.batch_size=8"])


@pytest.mark.parametrize("key", ["fp16", "bf16", "bfloat16", "torch_autocast"])
def test_a_deepspeed_json_that_switches_on_its_own_precision_is_refused(
        tmp_path: Path, key: str) -> None:
    """An enabled precision section is refused by the launch check and by the strategy's
    ds_config (which would set it from runtime.precision instead); switched off (enabled
    false, or no enabled: DeepSpeed's default) it is accepted, as the run sets the same."""
    from eofm.pretrain.distributed import DistEnv
    from eofm.pretrain.strategy import DeepSpeedStrategy

    cfg = _ds_config(tmp_path, {key: {"enabled": True}})
    want = [f"runtime.deepspeed_config: {cfg.runtime.deepspeed_config} has [{key!r}] "
            "section(s); eofm passes its own AdamW (optim.*), sets the lr each step "
            "(schedule.*) and the precision (runtime.precision): remove them"]
    assert deepspeed_json_problems(cfg, 1) == want
    with pytest.raises(ConfigError) as info:
        DeepSpeedStrategy.ds_config(cfg, DistEnv())
    assert info.value.problems == want
    for off in ({"enabled": False}, {}):
        cfg = _ds_config(tmp_path, {key: off})
        assert deepspeed_json_problems(cfg, 1) == [], off
        assert DeepSpeedStrategy.ds_config(cfg, DistEnv())["bf16"] == {"enabled": False}


def test_every_enabled_precision_section_is_named_at_once(tmp_path: Path) -> None:
    """fp16 and bf16 both on: one problem naming both (beside an optimizer section)."""
    cfg = _ds_config(tmp_path, {"fp16": {"enabled": True}, "bf16": {"enabled": True},
                                "optimizer": {"type": "Adam"}})
    problems = deepspeed_json_problems(cfg, 1)
    assert len(problems) == 1 and "has ['optimizer', 'fp16', 'bf16'] section(s)" in problems[0]
