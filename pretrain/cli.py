"""``eofm-pretrain`` / ``python -m eofm.pretrain``: the same command alone and under torchrun."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from eofm.data_shards.command import REFUSED, error, run_command, stdout_may_close

from .config import ConfigError, TrainConfig, load_config, validate_launch


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface: a YAML config plus ``key=value`` overrides."""
    p = argparse.ArgumentParser(
        prog="eofm-pretrain",
        description="Pretrain an EO encoder. Runs alone or under torchrun/srun unchanged.",
        epilog="Examples of overrides: schedule.steps=20 (a short smoke run), "
               "runtime.strategy=deepspeed runtime.zero_stage=2 (DeepSpeed ZeRO-2), "
               "runtime.out_dir=runs/try2 optim.base_lr=3e-4.")
    p.add_argument("--config", required=True, help="experiment YAML (e.g. launch/configs/quickstart.yaml)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (every key, with what it means) and "
                        "exit without training, once it passes every check a run makes before "
                        "it reads or builds any data (as the launch scripts' preflight: status "
                        "2 and the problems when it does not)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied after the YAML file")
    return p


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a run reports as a message and status 2, not a traceback: ``ValueError``,
    eofm's error for an input it cannot use (a config, ``ConfigError``; a manifest,
    ``ManifestError``; a dataset's statistics; a ``model.init_from`` export), and its dataset
    (``DatasetBuildError``: ``data.build_from`` failed to build; ``TooManySkipped``: more
    unreadable samples than the reader allows, 1%) and checkpoints
    (``UnreadableCheckpoints``: none loads; ``UnsafeCheckpointFile``: one would unpickle code).
    Every rank prints its own, as for a config error under torchrun."""
    from eofm.data_shards.reader import TooManySkipped

    from .checkpoint import UnreadableCheckpoints
    from .data import DatasetBuildError
    from .zero_checkpoint import UnsafeCheckpointFile

    return (ValueError, DatasetBuildError, TooManySkipped, UnreadableCheckpoints,
            UnsafeCheckpointFile)


#: The environment variable the launch scripts set for :func:`preflight`: the number of ranks
#: torchrun will start in all (nodes x processes per node); unset or empty when that is not known
#: before the rendezvous (an elastic ``--nnodes MIN:MAX`` range).
WORLD_SIZE_ENV = "EOFM_WORLD_SIZE"


def launch_world_size(environ: Mapping[str, str] = os.environ) -> int | None:
    """The world size the launcher announced in :data:`WORLD_SIZE_ENV`; None when unset or
    empty. Raises ConfigError naming the variable for anything but a whole number >= 1."""
    raw = environ.get(WORLD_SIZE_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdecimal() or int(raw) < 1:
        raise ConfigError([f"{WORLD_SIZE_ENV}: expected the number of ranks the launcher starts "
                           f"(a whole number >= 1, or empty when unknown), got {raw!r}"],
                          "launch environment")
    return int(raw)


def checked_config(config: str, overrides: Sequence[str]) -> TrainConfig:
    """The configuration checked as :func:`main` and the trainer check it before any work (the
    YAML, every key and value, ``data.path``, then
    :func:`~eofm.pretrain.config.validate_launch`: the global batch against the world size,
    the strategy, the model registry, DeepSpeed). The world size is :data:`WORLD_SIZE_ENV` when
    the launcher knows it, else 1, which checks only what holds for every world size (e.g. the
    batch against ``optim.accum_steps``). One ConfigError naming ``config`` lists every
    problem."""
    world_size = launch_world_size()
    cfg = load_config(config, overrides, check_paths=True)
    try:
        validate_launch(cfg, world_size=world_size or 1)
    except ConfigError as e:  # name the file, as load_config's errors do
        raise ConfigError(e.problems, f"configuration {config}") from None
    return cfg


def preflight(argv: Sequence[str]) -> int:
    """What the launch scripts run before torchrun starts any rank (``launch/common.sh``): the
    configuration checked (:func:`checked_config`), then the resume it would make at the
    launch's world size (:func:`.resume_preflight.resume_problems`: a checkpoint written by
    another number of ranks without ``runtime.resume_elastic``, a DeepSpeed one across the
    ZeRO-3 boundary, ``runtime.resume=false`` over checkpoints), and ``runtime.out_dir``
    printed. A refusal is one error and status 2 here, instead of every rank's error and
    torchrun's traceback."""
    from .resume_preflight import resume_problems

    a = build_parser().parse_intermixed_args(argv)
    try:
        cfg = checked_config(a.config, a.overrides)
        problems = resume_problems(cfg, launch_world_size())
        if problems:
            raise ConfigError(problems, f"resume from {cfg.runtime.out_dir} "
                                        f"(configuration {a.config})")
    except ConfigError as e:
        error("eofm-pretrain", e)
        return REFUSED
    print(cfg.runtime.out_dir)
    return 0


@stdout_may_close
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 2 refused: a config, dataset or checkpoint
    problem, the requeue status when preempted, 1 with a message when the disk or the quota
    is full). ``--print-config`` prints only a configuration that passes every check the run
    makes before it reads or builds data (:func:`checked_config`; the run itself makes them at
    its own world size when it starts)."""
    a = build_parser().parse_intermixed_args(argv)  # overrides before, between or after flags
    try:
        cfg = (checked_config(a.config, a.overrides) if a.print_config
               else load_config(a.config, a.overrides, check_paths=True))
    except ConfigError as e:
        error("eofm-pretrain", e)
        return REFUSED
    if a.print_config:
        from .config_doc import annotated_yaml

        print(annotated_yaml(cfg))
        return 0
    from .trainer import run

    # a full disk or quota: the path and the space left are in the message; the newest complete
    # checkpoint is intact and a rerun resumes from it once there is room (status 1, not the
    # requeue status: a requeued job would fail the same way)
    return run_command("eofm-pretrain", lambda: run(cfg), out=cfg.runtime.out_dir,
                       refused=user_errors())


if __name__ == "__main__":
    sys.exit(main())
