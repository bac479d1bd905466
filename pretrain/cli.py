"""``eofm-pretrain`` / ``python -m eofm.pretrain``: the same command alone and under torchrun."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eofm.data_shards.command import REFUSED, error, run_command, stdout_may_close

from .config import ConfigError, load_config


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
                   help="print the resolved, checked configuration (every key, with what it "
                        "means) and exit without training")
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


def preflight(argv: Sequence[str]) -> int:
    """What the launch scripts run once per node before torchrun starts any rank
    (``launch/common.sh``): the configuration checked as :func:`main` checks it before any work
    (the YAML, every key and value, ``data.path``), ``runtime.out_dir`` printed; a refusal is
    one error and status 2 here, instead of every rank's error and torchrun's traceback."""
    a = build_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(a.config, a.overrides, check_paths=True)
    except ConfigError as e:
        error("eofm-pretrain", e)
        return REFUSED
    print(cfg.runtime.out_dir)
    return 0


@stdout_may_close
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 2 refused: a config, dataset or checkpoint
    problem, the requeue status when preempted, 1 with a message when the disk or the quota
    is full)."""
    a = build_parser().parse_intermixed_args(argv)  # overrides before, between or after flags
    try:
        cfg = load_config(a.config, a.overrides, check_paths=True)
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
